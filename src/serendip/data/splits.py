"""Train/test splits: per-user temporal ratio, leave-last-one-out, cold-item holdout.

Every split keeps the full user and item vocabularies, so the held-out items of a cold-item
split still have their text (and vectors) but no training interactions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from serendip.data.dataset import Dataset
from serendip.errors import ConfigError

__all__ = ["Split", "temporal_split", "leave_last_out", "cold_item_split", "make_split", "PROTOCOLS"]

PROTOCOLS = ("temporal", "loo", "cold-items")


@dataclass(frozen=True)
class Split:
    """A training Dataset and the held-out (user, item) pairs to predict."""

    name: str
    train: Dataset
    test: pd.DataFrame  # columns user, item (indices)
    cold_items: np.ndarray | None = None  # for cold-item splits: the never-trained items

    @property
    def test_users(self) -> np.ndarray:
        return np.unique(self.test["user"].to_numpy())


def _rank_within_user(inter: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    inter = inter.sort_values(["user", "timestamp"], kind="stable")
    pos = inter.groupby("user").cumcount().to_numpy()
    n = inter.groupby("user")["item"].transform("size").to_numpy()
    return pos, n


def temporal_split(data: Dataset, test_ratio: float = 0.2, min_train: int = 1) -> Split:
    """Each user's last ``test_ratio`` share of interactions (by time) goes to test."""
    if not 0.0 < test_ratio < 1.0:
        raise ConfigError(f"test_ratio must be in (0, 1), got {test_ratio}")
    inter = data.interactions.sort_values(["user", "timestamp"], kind="stable")
    pos, n = _rank_within_user(inter)
    n_test = np.floor(n * test_ratio + 1e-9).astype(np.int64)
    n_test = np.where(n - n_test < min_train, np.maximum(n - min_train, 0), n_test)
    is_test = pos >= n - n_test
    return Split(
        f"temporal-{test_ratio:g}",
        data.with_interactions(inter[~is_test]),
        inter.loc[is_test, ["user", "item"]].reset_index(drop=True),
    )


def leave_last_out(data: Dataset, min_train: int = 1) -> Split:
    """Each user's last interaction goes to test (users with > ``min_train`` interactions)."""
    inter = data.interactions.sort_values(["user", "timestamp"], kind="stable")
    pos, n = _rank_within_user(inter)
    is_test = (pos == n - 1) & (n > min_train)
    return Split(
        "loo",
        data.with_interactions(inter[~is_test]),
        inter.loc[is_test, ["user", "item"]].reset_index(drop=True),
    )


def cold_item_split(data: Dataset, item_share: float = 0.2, seed: int = 42) -> Split:
    """A random ``item_share`` of the interacted items is never seen in training.

    Every interaction with those items becomes test; they keep their text, so only
    content-aware models can rank them.
    """
    if not 0.0 < item_share < 1.0:
        raise ConfigError(f"item_share must be in (0, 1), got {item_share}")
    rng = np.random.default_rng(seed)
    seen = np.unique(data.interactions["item"].to_numpy())
    n_cold = max(1, int(round(len(seen) * item_share)))
    cold = np.sort(rng.choice(seen, size=n_cold, replace=False))
    inter = data.interactions
    is_test = inter["item"].isin(cold).to_numpy()
    return Split(
        f"cold-items-{item_share:g}",
        data.with_interactions(inter[~is_test]),
        inter.loc[is_test, ["user", "item"]].reset_index(drop=True),
        cold_items=cold,
    )


def make_split(data: Dataset, protocol: str, **kwargs: float) -> Split:
    """Split by protocol name: ``temporal``, ``loo`` or ``cold-items``."""
    if protocol == "temporal":
        return temporal_split(data, **kwargs)  # type: ignore[arg-type]
    if protocol == "loo":
        return leave_last_out(data)
    if protocol == "cold-items":
        return cold_item_split(data, **kwargs)  # type: ignore[arg-type]
    raise ConfigError(f"unknown protocol {protocol!r}; valid: {', '.join(PROTOCOLS)}")
