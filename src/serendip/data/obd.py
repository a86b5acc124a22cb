"""Open Bandit Dataset (Saito et al. 2021, arXiv:2008.07146): the sample shipped in obp's wheel.

ZOZOTOWN fashion recommendations logged by a uniform-random and a Bernoulli Thompson
sampling ("bts") policy, three slots per impression, click rewards. The files are read; the
obp package is never imported (its ``__init__`` pulls in plotting libraries).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from serendip.errors import ConfigError, DataError

if TYPE_CHECKING:  # imported where used: serendip.explore builds on serendip.data
    from serendip.explore.log import BanditLog

__all__ = ["load_open_bandit", "find_open_bandit", "OBD_POLICIES", "OBD_CAMPAIGNS"]

OBD_POLICIES = ("random", "bts")
OBD_CAMPAIGNS = ("all", "men", "women")
_N_POSITIONS = 3  # ZOZOTOWN shows three items per impression (left, centre, right)
_USER_FEATURES = [f"user_feature_{i}" for i in range(4)]
_ITEM_CATEGORICAL = [f"item_feature_{i}" for i in range(1, 4)]
_INSTALL = (
    "install it with `pip install --no-deps obp==0.4.1` or pass the folder holding random/ "
    "and bts/ as `directory`"
)


def find_open_bandit() -> Path:
    """The ``obd`` folder inside the installed obp package (located, never imported)."""
    spec = importlib.util.find_spec("obp")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            f"Open Bandit Dataset not found (no obp package): {_INSTALL}"
        )
    d = Path(next(iter(spec.submodule_search_locations))) / "dataset" / "obd"
    if not d.is_dir():
        raise DataError(f"Open Bandit Dataset missing in {str(d)!r}: {_INSTALL}")
    return d


def _campaign_dir(directory: Path, policy: str, campaign: str) -> Path:
    """Accept the obd root (``<dir>/<policy>/<campaign>/``) or the campaign folder itself."""
    for d in (directory / policy / campaign, directory):
        if (d / f"{campaign}.csv").is_file() and (d / "item_context.csv").is_file():
            return d
    raise DataError(
        f"no Open Bandit Dataset files in {str(directory)!r}: expected "
        f"{policy}/{campaign}/{campaign}.csv and item_context.csv there (or {campaign}.csv "
        f"and item_context.csv in the folder itself); {_INSTALL}"
    )


def _one_hot(frame: pd.DataFrame, columns: list[str]) -> np.ndarray:
    """One column per (feature, value), values in sorted order so the layout is stable."""
    blocks = []
    for c in columns:
        values = frame[c].astype(str).to_numpy()
        cats = np.unique(values)
        blocks.append((values[:, None] == cats[None, :]).astype(np.float64))
    return np.hstack(blocks) if blocks else np.zeros((len(frame), 0))


def _require(frame: pd.DataFrame, columns: list[str], path: Path) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"{str(path)!r} lacks column(s) {', '.join(missing)}")


def load_open_bandit(
    policy: str = "random", campaign: str = "all", directory: str | Path | None = None
) -> BanditLog:
    """One OBD log as a BanditLog: 0-based items and slots, clicks as rewards.

    Context: one-hot user features 0-3 then the user-item affinities (one per item); action
    context: item_feature_0 then one-hot item features 1-3; timestamps in epoch seconds.
    """
    if policy not in OBD_POLICIES:
        raise ConfigError(f"unknown OBD policy {policy!r}; valid: {', '.join(OBD_POLICIES)}")
    if campaign not in OBD_CAMPAIGNS:
        raise ConfigError(f"unknown OBD campaign {campaign!r}; valid: {', '.join(OBD_CAMPAIGNS)}")
    root = Path(directory) if directory is not None else find_open_bandit()
    d = _campaign_dir(root, policy, campaign)
    log_path, item_path = d / f"{campaign}.csv", d / "item_context.csv"
    rounds = pd.read_csv(log_path, index_col=0)
    items = pd.read_csv(item_path, index_col=0)
    _require(
        rounds, ["timestamp", "item_id", "position", "click", "propensity_score", *_USER_FEATURES],
        log_path,
    )
    _require(items, ["item_id", "item_feature_0", *_ITEM_CATEGORICAL], item_path)
    if len(rounds) == 0:
        raise DataError(f"{str(log_path)!r} holds no rounds")

    items = items.sort_values("item_id", kind="stable").reset_index(drop=True)
    n_actions = len(items)
    if not np.array_equal(items["item_id"].to_numpy(), np.arange(n_actions)):
        raise DataError(f"{str(item_path)!r}: item_id must be 0..{n_actions - 1}, each once")
    affinity = [f"user-item_affinity_{i}" for i in range(n_actions)]
    _require(rounds, affinity, log_path)

    timestamp = pd.to_datetime(rounds["timestamp"], utc=True, format="ISO8601")
    seconds = (timestamp - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)
    context = np.hstack(
        [_one_hot(rounds, _USER_FEATURES), rounds[affinity].to_numpy(dtype=np.float64)]
    )
    action_context = np.hstack(
        [items[["item_feature_0"]].to_numpy(dtype=np.float64), _one_hot(items, _ITEM_CATEGORICAL)]
    )
    from serendip.explore.log import BanditLog

    return BanditLog(
        action=rounds["item_id"].to_numpy(),
        reward=rounds["click"].to_numpy(dtype=np.float64),
        pscore=rounds["propensity_score"].to_numpy(dtype=np.float64),
        n_actions=n_actions,
        position=rounds["position"].to_numpy() - 1,
        n_positions=_N_POSITIONS,
        context=context,
        action_context=action_context,
        timestamp=seconds.to_numpy(dtype=np.float64),
    )
