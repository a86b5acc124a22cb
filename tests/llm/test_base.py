"""Request checks, cache keys, JSON validation and the generator configuration."""

from __future__ import annotations

import hashlib

import pydantic
import pytest

from serendip.errors import DataError
from serendip.llm import (
    CachedGenerator,
    Generation,
    GenerationError,
    Generator,
    GeneratorConfig,
    MemoryCache,
    prompt_hash,
    validate_json,
)

MESSAGES = [{"role": "user", "content": "hi"}]


class Counting:
    """A generator that numbers its replies, to see when the back end ran."""

    model = "counting"

    def __init__(self) -> None:
        self.calls = 0

    def generate(self, messages: list[dict[str, str]], *, max_tokens: int,
                 temperature: float = 0.0, json_schema: dict | None = None) -> Generation:
        self.calls += 1
        return Generation(f"reply {self.calls}", self.model, 3, 2)


def test_prompt_hash_is_sha256_of_canonical_json() -> None:
    canonical = ('{"json_schema":null,"max_tokens":5,"messages":[{"content":"hi","role":"user"}],'
                 '"temperature":0.0}')
    assert prompt_hash(MESSAGES, 5, 0, None) == hashlib.sha256(canonical.encode()).hexdigest()
    # key order does not matter; every parameter does
    assert prompt_hash([{"content": "hi", "role": "user"}], 5, 0.0, None) == \
        prompt_hash(MESSAGES, 5, 0, None)
    assert len({prompt_hash(MESSAGES, 5, 0, None), prompt_hash(MESSAGES, 6, 0, None),
                prompt_hash(MESSAGES, 5, 0.5, None), prompt_hash(MESSAGES, 5, 0, {"type": "object"}),
                prompt_hash([{"role": "user", "content": "hi!"}], 5, 0, None)}) == 5


@pytest.mark.parametrize(("messages", "options", "fragment"), [
    ([], {}, "messages must be a non-empty list"),
    ([{"role": "robot", "content": "x"}], {}, "message #0 role must be one of"),
    ([{"role": "user"}], {}, "exactly 'role' and 'content'"),
    ([{"role": "user", "content": 3}], {}, "content must be a string, got 3"),
    (MESSAGES, {"max_tokens": 0}, "max_tokens must be a positive integer, got 0"),
    (MESSAGES, {"temperature": 3.0}, r"temperature must be a number in \[0, 2\], got 3.0"),
    (MESSAGES, {"json_schema": "object"}, "json_schema must be a dict"),
])
def test_bad_requests_are_refused_naming_the_value(messages: list, options: dict,
                                                   fragment: str) -> None:
    gen = CachedGenerator(Counting())
    kwargs = {"max_tokens": 5, **options}
    with pytest.raises(DataError, match=fragment):
        gen.generate(messages, **kwargs)
    assert gen.generator.calls == 0  # type: ignore[attr-defined]


def test_validate_json_checks_the_common_keywords() -> None:
    schema = {"type": "object", "required": ["tags"], "additionalProperties": False,
              "properties": {"tags": {"type": "array", "items": {"type": "string"},
                                      "minItems": 1},
                             "score": {"type": "number", "minimum": 0, "maximum": 1},
                             "kind": {"enum": ["film", "book"]}}}
    assert validate_json('{"tags": ["a"], "score": 0.5, "kind": "film"}', schema) == {
        "tags": ["a"], "score": 0.5, "kind": "film"}
    for text, fragment in [
        ('{"tags": ["a"', "not valid JSON"),
        ('{"score": 0.5}', "lacks the required key 'tags'"),
        ('{"tags": []}', r"\$.tags should have at least 1 items"),
        ('{"tags": [1]}', r"\$.tags\[0\] should be string, got 1"),
        ('{"tags": ["a"], "score": 2}', r"\$.score should be <= 1, got 2"),
        ('{"tags": ["a"], "kind": "song"}', r"\$.kind should be one of"),
        ('{"tags": ["a"], "extra": 1}', "unexpected key 'extra'"),
        ('[1]', r"\$ should be object"),
    ]:
        with pytest.raises(GenerationError, match=fragment):
            validate_json(text, schema)
    with pytest.raises(GenerationError, match="should be integer, got True"):
        validate_json("true", {"type": "integer"})


def test_memory_cache_keeps_the_first_text_and_the_wrapper_reads_it() -> None:
    backend = Counting()
    gen = CachedGenerator(backend)
    assert isinstance(gen, Generator) and isinstance(backend, Generator)
    first = gen.generate(MESSAGES, max_tokens=5)
    second = gen.generate(MESSAGES, max_tokens=5)
    assert (first.text, first.cached) == ("reply 1", False)
    assert (second.text, second.cached, second.model) == ("reply 1", True, "counting")
    assert (second.prompt_tokens, second.completion_tokens) == (3, 2)
    assert gen.generate(MESSAGES, max_tokens=5, temperature=1.0).text == "reply 2"
    assert backend.calls == 2
    cache = MemoryCache()
    cache.put_generation("m", "h", "one", 1, 1)
    cache.put_generation("m", "h", "two", 2, 2)
    row = cache.get_generation("m", "h")
    assert row is not None and row["text"] == "one" and cache.get_generation("m", "x") is None


def test_config_forbids_unknown_fields_and_bad_values() -> None:
    with pytest.raises(pydantic.ValidationError, match="api_key"):
        GeneratorConfig(kind="openai", api_key="sk-secret")  # type: ignore[call-arg]
    with pytest.raises(pydantic.ValidationError, match="kind"):
        GeneratorConfig(kind="remote")  # type: ignore[arg-type]
    with pytest.raises(pydantic.ValidationError, match="max_concurrency"):
        GeneratorConfig(kind="openai", max_concurrency=0)
    cfg = GeneratorConfig(kind="openai", model="m", base_url="http://127.0.0.1:8000/v1",
                          api_key_env="LLM_KEY")
    assert GeneratorConfig.model_validate(cfg.model_dump()) == cfg


def test_keywords_beyond_the_common_ones_are_checked_by_jsonschema() -> None:
    pytest.importorskip("jsonschema")
    schema = {"type": "object", "properties": {"code": {"type": "string",
                                                         "pattern": "^[A-Z]{3}$"}}}
    assert validate_json('{"code": "ABC"}', schema) == {"code": "ABC"}
    with pytest.raises(GenerationError, match="does not match"):
        validate_json('{"code": "abcd"}', schema)
    # the common keywords keep their own message, naming the path
    with pytest.raises(GenerationError, match=r"\$\.code should be string"):
        validate_json('{"code": 3}', schema)
