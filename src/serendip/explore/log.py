"""BanditLog: rounds logged by a policy (context, chosen action, slot, reward, propensity).

The logging policy's propensity of each logged action is what makes off-policy evaluation
possible (``serendip.explore.ope``), so a log is validated once, on construction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from serendip.errors import ConfigError, DataError

__all__ = ["BanditLog"]

# Default of the optional arrays: ``None`` means "fill in on construction" (see BanditLog).
_FILL: Any = None


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.array(a, copy=True)
    a.setflags(write=False)
    return a


def _as_index(name: str, values: object, n: int, upper: int) -> np.ndarray:
    """Integer indices in [0, upper), refusing fractional floats instead of truncating them."""
    a = np.asarray(values)
    if a.ndim != 1 or a.shape[0] != n:
        raise DataError(f"BanditLog.{name} must have shape ({n},), got {a.shape}")
    if a.dtype.kind == "f":
        fractional = ~np.isfinite(a) | (a != np.round(a))
        if fractional.any():
            i = int(np.flatnonzero(fractional)[0])
            raise DataError(f"BanditLog.{name}[{i}] = {a[i]} is not an integer")
    elif a.dtype.kind not in "iu":
        raise DataError(f"BanditLog.{name} must hold integers, got dtype {a.dtype}")
    a = a.astype(np.int64)
    out = (a < 0) | (a >= upper)
    if out.any():
        i = int(np.flatnonzero(out)[0])
        raise DataError(f"BanditLog.{name}[{i}] = {a[i]} is outside [0, {upper})")
    return a


def _as_float(name: str, values: object, shape: tuple[int, ...]) -> np.ndarray:
    a = np.asarray(values, dtype=np.float64)
    if a.shape != shape:
        raise DataError(f"BanditLog.{name} must have shape {shape}, got {a.shape}")
    bad = ~np.isfinite(a)
    if bad.any():
        i = tuple(int(x) for x in np.argwhere(bad)[0])
        raise DataError(f"BanditLog.{name}{list(i)} = {a[i]} is not finite")
    return a


@dataclass(frozen=True, eq=False, kw_only=True)
class BanditLog:
    """One row per round: the logging policy showed ``action`` at ``position`` in ``context``.

    ``pscore`` is the logging policy's probability of that action at that position. Only
    ``action``, ``reward``, ``pscore`` and ``n_actions`` are required; a log without contexts
    gets zero-width ones, a single slot by default, and round numbers as timestamps. Arrays
    are copied and made read-only, so a log never changes after validation.

    ``cluster`` (optional, one non-negative integer per round) says which rounds are not independent of
    each other, typically the slots and lists shown to one user: standard errors and bootstrap
    intervals treat a cluster as the unit of sampling. By default every round is its own
    cluster.
    """

    action: np.ndarray
    reward: np.ndarray
    pscore: np.ndarray
    n_actions: int
    position: np.ndarray = _FILL
    n_positions: int = 1
    context: np.ndarray = _FILL
    action_context: np.ndarray = _FILL
    timestamp: np.ndarray = _FILL
    cluster: np.ndarray = _FILL

    def __post_init__(self) -> None:
        for name in ("n_actions", "n_positions"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 1:
                raise DataError(f"BanditLog.{name} must be a positive integer, got {v!r}")
            object.__setattr__(self, name, int(v))
        action = np.asarray(self.action)
        if action.ndim != 1:
            raise DataError(f"BanditLog.action must be one-dimensional, got shape {action.shape}")
        n = action.shape[0]
        set_ = object.__setattr__
        set_(self, "action", _frozen(_as_index("action", action, n, self.n_actions)))
        position = np.zeros(n, dtype=np.int64) if self.position is None else self.position
        set_(self, "position", _frozen(_as_index("position", position, n, self.n_positions)))
        set_(self, "reward", _frozen(_as_float("reward", self.reward, (n,))))
        pscore = _as_float("pscore", self.pscore, (n,))
        bad = (pscore <= 0.0) | (pscore > 1.0)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(f"BanditLog.pscore[{i}] = {pscore[i]} is outside (0, 1]")
        set_(self, "pscore", _frozen(pscore))
        context = np.zeros((n, 0)) if self.context is None else np.asarray(self.context)
        if context.ndim != 2:
            raise DataError(
                f"BanditLog.context must be 2-D (rounds x features), got shape {context.shape}"
            )
        set_(self, "context", _frozen(_as_float("context", context, (n, context.shape[1]))))
        ac = (
            np.zeros((self.n_actions, 0))
            if self.action_context is None
            else np.asarray(self.action_context)
        )
        if ac.ndim != 2:
            raise DataError(
                f"BanditLog.action_context must be 2-D (actions x features), got shape {ac.shape}"
            )
        ac = _as_float("action_context", ac, (self.n_actions, ac.shape[1]))
        set_(self, "action_context", _frozen(ac))
        ts = np.arange(n, dtype=np.float64) if self.timestamp is None else self.timestamp
        set_(self, "timestamp", _frozen(_as_float("timestamp", ts, (n,))))
        cluster = np.arange(n, dtype=np.int64) if self.cluster is None else self.cluster
        set_(self, "cluster", _frozen(_as_index("cluster", cluster, n, np.iinfo(np.int64).max)))

    def __len__(self) -> int:
        return int(self.action.shape[0])

    def take(self, rows: np.ndarray) -> BanditLog:
        """The rounds ``rows`` (indices or a boolean mask), with the same actions and slots."""
        return BanditLog(
            action=self.action[rows],
            reward=self.reward[rows],
            pscore=self.pscore[rows],
            n_actions=self.n_actions,
            position=self.position[rows],
            n_positions=self.n_positions,
            context=self.context[rows],
            action_context=self.action_context,
            timestamp=self.timestamp[rows],
            cluster=self.cluster[rows],
        )

    @property
    def n_clusters(self) -> int:
        """How many distinct clusters (e.g. users) the rounds come from."""
        return int(np.unique(self.cluster).size)

    def split(self, train_share: float = 0.5) -> tuple[BanditLog, BanditLog]:
        """The earliest ``train_share`` of rounds by timestamp, and the rest (ties by row)."""
        if not 0.0 < train_share < 1.0:
            raise ConfigError(f"train_share must be in (0, 1), got {train_share}")
        n = len(self)
        n_train = int(np.floor(n * train_share + 1e-9))
        if n_train < 1 or n_train >= n:
            raise DataError(
                f"train_share {train_share} of {n} rounds leaves one side empty; "
                "use a share between 1/n and 1 - 1/n"
            )
        order = np.argsort(self.timestamp, kind="stable")
        return self.take(order[:n_train]), self.take(order[n_train:])
