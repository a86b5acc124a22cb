"""Language models that write: generator back ends behind one small interface, and a cache.

``make_generator(config)`` builds one from a :class:`GeneratorConfig`; pass ``cache`` (a
store, or a :class:`MemoryCache`) to keep every generated text so that nothing is generated
twice.  ``generator_config`` reads the ``--llm-*`` options and ``SERENDIP_LLM_*`` variables;
``Runner`` bounds a call's time for code that answers a person.  The service, ``serendip
enrich`` and ``serendip chat`` use them (docs/llm.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from serendip.llm.base import (
    Generation,
    GenerationError,
    Generator,
    GeneratorConfig,
    Usage,
    prompt_hash,
    validate_json,
)
from serendip.llm.cache import CachedGenerator, GenerationCache, MemoryCache
from serendip.llm.runner import Runner
from serendip.llm.settings import generator_config

if TYPE_CHECKING:
    from serendip.llm.local import LocalCausalLM
    from serendip.llm.openai_compat import OpenAICompatible

__all__ = [
    "CachedGenerator",
    "Generation",
    "GenerationCache",
    "GenerationError",
    "Generator",
    "GeneratorConfig",
    "LocalCausalLM",
    "MemoryCache",
    "OpenAICompatible",
    "Runner",
    "Usage",
    "generator_config",
    "make_generator",
    "prompt_hash",
    "validate_json",
]


def make_generator(config: GeneratorConfig, cache: GenerationCache | None = None) -> Generator:
    """The generator ``config`` describes, wrapped in a :class:`CachedGenerator` when
    ``cache`` is given."""
    generator: Generator
    if config.kind == "openai":
        from serendip.llm.openai_compat import OpenAICompatible

        generator = OpenAICompatible(config)
    else:
        from serendip.llm.local import LocalCausalLM

        generator = LocalCausalLM(config)
    return generator if cache is None else CachedGenerator(generator, cache)


def __getattr__(name: str) -> object:
    # the back ends import openai / torch: load them only when asked for
    if name == "OpenAICompatible":
        from serendip.llm.openai_compat import OpenAICompatible

        return OpenAICompatible
    if name == "LocalCausalLM":
        from serendip.llm.local import LocalCausalLM

        return LocalCausalLM
    raise AttributeError(f"module 'serendip.llm' has no attribute {name!r}")
