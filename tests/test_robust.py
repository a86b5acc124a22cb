"""The fit-time profile defence: known answers on synthetic data with injected fake profiles."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from serendip.component import make_config
from serendip.data import Dataset
from serendip.errors import ConfigError
from serendip.models import EASE
from serendip.robust import ProfileDefense
from serendip.types import Query

N_GENUINE, N_ITEMS, N_FAKE = 300, 120, 15
TARGET = 119  # a tail item


def _genuine_rows(rng: np.random.Generator) -> list[tuple[str, str, float]]:
    """Four taste communities of 30 items; popularity falls within each (Zipf-like); the
    target is held by two genuine users only."""
    rows = []
    for u in range(N_GENUINE):
        block = u % 4
        n = int(rng.integers(10, 21))
        own = block * 30 + np.arange(30)
        own = own[own != TARGET]
        p = 1.0 / np.arange(1, own.size + 1)
        p /= p.sum()
        mine = rng.choice(own, size=int(n * 0.8), replace=False, p=p)
        others = rng.choice(np.setdiff1d(np.arange(N_ITEMS - 1), own), size=n - mine.size,
                            replace=False)
        t0 = float(rng.integers(0, 10**7))
        gaps = rng.exponential(86_400.0, size=n)
        chosen = np.concatenate([mine, others])
        if u in (3, 7):  # the target's only genuine audience
            chosen[-1] = TARGET
        for i, ts in zip(chosen, t0 + np.cumsum(gaps), strict=True):
            rows.append((f"u{u}", f"i{i}", float(ts)))
    return rows


def _fake_rows(rng: np.random.Generator, n_fake: int = N_FAKE
               ) -> list[tuple[str, str, float]]:
    """Near-duplicate profiles from one script: the same filler (the head of community 0, to
    reach its members) plus the target, each fake dropping one filler item at random (so no
    two are exactly equal)."""
    filler = np.arange(16)
    rows = []
    for f in range(n_fake):
        items = np.append(np.delete(filler, int(rng.integers(filler.size))), TARGET)
        t0 = float(rng.integers(0, 10**7))
        for i, ts in zip(items, t0 + np.cumsum(rng.exponential(86_400.0, items.size)),
                         strict=True):
            rows.append((f"fake{f}", f"i{i}", float(ts)))
    return rows


def _dataset(rows: list[tuple[str, str, float]]) -> Dataset:
    items = pd.DataFrame({"item_id": [f"i{i}" for i in range(N_ITEMS)]})
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    return Dataset.from_frames(inter, items)


@pytest.fixture(scope="module")
def clean() -> Dataset:
    return _dataset(_genuine_rows(np.random.default_rng(0)))


@pytest.fixture(scope="module")
def attacked() -> Dataset:
    rng = np.random.default_rng(0)
    return _dataset(_genuine_rows(rng) + _fake_rows(np.random.default_rng(7)))


def _is_fake(data: Dataset) -> np.ndarray:
    return np.array([str(u).startswith("fake") for u in data.user_ids])


def test_flags_the_injected_near_duplicates_and_few_genuine_users(attacked):
    res = ProfileDefense().detect(attacked)
    fake = _is_fake(attacked)
    assert res.suspicious[fake].all()
    assert res.suspicious[~fake].mean() <= 0.03
    # the near-duplicates are what DegSim sees: every fake's neighbours are the other fakes
    assert res.features["degsim"][fake].min() > np.percentile(res.features["degsim"][~fake], 99)
    assert (res.weights[fake] == 0).all() and (res.weights[~res.suspicious] == 1).all()
    assert res.scores.shape == (attacked.n_users,)


def test_clean_data_loses_few_users(clean):
    res = ProfileDefense().detect(clean)
    assert res.suspicious.mean() <= 0.03


def test_apply_removes_the_fakes_influence_on_the_target(clean, attacked):
    defense = ProfileDefense()
    defended = defense.apply(attacked)
    fake = _is_fake(attacked)
    assert defended.n_users == attacked.n_users  # same vocabulary: indices unchanged
    kept_users = set(defended.interactions["user"].unique())
    assert not kept_users & set(np.flatnonzero(fake))
    target = attacked.item_numbers([f"i{TARGET}"])[0]

    def target_rank(train: Dataset) -> float:
        m = EASE(l2=50.0)
        m.train(train)
        ranks = []
        for u in np.flatnonzero(~fake)[::4]:  # community 0, the one attacked
            h = attacked.history(int(u))
            s = m.score(Query(int(u), h))
            s[h] = -np.inf
            ranks.append(1 + np.sum(s > s[target]))
        return float(np.mean(ranks))

    clean_rank = target_rank(_dataset(_genuine_rows(np.random.default_rng(0))))
    attacked_rank = target_rank(attacked)
    defended_rank = target_rank(defended)
    assert attacked_rank < clean_rank - 20  # the attack works without the defence
    assert defended_rank == pytest.approx(clean_rank, abs=3)  # and is undone with it


def test_burst_accounts_stand_out():
    rng = np.random.default_rng(1)
    rows = _genuine_rows(rng)
    for b in range(10):  # 30 events within 30 seconds each
        items = rng.choice(N_ITEMS - 1, size=30, replace=False)
        rows += [(f"bot{b}", f"i{i}", 5e6 + s) for s, i in enumerate(items)]
    data = _dataset(rows)
    res = ProfileDefense().detect(data)
    bot = np.array([str(u).startswith("bot") for u in data.user_ids])
    burst = res.features["burst"]
    assert burst[bot].min() > np.percentile(burst[~bot], 99)
    assert res.suspicious[bot].all()


def test_features_follow_the_data():
    # no time and no ratings: neither burst nor rdma is computed
    inter = pd.DataFrame({"user_id": [f"u{u}" for u in range(40) for _ in range(6)],
                          "item_id": [f"i{(u * 7 + j) % 30}" for u in range(40) for j in range(6)]})
    res = ProfileDefense().detect(Dataset.from_frames(inter))
    assert set(res.features) == {"degsim", "incoherence", "popularity"}


def test_tiny_data_and_short_profiles_are_never_flagged():
    inter = pd.DataFrame({"user_id": ["a", "a", "b", "c"], "item_id": ["x", "y", "x", "z"]})
    data = Dataset.from_frames(inter)
    res = ProfileDefense().detect(data)
    assert not res.suspicious.any()
    assert ProfileDefense().apply(data) is data


def test_config_is_validated():
    with pytest.raises(ConfigError, match="nonsense"):
        make_config(ProfileDefense, {"nonsense": 1}, "defense")
    with pytest.raises(ConfigError, match="bogus"):
        make_config(ProfileDefense, {"feature_weights": {"bogus": 1.0}}, "defense")
    with pytest.raises(ConfigError, match="threshold"):
        make_config(ProfileDefense, {"threshold": -1}, "defense")


def test_the_defence_through_fit_config_keeps_flagged_users_own_lists(attacked):
    """``FitConfig(defense={})``: the fakes stop pushing their target to genuine users, and a
    flagged user is still served from their own history."""
    from serendip.pipeline import FitConfig, Preset, Recommender

    rng = np.random.default_rng(3)
    vec = rng.normal(size=(attacked.n_items, 8)).astype(np.float32)
    data = attacked.with_item_vectors(vec / np.linalg.norm(vec, axis=1, keepdims=True))
    models = {"popularity": {}, "ease": {"l2": 50.0}}
    plain = Recommender.fit(data, FitConfig(models=models), progress=False)
    guarded = Recommender.fit(data, FitConfig(models=models, defense={}), progress=False)
    fake = _is_fake(data)
    target = data.item_numbers([f"i{TARGET}"])[0]

    def mean_rank(rec: Recommender) -> float:
        ranks = []
        for u in np.flatnonzero(~fake)[::4]:
            h = data.history(int(u))
            row = rec.scorers["ease"].score_many([Query(int(u), h)])[0]
            row[h] = -np.inf
            ranks.append(1 + np.sum(row > row[target]))
        return float(np.mean(ranks))

    assert mean_rank(guarded) > mean_rank(plain) + 20  # pushed back down
    one = int(np.flatnonzero(fake)[0])
    lst = guarded.pipeline(Preset(name="p", blend={"ease": 1.0})).recommend(
        Query(one, data.history(one)), k=3)
    assert len(lst) == 3 and not set(lst.items) & set(data.history(one))
    with pytest.raises(ValueError, match="defense.no_such_setting"):
        FitConfig(defense={"no_such_setting": 1})
