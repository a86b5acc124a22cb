"""What every text generator shares: the protocol, its result, its configuration, accounting.

A generator takes chat messages (``[{"role": "system" | "user" | "assistant", "content":
"..."}]``) and returns one :class:`Generation`.  Back ends: :mod:`serendip.llm.openai_compat`
(any server speaking the OpenAI chat-completions protocol) and :mod:`serendip.llm.local`
(a causal language model directory loaded with transformers).
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from serendip.errors import ConfigError, DataError, SerendipError

__all__ = [
    "Generation",
    "GenerationError",
    "Generator",
    "GeneratorConfig",
    "Usage",
    "check_request",
    "prompt_hash",
    "validate_json",
]

_ROLES = ("system", "user", "assistant")


class GenerationError(SerendipError, RuntimeError):
    """A generator gave no usable text: the server refused or kept failing, or the reply was
    empty, truncated or not valid JSON for the requested schema."""


@dataclass(frozen=True)
class Generation:
    """One generated text.  ``cached`` is True when it came from the cache (no model ran);
    ``seconds`` is the time this call took; token counts are those of the original request."""

    text: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    cached: bool = False
    seconds: float = 0.0


@runtime_checkable
class Generator(Protocol):
    """Anything that writes text from chat messages."""

    #: The model name, part of every cache key.
    model: str

    def generate(self, messages: list[dict[str, str]], *, max_tokens: int,
                 temperature: float = 0.0, json_schema: dict[str, Any] | None = None
                 ) -> Generation:
        """Write a reply to ``messages``: at most ``max_tokens`` tokens, greedy when
        ``temperature`` is 0; with ``json_schema`` the reply is JSON valid against it.
        Raises GenerationError when no usable reply came."""
        ...


class GeneratorConfig(BaseModel):
    """How to reach a language model.  The API key itself never appears here: ``api_key_env``
    names the environment variable that holds it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["openai", "local"]
    model: str = Field(default="", description="model name sent to the server; for 'local' "
                                               "defaults to the directory name")
    base_url: str | None = Field(default=None, description="e.g. http://127.0.0.1:8000/v1")
    api_key_env: str | None = Field(default=None, description="environment variable that "
                                                              "holds the API key")
    timeout: float = Field(default=60.0, gt=0)
    max_retries: int = Field(default=3, ge=0, le=20)
    backoff_base: float = Field(default=0.5, ge=0, description="first retry delay (seconds), "
                                                               "doubled at each retry")
    backoff_max: float = Field(default=30.0, ge=0)
    requests_per_second: float | None = Field(default=None, gt=0)
    max_concurrency: int = Field(default=4, ge=1)
    cost_per_1k_prompt_tokens: float = Field(default=0.0, ge=0)
    cost_per_1k_completion_tokens: float = Field(default=0.0, ge=0)
    model_dir: str | None = None


class Usage:
    """Running totals of one generator: requests answered, tokens, cost (thread-safe)."""

    def __init__(self, cost_per_1k_prompt: float = 0.0, cost_per_1k_completion: float = 0.0):
        self._lock = threading.Lock()
        self._prompt_price = cost_per_1k_prompt
        self._completion_price = cost_per_1k_completion
        self.requests = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.cost = 0.0

    def add(self, prompt_tokens: int, completion_tokens: int) -> None:
        with self._lock:
            self.requests += 1
            self.prompt_tokens += prompt_tokens
            self.completion_tokens += completion_tokens
            self.cost += (prompt_tokens * self._prompt_price
                          + completion_tokens * self._completion_price) / 1000.0

    def as_dict(self) -> dict[str, float | int]:
        with self._lock:
            return {"requests": self.requests, "prompt_tokens": self.prompt_tokens,
                    "completion_tokens": self.completion_tokens, "cost": self.cost}


def check_request(messages: object, max_tokens: object, temperature: object,
                  json_schema: object) -> None:
    """Refuse malformed arguments of ``generate`` with a DataError naming the bad value."""
    if not isinstance(messages, list) or not messages:
        raise DataError(f"messages must be a non-empty list of dicts, got {messages!r}")
    for n, msg in enumerate(messages):
        if not isinstance(msg, dict) or set(msg) != {"role", "content"}:
            raise DataError(f"message #{n} must be a dict with exactly 'role' and 'content', "
                            f"got {msg!r}")
        if msg["role"] not in _ROLES:
            raise DataError(f"message #{n} role must be one of {', '.join(_ROLES)}, "
                            f"got {msg['role']!r}")
        if not isinstance(msg["content"], str):
            raise DataError(f"message #{n} content must be a string, got {msg['content']!r}")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise DataError(f"max_tokens must be a positive integer, got {max_tokens!r}")
    if (isinstance(temperature, bool) or not isinstance(temperature, int | float)
            or not math.isfinite(temperature) or not 0.0 <= temperature <= 2.0):
        raise DataError(f"temperature must be a number in [0, 2], got {temperature!r}")
    if json_schema is not None and not isinstance(json_schema, dict):
        raise DataError(f"json_schema must be a dict or None, got {json_schema!r}")


def prompt_hash(messages: list[dict[str, str]], max_tokens: int, temperature: float,
                json_schema: dict[str, Any] | None) -> str:
    """SHA-256 (hex) of the canonical JSON of a request: what the cache is keyed by."""
    canonical = json.dumps(
        {"messages": messages, "max_tokens": max_tokens, "temperature": float(temperature),
         "json_schema": json_schema},
        sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False,
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


# JSON validation -----------------------------------------------------------------------------
_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,), "array": (list,), "string": (str,), "boolean": (bool,),
    "integer": (int,), "number": (int, float), "null": (type(None),),
}


def _type_ok(value: Any, name: str) -> bool:
    if name in ("integer", "number") and isinstance(value, bool):
        return False
    if name == "integer" and isinstance(value, float):
        return value.is_integer()
    return isinstance(value, _TYPES.get(name, (object,)))


def _check(value: Any, schema: dict[str, Any], path: str) -> str | None:
    """The first violation of ``schema`` by ``value`` (a message), or None.

    Covers the keywords structured output uses: type, enum, const, required, properties,
    additionalProperties, items, minItems/maxItems, minLength/maxLength, minimum/maximum."""
    types = schema.get("type")
    if types is not None:
        names = [types] if isinstance(types, str) else list(types)
        if not any(_type_ok(value, t) for t in names):
            return f"{path} should be {' or '.join(names)}, got {value!r}"
    if "enum" in schema and value not in schema["enum"]:
        return f"{path} should be one of {schema['enum']!r}, got {value!r}"
    if "const" in schema and value != schema["const"]:
        return f"{path} should be {schema['const']!r}, got {value!r}"
    if isinstance(value, dict):
        for key in schema.get("required", []):
            if key not in value:
                return f"{path} lacks the required key {key!r}"
        props = schema.get("properties", {})
        for key, sub in value.items():
            if key in props:
                found = _check(sub, props[key], f"{path}.{key}")
                if found:
                    return found
            elif schema.get("additionalProperties") is False:
                return f"{path} has an unexpected key {key!r}"
    if isinstance(value, list):
        if "items" in schema and isinstance(schema["items"], dict):
            for i, sub in enumerate(value):
                found = _check(sub, schema["items"], f"{path}[{i}]")
                if found:
                    return found
        if len(value) < schema.get("minItems", 0):
            return f"{path} should have at least {schema['minItems']} items, got {len(value)}"
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            return f"{path} should have at most {schema['maxItems']} items, got {len(value)}"
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            return f"{path} should be at least {schema['minLength']} characters long"
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            return f"{path} should be at most {schema['maxLength']} characters long"
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            return f"{path} should be >= {schema['minimum']}, got {value!r}"
        if "maximum" in schema and value > schema["maximum"]:
            return f"{path} should be <= {schema['maximum']}, got {value!r}"
    return None


def validate_json(text: str, schema: dict[str, Any]) -> Any:
    """Parse ``text`` and check it against ``schema``; GenerationError saying what is wrong.

    The common keywords above are checked first (their messages name the path, e.g.
    "$.year should be integer", whatever is installed); when the ``jsonschema`` package is
    installed it then checks every other keyword too."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise GenerationError(f"reply is not valid JSON ({exc}): {text[:200]!r}") from None
    problem = _check(value, schema, "$")
    if problem is None:
        try:
            import jsonschema  # type: ignore[import-untyped]
        except ImportError:
            pass
        else:
            try:
                jsonschema.validate(value, schema)
            except jsonschema.ValidationError as exc:
                problem = exc.message
            except jsonschema.SchemaError as exc:
                raise ConfigError(
                    f"json_schema is not a valid JSON schema: {exc.message}") from None
    if problem:
        raise GenerationError(f"reply does not match the JSON schema: {problem}")
    return value
