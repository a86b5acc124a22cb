"""The Component contract shared by scorers and rerankers.

A component is a small class: a validated pydantic config, ``train(data)`` that sets every
piece of learned state, ``is_trained``, and ``__call__``.  ``__init__`` only stores config.
Learned state is a flat dict of numpy arrays, saved as ``.npz`` with ``allow_pickle=False``
next to the config as JSON — never a pickle.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from serendip.data.dataset import Dataset
from serendip.errors import ConfigError, ModelFormatError, NotTrainedError
from serendip.types import ItemList, Query

__all__ = ["ComponentConfig", "Component", "Scorer", "Reranker", "make_config"]


class ComponentConfig(BaseModel):
    """Base for every component config: unknown keys are refused, values validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def make_config(cls: type[ComponentConfig], values: dict[str, Any] | None, where: str) -> Any:
    """Build a config, turning pydantic's error into a ConfigError that names the bad field."""
    try:
        return cls(**(values or {}))
    except ValidationError as e:
        parts = []
        for err in e.errors():
            loc = ".".join(str(x) for x in err["loc"])
            parts.append(f"{where}.{loc}: {err['msg']} (got {err.get('input')!r})")
        raise ConfigError("; ".join(parts)) from None


class Component:
    """Base class: config storage, trained-state bookkeeping, explicit-format persistence."""

    name: ClassVar[str] = "component"
    config_class: ClassVar[type[ComponentConfig]] = ComponentConfig

    def __init__(self, config: ComponentConfig | dict[str, Any] | None = None, **kwargs: Any):
        if config is None or isinstance(config, dict):
            values = dict(config or {})
            values.update(kwargs)
            config = make_config(self.config_class, values, self.name)
        elif kwargs:
            config = make_config(
                self.config_class, {**config.model_dump(), **kwargs}, self.name
            )
        if not isinstance(config, self.config_class):
            raise ConfigError(
                f"{self.name} needs a {self.config_class.__name__}, got {type(config).__name__}"
            )
        self.config = config
        self._state: dict[str, np.ndarray] | None = None

    # learned state ------------------------------------------------------------------
    def train(self, data: Dataset) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def is_trained(self) -> bool:
        return self._state is not None

    def _require_trained(self) -> dict[str, np.ndarray]:
        if self._state is None:
            raise NotTrainedError(f"{self.name} is not trained; call train(data) first")
        return self._state

    def _set_state(self, **arrays: np.ndarray) -> None:
        self._state = {k: np.asarray(v) for k, v in arrays.items()}
        self._after_load()

    def _after_load(self) -> None:
        """Hook: rebuild derived (non-saved) caches from ``self._state``."""

    # persistence --------------------------------------------------------------------
    def save(self, directory: str | Path) -> None:
        state = self._require_trained()
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        (d / "config.json").write_text(
            json.dumps({"component": self.name, "config": self.config.model_dump()}, indent=2)
        )
        np.savez(d / "state.npz", allow_pickle=False, **state)

    @classmethod
    def load(cls, directory: str | Path) -> Component:
        d = Path(directory)
        try:
            meta = json.loads((d / "config.json").read_text())
            with np.load(d / "state.npz", allow_pickle=False) as z:
                state = {k: z[k] for k in z.files}
        except FileNotFoundError as e:
            raise ModelFormatError(f"incomplete component directory {str(d)!r}: {e}") from e
        if meta.get("component") != cls.name:
            raise ModelFormatError(
                f"{str(d)!r} holds a {meta.get('component')!r} component, not {cls.name!r}"
            )
        obj = cls(meta["config"])
        obj._set_state(**state)
        return obj

    def __repr__(self) -> str:
        cfg = ", ".join(f"{k}={v!r}" for k, v in self.config.model_dump().items())
        return f"{type(self).__name__}({cfg})"


class Scorer(Component):
    """Scores items for a query.  Subclasses implement ``score`` over the whole catalog."""

    def score(self, query: Query) -> np.ndarray:  # pragma: no cover - abstract
        """One float per catalog item (higher = more relevant); -inf for unscorable items."""
        raise NotImplementedError

    def __call__(self, query: Query, items: ItemList | None = None) -> ItemList:
        scores = self.score(query)
        if items is None:
            return ItemList(np.arange(scores.size), scores)
        return items.with_scores(scores[items.items])


class Reranker(Component):
    """Reorders a scored candidate list into a list of ``k`` items with reasons."""

    def __call__(self, query: Query, items: ItemList, k: int) -> ItemList:  # pragma: no cover
        raise NotImplementedError
