"""Small shared types: the query a pipeline answers and the ItemList every stage passes on."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["ItemList", "Query"]


@dataclass(frozen=True)
class Query:
    """What a recommendation is asked for.

    ``history`` holds item indices (into the dataset's item vocabulary), oldest first.
    ``user`` is the user index when the user is known to the trained model, else ``None``
    (anonymous session, new user).  ``text`` is an optional natural-language request.
    ``discovery`` in [0, 1] moves re-ranking from pure relevance (0) to the most discovery
    (1); ``None`` keeps each reranker's configured default.
    ``shown`` holds the item indices of the lists the person was shown recently, one entry per
    showing (an item shown in three lists appears three times); only a bandit reads it (its
    ``shown`` feature), and the service fills it from the impression log.
    """

    user: int | None
    history: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    text: str | None = None
    discovery: float | None = None
    shown: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def __post_init__(self) -> None:
        h = np.asarray(self.history, dtype=np.int64).reshape(-1)
        object.__setattr__(self, "history", h)
        object.__setattr__(self, "shown", np.asarray(self.shown, dtype=np.int64).reshape(-1))
        if self.discovery is not None:
            d = float(self.discovery)
            if not 0.0 <= d <= 1.0:  # also refuses NaN
                raise ValueError(f"discovery must lie in [0, 1], got {self.discovery!r}")
            object.__setattr__(self, "discovery", d)


@dataclass(frozen=True, eq=False)
class ItemList:
    """Item indices with aligned arrays: scores, reasons, and any extra named fields.

    Every scorer, reranker and explorer takes and returns ItemLists, so stages chain in any
    order.  ``items`` are indices into the dataset's item vocabulary; external ids are looked
    up only at the edges (CLI, files, HTTP).
    """

    items: np.ndarray
    scores: np.ndarray
    reasons: tuple[tuple[str, ...], ...] | None = None
    fields: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        items = np.asarray(self.items, dtype=np.int64).reshape(-1)
        scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
        if items.shape != scores.shape:
            raise ValueError(
                f"items and scores must have the same length, got {items.size} and {scores.size}"
            )
        if self.reasons is not None and len(self.reasons) != items.size:
            raise ValueError(
                f"reasons must have one entry per item, got {len(self.reasons)} for {items.size}"
            )
        for name, arr in self.fields.items():
            if len(arr) != items.size:
                raise ValueError(
                    f"field {name!r} must have one entry per item, got {len(arr)} for {items.size}"
                )
        object.__setattr__(self, "items", items)
        object.__setattr__(self, "scores", scores)

    def __len__(self) -> int:
        return int(self.items.size)

    @classmethod
    def empty(cls) -> ItemList:
        return cls(np.zeros(0, dtype=np.int64), np.zeros(0))

    def take(self, idx: np.ndarray | Sequence[int]) -> ItemList:
        """Rows at positions ``idx`` (positions in this list, not item indices), in that order."""
        idx = np.asarray(idx, dtype=np.int64)
        reasons = None if self.reasons is None else tuple(self.reasons[int(i)] for i in idx)
        return ItemList(
            self.items[idx],
            self.scores[idx],
            reasons,
            {k: np.asarray(v)[idx] for k, v in self.fields.items()},
        )

    def top(self, k: int) -> ItemList:
        """The ``k`` highest-scoring entries, best first (ties keep the earlier entry)."""
        if k < 0:
            raise ValueError(f"k must be non-negative, got {k}")
        if k >= len(self):
            return self.take(np.argsort(-self.scores, kind="stable"))
        if k == 0:
            return self.take(np.zeros(0, dtype=np.int64))
        # partial selection, then settle ties at the cut-off by position (stable)
        kth = -np.partition(-self.scores, k - 1)[k - 1]
        above = np.flatnonzero(self.scores > kth)
        tied = np.flatnonzero(self.scores == kth)[: k - above.size]
        chosen = np.concatenate([above, tied])
        order = chosen[np.argsort(-self.scores[chosen], kind="stable")]
        return self.take(order)

    def exclude(self, items: np.ndarray) -> ItemList:
        """Drop the given item indices (e.g. what the user already has)."""
        if len(items) == 0:
            return self
        keep = ~np.isin(self.items, items)
        return self.take(np.flatnonzero(keep))

    def with_scores(self, scores: np.ndarray) -> ItemList:
        return ItemList(self.items, scores, self.reasons, dict(self.fields))

    def with_reasons(self, reasons: Sequence[Sequence[str]]) -> ItemList:
        return ItemList(
            self.items, self.scores, tuple(tuple(r) for r in reasons), dict(self.fields)
        )

    def with_field(self, name: str, values: np.ndarray) -> ItemList:
        f = dict(self.fields)
        f[name] = np.asarray(values)
        return ItemList(self.items, self.scores, self.reasons, f)

    def reason_lists(self) -> list[list[str]]:
        if self.reasons is None:
            return [[] for _ in range(len(self))]
        return [list(r) for r in self.reasons]
