"""Train/test splits: the as-deployed time cut, per-user ratios, leave-last-out, cold items.

The headline protocol is the **time cut** (``time_split``): fit on every event before one
moment, evaluate what returning users did after it, as a deployed model would be.  Items first
seen after the cut stay in the catalog and in the test set, so a model that never puts new
items in its lists is measured as such.  The per-user protocols (temporal ratio, leave-last-
one-out, random) and the cold-item holdout are secondary.

Every split keeps the full user and item vocabularies, so held-out items still have their text
(and vectors) but no training interactions.  Protocols that read time refuse data whose
timestamps are only row order (``Dataset.has_time`` False); ``random`` is the one for those.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from serendip.data.dataset import Dataset, iso_to_seconds
from serendip.errors import ConfigError

__all__ = [
    "Split",
    "time_split",
    "rolling_time_splits",
    "temporal_split",
    "leave_last_out",
    "random_split",
    "cold_item_split",
    "validation_split",
    "make_split",
    "PROTOCOLS",
]

PROTOCOLS = ("temporal", "loo", "cold-items", "time", "random")

#: Keyword arguments each protocol takes through ``make_split`` / ``validation_split``.
_PROTOCOL_KWARGS: dict[str, tuple[str, ...]] = {
    "temporal": ("test_ratio", "min_train"),
    "loo": ("min_train",),
    "cold-items": ("item_share", "seed"),
    "time": ("cut", "min_train"),
    "random": ("test_ratio", "seed", "min_train"),
}


@dataclass(frozen=True)
class Split:
    """A training Dataset and the held-out (user, item) pairs to predict."""

    name: str
    train: Dataset
    test: pd.DataFrame  # columns user, item (indices)
    cold_items: np.ndarray | None = None  # for cold-item splits: the never-trained items
    #: for time splits: items with no training interaction that occur in ``test``
    new_items: np.ndarray | None = None

    @property
    def test_users(self) -> np.ndarray:
        return np.unique(self.test["user"].to_numpy())


# --------------------------------------------------------------------------- helpers
def _require_time(data: Dataset, protocol: str) -> None:
    """Refuse a time-reading protocol on data whose timestamps are only row order."""
    if not data.has_time:
        raise ConfigError(
            f"protocol {protocol!r} needs event times, but this data has no timestamp column "
            "(row order is not time); use protocol 'random'"
        )


def _check_min_train(min_train: int) -> int:
    if isinstance(min_train, bool) or not isinstance(min_train, int | np.integer) or min_train < 1:
        raise ConfigError(f"min_train must be an integer >= 1, got {min_train!r}")
    return int(min_train)


def _check_ratio(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 < value < 1.0:
        raise ConfigError(f"{name} must be in (0, 1), got {value!r}")
    return float(value)


def _rank_within_user(inter: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Position of each row within its user (in the frame's order) and the user's row count."""
    pos = inter.groupby("user", sort=False).cumcount().to_numpy()
    n = inter.groupby("user", sort=False)["item"].transform("size").to_numpy()
    return pos, n


def _n_test(n: np.ndarray, test_ratio: float, min_train: int) -> np.ndarray:
    """floor(n * ratio) held-out events per user, never leaving fewer than ``min_train``."""
    n_test = np.floor(n * test_ratio + 1e-9).astype(np.int64)
    return np.where(n - n_test < min_train, np.maximum(n - min_train, 0), n_test)


def _pairs(inter: pd.DataFrame, n_items: int) -> np.ndarray:
    return inter["user"].to_numpy(np.int64) * n_items + inter["item"].to_numpy(np.int64)


# --------------------------------------------------------------------------- time cut
def _cut_time(data: Dataset, cut: float | str) -> tuple[float, str]:
    """The cut as a timestamp on the Dataset's scale, and the label for the split name.

    A number in (0, 1) is a quantile of event time; another number is a time; a string is
    read as a number first (so "2020" is 2020 seconds, write "2020-01-01" for the year), else
    as an ISO-8601 date (UTC when it names no zone).
    """
    value: float
    if isinstance(cut, bool):
        raise ConfigError(f"time cut must be a number or an ISO-8601 date, got {cut!r}")
    if isinstance(cut, str):
        try:
            value = float(cut)
        except ValueError:
            seconds = iso_to_seconds(pd.Series([cut.strip()]))
            if seconds.isna().any():
                raise ConfigError(
                    f"time cut {cut!r} is neither a number nor an ISO-8601 date "
                    "(e.g. 0.8 for a quantile, or 2020-06-01)"
                ) from None
            return float(seconds.iloc[0]), cut.strip()
    elif isinstance(cut, int | float | np.integer | np.floating):
        value = float(cut)
    else:
        raise ConfigError(
            f"time cut must be a number or an ISO-8601 date, got {type(cut).__name__} {cut!r}"
        )
    if not math.isfinite(value):
        raise ConfigError(f"time cut must be finite, got {cut!r}")
    ts = data.interactions["timestamp"].to_numpy(np.float64)
    if 0.0 < value < 1.0:
        # the quantile cut: train gets the floor(q * n) earliest events (fewer only when the
        # event at the cut shares its timestamp with earlier ones)
        srt = np.sort(ts)
        pos = min(int(math.floor(value * srt.size + 1e-9)), srt.size - 1)
        return float(srt[pos]), f"{value:g}"
    return value, f"{value:.10g}"


def time_split(data: Dataset, cut: float | str = 0.8, *, min_train: int = 1) -> Split:
    """As deployed: train on every event before the cut, test what returning users did after.

    ``cut`` in (0, 1) is a quantile of event time (0.8: the earliest 80 % of events train);
    any other number, or an ISO-8601 date, is the cut time itself.  Test holds the events at
    or after the cut of users with at least ``min_train`` training events, minus any (user,
    item) pair already in train.  Items first seen after the cut keep their place in the
    catalog and in test; they are listed in ``Split.new_items``.
    """
    _require_time(data, "time")
    min_train = _check_min_train(min_train)
    t_cut, label = _cut_time(data, cut)
    inter = data.interactions
    ts = inter["timestamp"].to_numpy(np.float64)
    is_train = ts < t_cut
    if not is_train.any():
        raise ConfigError(
            f"time cut {cut!r} leaves the training part empty: the first event is at "
            f"{ts.min():.10g} and the cut at {t_cut:.10g}"
        )
    if is_train.all():
        raise ConfigError(
            f"time cut {cut!r} leaves nothing to test: the last event is at {ts.max():.10g}, "
            f"before the cut at {t_cut:.10g}"
        )
    train = inter[is_train]
    after = inter[~is_train]
    counts = np.bincount(train["user"].to_numpy(np.int64), minlength=data.n_users)
    returning = counts[after["user"].to_numpy(np.int64)] >= min_train
    fresh = ~np.isin(_pairs(after, data.n_items), _pairs(train, data.n_items))
    test = after.loc[returning & fresh, ["user", "item"]].reset_index(drop=True)
    if len(test) == 0:
        raise ConfigError(
            f"time cut {cut!r} leaves no test events: of the {len(after)} event(s) at or after "
            f"{t_cut:.10g}, none is by a user with >= {min_train} training event(s) on an item "
            "new to that user"
        )
    trained = np.unique(train["item"].to_numpy(np.int64))
    new_items = np.setdiff1d(np.unique(test["item"].to_numpy(np.int64)), trained)
    return Split(
        f"time-{label}", data.with_interactions(train), test, new_items=new_items
    )


def rolling_time_splits(
    data: Dataset, cuts: Sequence[float | str] = (0.7, 0.8, 0.9), *, min_train: int = 1
) -> list[Split]:
    """Rolling-origin evaluation: one ``time_split`` per cut (the caller averages the figures)."""
    if isinstance(cuts, str) or len(cuts) == 0:
        raise ConfigError(f"cuts must be a non-empty sequence of time cuts, got {cuts!r}")
    return [time_split(data, c, min_train=min_train) for c in cuts]


# --------------------------------------------------------------------------- per-user
def temporal_split(data: Dataset, test_ratio: float = 0.2, min_train: int = 1) -> Split:
    """Each user's last ``test_ratio`` share of interactions (by time) goes to test."""
    test_ratio = _check_ratio(test_ratio, "test_ratio")
    _require_time(data, "temporal")
    inter = data.interactions.sort_values(["user", "timestamp"], kind="stable")
    pos, n = _rank_within_user(inter)
    is_test = pos >= n - _n_test(n, test_ratio, min_train)
    return Split(
        f"temporal-{test_ratio:g}",
        data.with_interactions(inter[~is_test]),
        inter.loc[is_test, ["user", "item"]].reset_index(drop=True),
    )


def leave_last_out(data: Dataset, min_train: int = 1) -> Split:
    """Each user's last interaction goes to test (users with > ``min_train`` interactions)."""
    _require_time(data, "loo")
    inter = data.interactions.sort_values(["user", "timestamp"], kind="stable")
    pos, n = _rank_within_user(inter)
    is_test = (pos == n - 1) & (n > min_train)
    return Split(
        "loo",
        data.with_interactions(inter[~is_test]),
        inter.loc[is_test, ["user", "item"]].reset_index(drop=True),
    )


def random_split(
    data: Dataset, test_ratio: float = 0.2, seed: int = 42, *, min_train: int = 1
) -> Split:
    """A random ``test_ratio`` share of each user's interactions goes to test.

    For data without time.  Per user floor(n * ratio) events are held out (as in
    ``temporal_split``), never leaving fewer than ``min_train`` in train; ``seed`` fixes which.
    """
    test_ratio = _check_ratio(test_ratio, "test_ratio")
    min_train = _check_min_train(min_train)
    rng = np.random.default_rng(seed)
    inter = data.interactions.assign(_key=rng.random(len(data.interactions)))
    inter = inter.sort_values(["user", "_key"], kind="stable").drop(columns="_key")
    pos, n = _rank_within_user(inter)
    is_test = pos < _n_test(n, test_ratio, min_train)
    # back to the Dataset's own row order (user, then time), which the shuffle disturbed
    return Split(
        f"random-{test_ratio:g}",
        data.with_interactions(inter[~is_test].sort_index()),
        inter.loc[is_test, ["user", "item"]].sort_index().reset_index(drop=True),
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


# --------------------------------------------------------------------------- by name
def _check_kwargs(protocol: str, kwargs: dict[str, Any]) -> None:
    if protocol not in _PROTOCOL_KWARGS:
        raise ConfigError(f"unknown protocol {protocol!r}; valid: {', '.join(PROTOCOLS)}")
    bad = sorted(set(kwargs) - set(_PROTOCOL_KWARGS[protocol]))
    if bad:
        allowed = ", ".join(_PROTOCOL_KWARGS[protocol])
        raise ConfigError(
            f"protocol {protocol!r} does not take {', '.join(repr(b) for b in bad)}; "
            f"it takes: {allowed}"
        )


def make_split(data: Dataset, protocol: str, **kwargs: Any) -> Split:
    """Split by protocol name, passing ``kwargs`` to its function.

    ``time`` (cut, min_train), ``temporal`` (test_ratio, min_train), ``loo`` (min_train),
    ``cold-items`` (item_share, seed), ``random`` (test_ratio, seed, min_train).
    """
    _check_kwargs(protocol, kwargs)
    if protocol == "time":
        return time_split(data, **kwargs)
    if protocol == "temporal":
        return temporal_split(data, **kwargs)
    if protocol == "loo":
        return leave_last_out(data, **kwargs)
    if protocol == "random":
        return random_split(data, **kwargs)
    return cold_item_split(data, **kwargs)


def validation_split(train: Dataset, protocol: str, **kwargs: Any) -> Split:
    """Carve a validation split out of a training Dataset by the same protocol.

    Only ``train``'s interactions are split, so tuning on the result never sees the test
    part.  Defaults: ``time`` cuts at the 0.8 quantile of the training events, ``temporal``
    and ``random`` hold out 0.2 per user, ``loo`` the last event; kwargs as in ``make_split``.
    """
    inner = make_split(train, protocol, **kwargs)
    return dataclasses.replace(inner, name=f"validation-{inner.name}")
