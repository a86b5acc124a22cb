"""Hybrid scorer: a weighted blend of per-user standardised scores of other scorers.

Blending z-scores rather than raw scores makes weights comparable across models whose
scales differ by orders of magnitude (EASE weights vs cosines vs transition probabilities).
``tail_boost`` moves weight toward the text-based models for rarely seen items, so that
collaborative strength reaches the tail and cold items through their language-model vectors
(a popularity-gated form of dual-view fusion, cf. LLM-ESR, Liu et al. 2024).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from serendip.errors import ConfigError
from serendip.models._util import standardize
from serendip.models.base import BatchScorer
from serendip.types import Query

__all__ = ["Hybrid", "TEXT_MODELS"]

#: Scorers whose scores come from item text, and so reach cold items.
TEXT_MODELS = ("textcf", "semantic")


class Hybrid(BatchScorer):
    """Blends trained scorers; built by the pipeline from a preset, not trained on its own."""

    name = "hybrid"

    def __init__(
        self,
        scorers: Mapping[str, BatchScorer],
        weights: Mapping[str, float],
        popularity: np.ndarray,
        tail_boost: float = 0.0,
    ) -> None:
        super().__init__()
        unknown = sorted(set(weights) - set(scorers))
        if unknown:
            raise ConfigError(
                f"blend names untrained model(s) {unknown}; trained: {sorted(scorers)}"
            )
        bad = {k: v for k, v in weights.items() if not np.isfinite(v) or v < 0}
        if bad:
            raise ConfigError(f"blend weights must be finite and >= 0, got {bad}")
        if not any(v > 0 for v in weights.values()):
            raise ConfigError(f"blend needs at least one positive weight, got {dict(weights)}")
        self.scorers = {k: scorers[k] for k, v in weights.items() if v > 0}
        self.weights = {k: float(v) for k, v in weights.items() if v > 0}
        # gate in [0, 1]: 1 for never-seen items, 1/2 at the median popularity of seen items
        seen = popularity[popularity > 0]
        med = float(np.median(seen)) if seen.size else 1.0
        self._gate = tail_boost * med / (med + popularity)
        self._state = {}

    def score_many(self, queries: Sequence[Query]) -> np.ndarray:
        total: np.ndarray | None = None
        for name, w in self.weights.items():
            z = standardize(self.scorers[name].score_many(queries))
            if name in TEXT_MODELS:
                z = z * (1.0 + self._gate[None, :])
            total = w * z if total is None else total + w * z
        assert total is not None
        return total

