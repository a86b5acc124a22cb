"""A generator that talks to any server speaking the OpenAI chat-completions protocol.

vLLM (``vllm serve``), the llama.cpp server, Ollama and hosted APIs all do.  Retries are made
here, not by the client library, so that they are counted, bounded and honour ``Retry-After``:
429, 5xx, timeouts and dropped connections are retried with exponential back-off; a reply that
is truncated (``finish_reason == "length"``), empty or not valid JSON for the requested schema
is asked again once.  A token bucket bounds the request rate and a semaphore the number of
requests in flight.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

import openai

from serendip.errors import ConfigError
from serendip.llm.base import (
    Generation,
    GenerationError,
    GeneratorConfig,
    Usage,
    check_request,
    validate_json,
)

__all__ = ["OpenAICompatible", "TokenBucket"]

#: The longest a ``Retry-After`` header is obeyed (seconds); longer waits are cut to this.
MAX_RETRY_AFTER = 120.0


class TokenBucket:
    """At most ``rate`` acquisitions per second on average, bursts of at most ``burst``."""

    def __init__(self, rate: float, burst: float = 1.0,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if not rate > 0:
            raise ConfigError(f"requests_per_second must be positive, got {rate!r}")
        self.rate = float(rate)
        self.burst = max(1.0, float(burst))
        self._clock = clock
        self._sleep = sleep
        self._tokens = self.burst
        self._last = clock()
        self._lock = threading.Lock()

    def acquire(self) -> None:
        while True:
            with self._lock:
                now = self._clock()
                self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
                self._last = now
                if self._tokens >= 1.0:
                    self._tokens -= 1.0
                    return
                wait = (1.0 - self._tokens) / self.rate
            self._sleep(wait)


def _retry_after(exc: openai.APIStatusError) -> float | None:
    """Seconds the server asked us to wait (``retry-after-ms`` or ``Retry-After``), if any."""
    headers = exc.response.headers
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        raw = headers.get(name)
        if raw is None:
            continue
        try:
            seconds = float(raw) * scale
        except ValueError:
            continue  # an HTTP date: fall back to our own back-off
        if seconds >= 0:
            return min(seconds, MAX_RETRY_AFTER)
    return None


class OpenAICompatible:
    """Chat completions against ``config.base_url``.  ``usage`` keeps running totals;
    ``retries`` counts retried requests.  ``sleep`` is how back-off waits (replaceable)."""

    def __init__(self, config: GeneratorConfig, *,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if not config.base_url:
            raise ConfigError("an 'openai' generator needs base_url, e.g. "
                              "'http://127.0.0.1:8000/v1', got none")
        if not config.model:
            raise ConfigError("an 'openai' generator needs the model name, got none")
        api_key = "unused"  # local servers take any key; the client insists on one
        if config.api_key_env:
            api_key = os.environ.get(config.api_key_env, "")
            if not api_key:
                raise ConfigError(f"environment variable {config.api_key_env!r} (api_key_env) "
                                  "is not set or empty; it should hold the API key")
        self.config = config
        self.model = config.model
        self.usage = Usage(config.cost_per_1k_prompt_tokens, config.cost_per_1k_completion_tokens)
        self.retries = 0
        self._sleep = sleep
        self._client = openai.OpenAI(base_url=config.base_url, api_key=api_key,
                                     timeout=config.timeout, max_retries=0)
        self._bucket = (None if config.requests_per_second is None
                        else TokenBucket(config.requests_per_second))
        self._slots = threading.BoundedSemaphore(config.max_concurrency)

    def __repr__(self) -> str:
        return f"OpenAICompatible(model={self.model!r}, base_url={self.config.base_url!r})"

    def close(self) -> None:
        self._client.close()

    def backoff(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number ``attempt`` (0-based): the server's
        ``Retry-After`` when given, else ``backoff_base * 2**attempt`` capped at
        ``backoff_max``."""
        if retry_after is not None:
            return retry_after
        return min(self.config.backoff_max, self.config.backoff_base * 2.0 ** attempt)

    def _call(self, messages: list[dict[str, str]], max_tokens: int, temperature: float,
              json_schema: dict[str, Any] | None) -> Any:
        """One request, retried on transient failures; returns the raw completion."""
        extra: dict[str, Any] = {}
        if json_schema is not None:
            extra["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "reply", "schema": json_schema, "strict": True},
            }
        attempt = 0
        while True:
            if self._bucket is not None:
                self._bucket.acquire()
            try:
                with self._slots:
                    return self._client.chat.completions.create(
                        model=self.model, messages=messages,  # type: ignore[arg-type]
                        max_tokens=max_tokens, temperature=temperature, **extra)
            except openai.APIStatusError as exc:
                status = exc.status_code
                if status != 429 and status < 500:
                    raise GenerationError(
                        f"{self.config.base_url} refused the request for model {self.model!r} "
                        f"with HTTP {status}: {exc.message}") from None
                wait = self.backoff(attempt, _retry_after(exc))
                why = f"HTTP {status}"
            except openai.APIConnectionError as exc:  # timeouts included
                wait = self.backoff(attempt)
                why = "a timeout" if isinstance(exc, openai.APITimeoutError) else \
                    f"a connection error ({exc})"
            if attempt >= self.config.max_retries:
                raise GenerationError(
                    f"{self.config.base_url} failed for model {self.model!r} with {why} after "
                    f"{attempt + 1} attempts") from None
            attempt += 1
            self.retries += 1
            self._sleep(wait)

    def generate(self, messages: list[dict[str, str]], *, max_tokens: int,
                 temperature: float = 0.0, json_schema: dict[str, Any] | None = None
                 ) -> Generation:
        check_request(messages, max_tokens, temperature, json_schema)
        started = time.perf_counter()
        problem = ""
        for attempt in range(2):  # a malformed reply is asked for once more
            completion = self._call(messages, max_tokens, temperature, json_schema)
            usage = getattr(completion, "usage", None)
            prompt_tokens = int(getattr(usage, "prompt_tokens", 0) or 0)
            completion_tokens = int(getattr(usage, "completion_tokens", 0) or 0)
            self.usage.add(prompt_tokens, completion_tokens)
            problem = self._problem(completion, json_schema)
            if not problem:
                text = completion.choices[0].message.content
                return Generation(text, self.model, prompt_tokens, completion_tokens,
                                  cached=False, seconds=time.perf_counter() - started)
            if attempt == 0:
                self.retries += 1
        raise GenerationError(f"model {self.model!r} at {self.config.base_url} gave no usable "
                              f"reply in 2 attempts: {problem}")

    @staticmethod
    def _problem(completion: Any, json_schema: dict[str, Any] | None) -> str:
        """What is wrong with a reply ("" when nothing is)."""
        choices = getattr(completion, "choices", None) or []
        if not choices:
            return "the reply has no choices"
        choice = choices[0]
        if choice.finish_reason == "length":
            return "the reply was truncated at max_tokens (finish_reason 'length')"
        text = getattr(choice.message, "content", None)
        if not isinstance(text, str) or not text.strip():
            return "the reply text is empty"
        if json_schema is not None:
            try:
                validate_json(text, json_schema)
            except GenerationError as exc:
                return str(exc)
        return ""
