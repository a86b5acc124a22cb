"""Most-popular baseline: the same list for everyone, the bestseller drift made explicit."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from serendip.component import ComponentConfig
from serendip.data.dataset import Dataset
from serendip.models.base import BatchScorer
from serendip.types import Query

__all__ = ["Popularity", "PopularityConfig"]


class PopularityConfig(ComponentConfig):
    pass


class Popularity(BatchScorer):
    """Scores each item by log(1 + number of users who interacted with it)."""

    name = "popularity"
    config_class = PopularityConfig

    def train(self, data: Dataset) -> None:
        self._set_state(scores=np.log1p(data.item_popularity))

    def score_many(self, queries: Sequence[Query]) -> np.ndarray:
        s = self._require_trained()["scores"]
        return np.tile(s, (len(queries), 1))

    def _after_load(self) -> None:
        st = self._state
        assert st is not None
        self._column = np.asarray(st["scores"], dtype=np.float32)[:, None]

    def factor_space(self) -> tuple[str | None, np.ndarray]:
        self._require_trained()
        return None, self._column  # one factor: the same score for every query

    def query_factors(self, queries: Sequence[Query]) -> tuple[np.ndarray, np.ndarray]:
        return np.ones((len(queries), 1)), np.zeros(len(queries))
