"""OpenAICompatible against a scripted chat server on loopback."""

from __future__ import annotations

import threading

import pytest

from serendip.errors import ConfigError, SerendipError
from serendip.llm import (
    CachedGenerator,
    GenerationError,
    GeneratorConfig,
    MemoryCache,
    OpenAICompatible,
    make_generator,
)
from tests.llm.conftest import ChatServer

MESSAGES = [{"role": "system", "content": "You write film blurbs."},
            {"role": "user", "content": "A quiet film about the sea."}]
SCHEMA = {"type": "object", "properties": {"title": {"type": "string"},
                                           "year": {"type": "integer"}},
          "required": ["title", "year"], "additionalProperties": False}


def _gen(server: ChatServer, **options: object) -> tuple[OpenAICompatible, list[float]]:
    """A generator for ``server`` whose back-off waits are recorded instead of slept."""
    waits: list[float] = []
    config = GeneratorConfig(kind="openai", model="test-model", base_url=server.url,
                             **options)  # type: ignore[arg-type]
    return OpenAICompatible(config, sleep=waits.append), waits


def test_a_normal_reply_is_returned_with_its_token_counts_and_cost(
        chat_server: ChatServer) -> None:
    gen, waits = _gen(chat_server, cost_per_1k_prompt_tokens=2.0,
                      cost_per_1k_completion_tokens=10.0)
    out = gen.generate(MESSAGES, max_tokens=50, temperature=0.3)
    assert out.text == "a fine reply" and out.model == "test-model" and not out.cached
    assert (out.prompt_tokens, out.completion_tokens) == (11, 7) and out.seconds >= 0
    body = chat_server.seen[0].body
    assert chat_server.seen[0].path == "/v1/chat/completions"
    assert body["model"] == "test-model" and body["messages"] == MESSAGES
    assert body["max_tokens"] == 50 and body["temperature"] == 0.3
    assert "response_format" not in body
    gen.generate(MESSAGES, max_tokens=50)
    # 2 requests x (11 prompt tokens at 2.0 + 7 completion tokens at 10.0 per 1000)
    assert gen.usage.as_dict() == {"requests": 2, "prompt_tokens": 22, "completion_tokens": 14,
                                   "cost": pytest.approx(2 * (11 * 2.0 + 7 * 10.0) / 1000)}
    assert gen.retries == 0 and waits == []


def test_the_key_comes_from_the_named_variable_as_a_bearer_token(
        chat_server: ChatServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERENDIP_TEST_LLM_KEY", "sk-test-123")
    gen, _ = _gen(chat_server, api_key_env="SERENDIP_TEST_LLM_KEY")
    gen.generate(MESSAGES, max_tokens=5)
    assert chat_server.seen[0].headers["authorization"] == "Bearer sk-test-123"
    assert "sk-test-123" not in repr(gen)
    monkeypatch.delenv("SERENDIP_TEST_LLM_KEY")
    with pytest.raises(ConfigError, match="'SERENDIP_TEST_LLM_KEY'.*not set"):
        _gen(chat_server, api_key_env="SERENDIP_TEST_LLM_KEY")


def test_429_waits_as_long_as_retry_after_says_then_succeeds(chat_server: ChatServer) -> None:
    chat_server.script.extend([("429", 3), ("429", None)])
    gen, waits = _gen(chat_server, backoff_base=0.25, max_retries=3)
    assert gen.generate(MESSAGES, max_tokens=5).text == "a fine reply"
    assert len(chat_server.seen) == 3 and gen.retries == 2
    # the first wait is the server's Retry-After, the second our own back-off (0.25 * 2**1)
    assert waits == [3.0, 0.5]
    assert gen.usage.requests == 1  # refused requests cost nothing


def test_5xx_backs_off_exponentially_up_to_max_retries(chat_server: ChatServer) -> None:
    chat_server.script.extend([("500",)] * 10)
    gen, waits = _gen(chat_server, backoff_base=0.5, backoff_max=3.0, max_retries=4)
    with pytest.raises(GenerationError, match="HTTP 500 after 5 attempts") as info:
        gen.generate(MESSAGES, max_tokens=5)
    assert isinstance(info.value, SerendipError) and "test-model" in str(info.value)
    assert len(chat_server.seen) == 5 and waits == [0.5, 1.0, 2.0, 3.0]


def test_a_client_error_is_not_retried(chat_server: ChatServer) -> None:
    chat_server.script.append(("401",))
    gen, waits = _gen(chat_server)
    with pytest.raises(GenerationError, match="refused the request .* HTTP 401"):
        gen.generate(MESSAGES, max_tokens=5)
    assert len(chat_server.seen) == 1 and waits == []


def test_a_timeout_is_retried(chat_server: ChatServer) -> None:
    chat_server.script.append(("sleep", 1.5))
    gen, waits = _gen(chat_server, timeout=0.3, backoff_base=0.1)
    assert gen.generate(MESSAGES, max_tokens=5).text == "a fine reply"
    assert len(chat_server.seen) == 2 and waits == [0.1] and gen.retries == 1


def test_timeouts_until_the_retries_run_out_name_the_timeout(chat_server: ChatServer) -> None:
    chat_server.script.extend([("sleep", 1.0)] * 2)
    gen, _ = _gen(chat_server, timeout=0.2, max_retries=1)
    with pytest.raises(GenerationError, match="a timeout after 2 attempts"):
        gen.generate(MESSAGES, max_tokens=5)


def test_json_schema_is_requested_and_a_malformed_reply_asked_again(
        chat_server: ChatServer) -> None:
    chat_server.script.extend([("text", '{"title": "Sea", "year": '),
                               ("text", '{"title": "Sea", "year": 1999}')])
    gen, _ = _gen(chat_server)
    out = gen.generate(MESSAGES, max_tokens=40, json_schema=SCHEMA)
    assert out.text == '{"title": "Sea", "year": 1999}'
    fmt = chat_server.seen[0].body["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["schema"] == SCHEMA
    assert len(chat_server.seen) == 2 and gen.retries == 1
    assert gen.usage.requests == 2 and gen.usage.prompt_tokens == 22  # both were billed


def test_json_that_breaks_the_schema_twice_is_a_clear_error(chat_server: ChatServer) -> None:
    chat_server.script.extend([("text", '{"title": "Sea"}'),
                               ("text", '{"title": "Sea", "year": "soon"}')])
    gen, _ = _gen(chat_server)
    with pytest.raises(GenerationError,
                       match=r"no usable reply in 2 attempts.*\$\.year should be integer"):
        gen.generate(MESSAGES, max_tokens=40, json_schema=SCHEMA)
    assert len(chat_server.seen) == 2


def test_a_truncated_reply_is_asked_again_once_then_refused(chat_server: ChatServer) -> None:
    chat_server.script.extend([("length",), ("length",), ("length",)])
    gen, _ = _gen(chat_server)
    with pytest.raises(GenerationError, match="truncated at max_tokens"):
        gen.generate(MESSAGES, max_tokens=3)
    assert len(chat_server.seen) == 2
    chat_server.script.clear()
    chat_server.script.extend([("length",)])
    assert gen.generate(MESSAGES, max_tokens=3).text == "a fine reply"


def test_an_empty_reply_is_refused(chat_server: ChatServer) -> None:
    chat_server.script.extend([("text", "  "), ("text", "")])
    gen, _ = _gen(chat_server)
    with pytest.raises(GenerationError, match="text is empty"):
        gen.generate(MESSAGES, max_tokens=3)


def test_the_rate_limit_spaces_requests(chat_server: ChatServer) -> None:
    gen, _ = _gen(chat_server, requests_per_second=10.0)
    for _ in range(5):
        gen.generate(MESSAGES, max_tokens=3)
    at = [s.at for s in chat_server.seen]
    # a bucket of one token refilled at 10/s: any three requests span at least 0.2 s (less
    # a margin for network jitter); without the limit five loopback requests take a few ms
    assert len(at) == 5
    assert all(at[i + 2] - at[i] >= 0.15 for i in range(3))


def test_the_concurrency_cap_bounds_requests_in_flight(chat_server: ChatServer) -> None:
    chat_server.script.extend([("hold", 0.3)] * 6)
    gen, _ = _gen(chat_server, max_concurrency=2)
    errors: list[BaseException] = []

    def call() -> None:
        try:
            gen.generate(MESSAGES, max_tokens=3)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not errors and len(chat_server.seen) == 6
    assert chat_server.max_in_flight == 2


def test_cached_generator_does_not_call_the_server_twice(chat_server: ChatServer) -> None:
    cache = MemoryCache()
    gen = make_generator(GeneratorConfig(kind="openai", model="m", base_url=chat_server.url),
                         cache=cache)
    assert isinstance(gen, CachedGenerator)
    first = gen.generate(MESSAGES, max_tokens=9)
    second = gen.generate(MESSAGES, max_tokens=9)
    assert not first.cached and second.cached and second.text == first.text
    assert (second.prompt_tokens, second.completion_tokens) == (11, 7)
    assert len(chat_server.seen) == 1 and (gen.hits, gen.misses) == (1, 1)
    gen.generate(MESSAGES, max_tokens=10)  # another parameter is another request
    assert len(chat_server.seen) == 2 and len(cache) == 2


def test_config_errors_name_the_missing_value() -> None:
    with pytest.raises(ConfigError, match="base_url"):
        OpenAICompatible(GeneratorConfig(kind="openai", model="m"))
    with pytest.raises(ConfigError, match="model name"):
        OpenAICompatible(GeneratorConfig(kind="openai", base_url="http://127.0.0.1:9/v1"))
