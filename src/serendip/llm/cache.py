"""Generated texts are kept, keyed by model and request, so nothing is generated twice.

The key is ``(model, prompt_hash)`` where ``prompt_hash`` is the SHA-256 of the canonical
JSON of messages, ``max_tokens``, ``temperature`` and ``json_schema``
(:func:`serendip.llm.base.prompt_hash`).  Any store (``Store.get_generation`` /
``put_generation``) is a cache that lasts and is shared by every process on the database;
:class:`MemoryCache` is one for a single process.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Protocol

from serendip.llm.base import Generation, Generator, check_request, prompt_hash

__all__ = ["GenerationCache", "MemoryCache", "CachedGenerator"]


class GenerationCache(Protocol):
    """What a cache must do; every serendip store does it."""

    def get_generation(self, model: str, prompt_hash: str) -> dict[str, Any] | None: ...

    def put_generation(self, model: str, prompt_hash: str, text: str, prompt_tokens: int,
                       completion_tokens: int) -> None: ...


class MemoryCache:
    """A dict in this process; like the stores, the first text stored for a key stays."""

    def __init__(self) -> None:
        self._rows: dict[tuple[str, str], dict[str, Any]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._rows)

    def get_generation(self, model: str, prompt_hash: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._rows.get((model, prompt_hash))
            return None if row is None else dict(row)

    def put_generation(self, model: str, prompt_hash: str, text: str, prompt_tokens: int,
                       completion_tokens: int) -> None:
        with self._lock:
            self._rows.setdefault((model, prompt_hash), {
                "model": model, "prompt_hash": prompt_hash, "text": text,
                "prompt_tokens": int(prompt_tokens), "completion_tokens": int(completion_tokens),
                "created_at": time.time(),
            })


class CachedGenerator:
    """Wraps any generator: a request seen before is answered from ``cache`` (``cached=True``,
    the back end is not called); a new one is generated and stored.  ``hits`` and ``misses``
    count the two cases.  Two identical requests racing may both be generated once; the
    first text stored is the one kept."""

    def __init__(self, generator: Generator, cache: GenerationCache | None = None) -> None:
        self.generator = generator
        self.cache: GenerationCache = MemoryCache() if cache is None else cache
        self.model = generator.model
        self.hits = 0
        self.misses = 0

    def __repr__(self) -> str:
        return f"CachedGenerator({self.generator!r})"

    def generate(self, messages: list[dict[str, str]], *, max_tokens: int,
                 temperature: float = 0.0, json_schema: dict[str, Any] | None = None
                 ) -> Generation:
        check_request(messages, max_tokens, temperature, json_schema)
        started = time.perf_counter()
        key = prompt_hash(messages, max_tokens, temperature, json_schema)
        row = self.cache.get_generation(self.model, key)
        if row is not None:
            self.hits += 1
            return Generation(row["text"], self.model, int(row["prompt_tokens"]),
                              int(row["completion_tokens"]), cached=True,
                              seconds=time.perf_counter() - started)
        self.misses += 1
        out = self.generator.generate(messages, max_tokens=max_tokens, temperature=temperature,
                                      json_schema=json_schema)
        self.cache.put_generation(self.model, key, out.text, out.prompt_tokens,
                                  out.completion_tokens)
        return out
