"""A generator that runs a causal language model directory in this process (transformers).

Any directory ``AutoModelForCausalLM`` can load works; nothing is downloaded
(``local_files_only``).  The tokenizer's chat template formats the messages when it has one;
otherwise they are joined as ``role: content`` lines.  Runs on the GPU when one is available.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, cast

from serendip.errors import ConfigError
from serendip.llm.base import (
    Generation,
    GenerationError,
    GeneratorConfig,
    Usage,
    check_request,
    validate_json,
)

__all__ = ["LocalCausalLM"]


class LocalCausalLM:
    """``config.model_dir`` loaded once; ``generate`` calls are serialised (one model)."""

    def __init__(self, config: GeneratorConfig, *, device: str | None = None) -> None:
        if not config.model_dir:
            raise ConfigError("a 'local' generator needs model_dir (a directory holding a "
                              "causal language model), got none")
        path = Path(config.model_dir).expanduser()
        if not path.is_dir():
            raise ConfigError(f"model_dir {str(path)!r} is not a directory")
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.config = config
        self.model = config.model or path.name
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
            self._lm = cast(Any, AutoModelForCausalLM.from_pretrained(
                str(path), local_files_only=True))
        except (OSError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"model_dir {str(path)!r} does not hold a causal language model "
                              f"with its tokenizer: {first}") from None
        self._lm.to(self.device).eval()
        self.usage = Usage(config.cost_per_1k_prompt_tokens, config.cost_per_1k_completion_tokens)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"LocalCausalLM(model={self.model!r}, device={self.device!r})"

    @property
    def context_length(self) -> int | None:
        """The most tokens (prompt and reply) the model takes, when its config says."""
        cfg = self._lm.config
        for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
            value = getattr(cfg, name, None)
            if isinstance(value, int) and value > 0:
                return value
        return None

    def prompt_text(self, messages: list[dict[str, str]]) -> str:
        """The text the model continues: the chat template, or ``role: content`` lines."""
        if getattr(self._tokenizer, "chat_template", None):
            text = self._tokenizer.apply_chat_template(messages, tokenize=False,
                                                       add_generation_prompt=True)
            return str(text)
        lines = [f"{m['role']}: {m['content']}" for m in messages]
        return "\n".join([*lines, "assistant:"])

    def generate(self, messages: list[dict[str, str]], *, max_tokens: int,
                 temperature: float = 0.0, json_schema: dict[str, Any] | None = None
                 ) -> Generation:
        check_request(messages, max_tokens, temperature, json_schema)
        import torch

        started = time.perf_counter()
        tok = self._tokenizer
        # A sampled reply may be fine the second time; a greedy one would only repeat itself.
        attempts = 2 if temperature > 0 else 1
        problem = ""
        for _ in range(attempts):
            inputs = tok(self.prompt_text(messages), return_tensors="pt",
                         add_special_tokens=False).to(self.device)
            context = self.context_length
            n_prompt = int(inputs["input_ids"].shape[1])
            if context is not None and n_prompt + max_tokens > context:
                raise GenerationError(
                    f"local model {self.model!r}: the prompt ({n_prompt} tokens) and max_tokens "
                    f"({max_tokens}) exceed its context of {context} tokens")
            options: dict[str, Any] = {"max_new_tokens": max_tokens, "do_sample": temperature > 0}
            if temperature > 0:
                options["temperature"] = float(temperature)
            pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
            if pad is not None:
                options["pad_token_id"] = pad
            with self._lock, torch.no_grad():
                out = self._lm.generate(**inputs, **options)
            prompt_tokens = int(inputs["input_ids"].shape[1])
            new = out[0, prompt_tokens:]
            completion_tokens = int(new.shape[0])
            self.usage.add(prompt_tokens, completion_tokens)
            text = str(tok.decode(new, skip_special_tokens=True)).strip()
            problem = "the reply text is empty" if not text else ""
            if not problem and json_schema is not None:
                try:
                    validate_json(text, json_schema)
                except GenerationError as exc:
                    problem = str(exc)
            if not problem:
                return Generation(text, self.model, prompt_tokens, completion_tokens,
                                  cached=False, seconds=time.perf_counter() - started)
        raise GenerationError(f"local model {self.model!r} gave no usable reply in {attempts} "
                              f"attempt{'s' if attempts > 1 else ''}: {problem}")
