"""LocalCausalLM on a tiny random GPT-2 saved to disk and loaded as a user would."""

from __future__ import annotations

from pathlib import Path

import pytest

from serendip.errors import ConfigError
from serendip.llm import (
    CachedGenerator,
    GenerationError,
    GeneratorConfig,
    LocalCausalLM,
    MemoryCache,
    make_generator,
)
from tests.llm.conftest import WORDS

MESSAGES = [{"role": "system", "content": "recommend something quiet"},
            {"role": "user", "content": "a film about the sea"}]


def _config(path: Path, **options: object) -> GeneratorConfig:
    return GeneratorConfig(kind="local", model_dir=str(path), **options)  # type: ignore[arg-type]


def test_greedy_generation_writes_vocabulary_words_and_counts_tokens(tiny_lm_dir: Path) -> None:
    gen = LocalCausalLM(_config(tiny_lm_dir), device="cpu")
    assert gen.model == tiny_lm_dir.name
    assert gen.prompt_text(MESSAGES) == ("system: recommend something quiet\n"
                                         "user: a film about the sea\nassistant:")
    out = gen.generate(MESSAGES, max_tokens=4)
    # 4 + 6 + 1 words of the plain-text prompt; at most 4 new tokens, all known words
    assert out.prompt_tokens == 11 and 1 <= out.completion_tokens <= 4
    assert out.text and set(out.text.split()) <= set(WORDS) and not out.cached
    again = gen.generate(MESSAGES, max_tokens=4)
    assert again.text == out.text  # greedy: the same text every time
    assert gen.usage.requests == 2 and gen.usage.prompt_tokens == 22


def test_the_chat_template_formats_the_prompt(tiny_chat_lm_dir: Path) -> None:
    gen = LocalCausalLM(_config(tiny_chat_lm_dir, model="tiny-chat"), device="cpu")
    assert gen.model == "tiny-chat"
    assert gen.prompt_text(MESSAGES) == ("system: recommend something quiet\n"
                                         "user: a film about the sea\nassistant:")
    assert gen.generate(MESSAGES, max_tokens=3, temperature=0.7).completion_tokens <= 3


def test_a_prompt_beyond_the_context_is_a_generation_error(tiny_lm_dir: Path) -> None:
    gen = LocalCausalLM(_config(tiny_lm_dir), device="cpu")
    assert gen.context_length == 128  # the tiny model's n_positions
    # 11 prompt tokens + 117 = 128 fits; one more does not
    assert gen.generate(MESSAGES, max_tokens=117).prompt_tokens == 11
    with pytest.raises(GenerationError, match=r"the prompt \(11 tokens\) and max_tokens "
                                              r"\(118\) exceed its context of 128 tokens"):
        gen.generate(MESSAGES, max_tokens=118)
    assert gen.usage.requests == 1  # nothing was run for the refused request


def test_a_random_model_cannot_write_schema_json(tiny_lm_dir: Path) -> None:
    gen = LocalCausalLM(_config(tiny_lm_dir), device="cpu")
    schema = {"type": "object", "required": ["title"]}
    with pytest.raises(GenerationError, match="gave no usable reply in 1 attempt: reply is not "
                                              "valid JSON"):
        gen.generate(MESSAGES, max_tokens=4, json_schema=schema)


def test_the_second_identical_request_is_a_cache_hit(tiny_lm_dir: Path) -> None:
    cache = MemoryCache()
    gen = make_generator(_config(tiny_lm_dir), cache=cache)
    assert isinstance(gen, CachedGenerator) and isinstance(gen.generator, LocalCausalLM)
    first = gen.generate(MESSAGES, max_tokens=3)
    second = gen.generate(MESSAGES, max_tokens=3)
    assert not first.cached and second.cached and second.text == first.text
    assert gen.generator.usage.requests == 1 and (gen.hits, gen.misses) == (1, 1)


def test_a_bad_model_dir_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs model_dir"):
        LocalCausalLM(GeneratorConfig(kind="local"))
    with pytest.raises(ConfigError, match="is not a directory"):
        LocalCausalLM(_config(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="does not hold a causal language model"):
        LocalCausalLM(_config(tmp_path))
