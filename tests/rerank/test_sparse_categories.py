"""Category-reading rerankers on sparse structures: same lists as the dense formulas, memory
proportional to the (item, category) pairs, and bounded when the data exceeds the limits."""

from __future__ import annotations

import logging
import tracemalloc

import numpy as np
import pandas as pd
import pytest

from serendip.data import Dataset
from serendip.limits import MAX_CATEGORIES_PER_ITEM, MAX_CATEGORIES_TOTAL
from serendip.rerank import Calibration, MultiObjective
from serendip.rerank.base import GreedyReranker
from serendip.types import ItemList, Query

N_ITEMS, N_USERS, N_GENRES = 160, 90, 45


def catalog(seed: int = 0) -> tuple[Dataset, list[list[str]]]:
    """Items with 0-6 genres of 45 (skewed, so histories span many genres), no vectors."""
    rng = np.random.default_rng(seed)
    names = [f"g{i:02d}" for i in range(N_GENRES)]
    weights = 1.0 / np.arange(1, N_GENRES + 1)
    weights /= weights.sum()
    genres = [
        list(rng.choice(names, size=int(rng.integers(0, 7)), replace=False, p=weights))
        for _ in range(N_ITEMS)
    ]
    items = pd.DataFrame({"item_id": [f"i{i}" for i in range(N_ITEMS)],
                          "genres": [" | ".join(g) for g in genres]})
    users = rng.integers(0, N_USERS, 3000)
    picked = rng.zipf(1.4, 3000) % (N_ITEMS - 10)  # the last 10 items: nobody used them
    inter = pd.DataFrame({"user_id": [f"u{u}" for u in users],
                          "item_id": [f"i{i}" for i in picked],
                          "timestamp": np.arange(3000.0)})
    data = Dataset.from_frames(inter, items)
    assert data.item_vectors is None
    order = [int(i[1:]) for i in data.item_ids]  # item index -> row of ``genres``
    return data, [genres[i] for i in order]


def dense_indicator(genres: list[list[str]]) -> tuple[np.ndarray, list[str]]:
    names = sorted({g for gs in genres for g in gs})
    pos = {n: k for k, n in enumerate(names)}
    x = np.zeros((len(genres), len(names)))
    for i, gs in enumerate(genres):
        x[i, [pos[g] for g in gs]] = 1.0
    return x, names


def candidates(data: Dataset, user: int, seed: int) -> tuple[Query, ItemList, np.ndarray]:
    rng = np.random.default_rng(seed)
    hist = data.history(user)
    items = np.setdiff1d(rng.choice(data.n_items, 80, replace=False), hist)
    scores = rng.normal(size=items.size)
    return Query(user, hist), ItemList(items, scores), hist


def ranked(cand: ItemList) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(-cand.scores, kind="stable")
    s = cand.scores[order]
    return cand.items[order], (s - s.min()) / (s.max() - s.min())


def kl(p: np.ndarray, q: np.ndarray, alpha: float) -> float:
    on = p > 0
    qt = (1 - alpha) * q[on] + alpha * p[on]
    return float((p[on] * np.log(p[on] / qt)).sum())


def dense_calibration(shares: np.ndarray, hist: np.ndarray, items: np.ndarray,
                      rel: np.ndarray, k: int, lam: float, alpha: float) -> list[int]:
    """Steck's greedy calibration on the dense item x genre shares."""
    p = shares[np.unique(hist)].sum(axis=0)
    p = p / p.sum()

    def list_kl(chosen: list[int]) -> float:
        m = shares[chosen].sum(axis=0)
        total = shares[chosen].sum()
        return kl(p, m / total if total > 0 else m, alpha)

    chosen: list[int] = []
    for _ in range(k):
        before = list_kl([int(items[c]) for c in chosen])
        gains = [(1 - lam) * rel[c] - lam * (list_kl([*(int(items[d]) for d in chosen),
                                                     int(items[c])]) - before)
                 if c not in chosen else -np.inf for c in range(items.size)]
        chosen.append(int(np.argmax(gains)))
    return [int(items[c]) for c in chosen]


def dense_multi_objective(data: Dataset, x: np.ndarray, hist: np.ndarray, items: np.ndarray,
                          rel: np.ndarray, k: int, lam: float, r: MultiObjective) -> list[int]:
    """The multi-objective greedy score, from its formula, with dense genre arrays: unit
    genre vectors for diversity and unexpectedness, the 24 largest history genres for the
    calibration term."""
    cfg = r.config
    w = cfg.weights
    counts = x.sum(axis=1, keepdims=True)
    shares = x / np.maximum(counts, 1)
    unit = x / np.sqrt(np.maximum(counts, 1))
    pop = data.item_popularity
    info = -np.log2(np.maximum(pop, 1) / data.n_users)
    novelty = info / info.max()
    n_head = int(np.ceil(cfg.head_share * data.n_items))
    head = np.zeros(data.n_items, dtype=bool)
    head[np.argsort(-pop, kind="stable")[:n_head]] = True
    hist = np.unique(hist)

    p = shares[hist].sum(axis=0)
    p = p / p.sum()
    cols = np.flatnonzero(p)
    cols = np.sort(cols[np.argsort(-p[cols], kind="stable")[:24]])
    pc = p[cols] / p[cols].sum()

    def cal_kl(chosen: list[int]) -> float:
        m = shares[chosen][:, cols].sum(axis=0)
        total = shares[chosen].sum()  # the list's whole genre mass normalises q
        return kl(pc, m / total if total > 0 else m, cfg.alpha)

    wts = np.array([w.relevance, w.novelty, w.tail, w.diversity, w.unexpectedness,
                    w.calibration, w.fresh])
    wts = lam * wts / wts.sum()
    cpop = pop[items]
    nov, tail = novelty[items], (~head[items]).astype(float)
    new = cpop == 0
    nov[new], tail[new] = nov[~new].mean(), tail[~new].mean()
    unexp = np.clip(1 - unit[items] @ unit[hist].mean(axis=0), 0, 1)
    static = ((1 - lam) * rel + wts[0] * rel + wts[1] * nov + wts[2] * tail
              + wts[4] * unexp + wts[6] / (1 + cpop))
    chosen: list[int] = []
    for _ in range(k):
        picked = [int(items[c]) for c in chosen]
        before = cal_kl(picked)
        best, best_val = -1, -np.inf
        for c in range(items.size):
            if c in chosen:
                continue
            sims = [unit[items[c]] @ unit[i] for i in picked]
            div = float(np.clip(1 - max(sims), 0, 1)) if sims else 1.0
            cal = (before - cal_kl([*picked, int(items[c])])) / np.log(1 / cfg.alpha)
            val = static[c] + wts[3] * div + wts[5] * cal
            if val > best_val:
                best, best_val = c, val
        chosen.append(best)
    return [int(items[c]) for c in chosen]


@pytest.mark.parametrize("discovery", [0.5, 1.0])
def test_calibration_lists_equal_the_dense_formula(discovery: float) -> None:
    data, genres = catalog()
    x, _ = dense_indicator(genres)
    shares = x / np.maximum(x.sum(axis=1, keepdims=True), 1)
    r = Calibration(strength=0.9, alpha=0.02)
    r.train(data)
    n_checked = 0
    for user in range(0, data.n_users, 9):
        q, cand, hist = candidates(data, user, seed=user)
        if shares[hist].sum() == 0:
            continue
        items, rel = ranked(cand)
        out = r(Query(q.user, q.history, discovery=discovery), cand, 8)
        lam = 0.9 * discovery
        assert out.items.tolist() == dense_calibration(shares, hist, items, rel, 8, lam, 0.02)
        n_checked += 1
    assert n_checked >= 8


@pytest.mark.parametrize("weights", [{}, {"calibration": 3.0, "diversity": 0.5, "fresh": 0.5}])
def test_multi_objective_lists_equal_the_dense_formula(weights: dict[str, float]) -> None:
    data, genres = catalog(1)
    x, _ = dense_indicator(genres)
    r = MultiObjective(strength=0.8, weights=weights)
    r.train(data)
    n_checked, n_wide = 0, 0
    for user in range(0, data.n_users, 11):
        q, cand, hist = candidates(data, user, seed=100 + user)
        if x[hist].sum() == 0:
            continue
        n_wide += int((x[hist].sum(axis=0) > 0).sum() > 24)
        items, rel = ranked(cand)
        out = r(Query(q.user, q.history, discovery=1.0), cand, 6)
        assert out.items.tolist() == dense_multi_objective(data, x, hist, items, rel, 6, 0.8, r)
        n_checked += 1
    assert n_checked >= 6 and n_wide >= 1  # some histories span more than the 24 genres read


def many_genres_catalog(n_items: int = 1000, per_item: int = 20) -> Dataset:
    """``n_items * per_item`` distinct genres (20,000): each item has its own, plus a few
    shared ones that every tenth item carries."""
    own = [[f"t{i}-{j}" for j in range(per_item)] for i in range(n_items)]
    shared = [[f"common{i // 10 % 5}"] if i % 10 == 0 else [] for i in range(n_items)]
    items = pd.DataFrame({"item_id": [f"i{i}" for i in range(n_items)],
                          "genres": ["|".join(a + b) for a, b in zip(own, shared, strict=True)]})
    rng = np.random.default_rng(0)
    inter = pd.DataFrame({"user_id": [f"u{u}" for u in rng.integers(0, 50, 4000)],
                          "item_id": [f"i{i}" for i in rng.integers(0, n_items, 4000)],
                          "timestamp": np.arange(4000.0)})
    return Dataset.from_frames(inter, items)


def state_bytes(r: GreedyReranker) -> int:
    return sum(a.nbytes for a in r._require_trained().values())


@pytest.mark.parametrize("cls", [Calibration, MultiObjective])
def test_20000_genres_take_memory_proportional_to_the_pairs(cls, caplog) -> None:
    data = many_genres_catalog()
    assert len(data.category_names) > 20_000
    pairs = int(data.item_categories.nnz)
    r = cls()
    with caplog.at_level(logging.WARNING):
        r.train(data)
    assert "MAX_CATEGORIES_TOTAL" in caplog.text
    genres = r._rows("genres")
    assert genres.shape == (data.n_items, MAX_CATEGORIES_TOTAL)
    # the shared genres are the most frequent, so they are kept
    kept = set(r._category_names)
    assert {f"common{i}" for i in range(5)} <= kept and len(kept) == MAX_CATEGORIES_TOTAL
    sparse_bytes = sum(a.nbytes for k, a in r._require_trained().items()
                       if k.startswith(("genres_", "vectors_")))
    assert sparse_bytes <= 2 * 16 * pairs + 2 * 8 * (data.n_items + 1) + 64
    # everything the reranker keeps: far below one dense items x genres array
    assert state_bytes(r) <= 40 * (pairs + data.n_items) + 16 * MAX_CATEGORIES_TOTAL
    assert state_bytes(r) < data.n_items * MAX_CATEGORIES_TOTAL * 4 / 20

    # one request: memory proportional to the candidates' and history's genres
    hist = np.arange(0, 400, 10)  # items carrying a shared genre, and 20 own genres each
    cand = ItemList(np.arange(400, 900), np.linspace(1, 0, 500))
    tracemalloc.start()
    try:
        out = r(Query(0, hist, discovery=1.0), cand, 10)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(out) == 10
    dense_request = cand.items.size * MAX_CATEGORIES_TOTAL * 8
    assert peak < dense_request / 10, peak
    if cls is Calibration:  # the list brings in items with the history's shared genres
        assert (out.items % 10 == 0).sum() > (cand.items[:10] % 10 == 0).sum()


def test_an_item_over_the_per_item_limit_keeps_its_most_frequent_genres(caplog) -> None:
    n = 40
    big = [f"rare{j}" for j in range(80)] + ["pop0", "pop1"]
    items = pd.DataFrame({
        "item_id": [f"i{i}" for i in range(n)],
        "genres": ["|".join(big)] + [f"pop{i % 2}" for i in range(1, n)],
    })
    inter = pd.DataFrame({"user_id": ["a", "a", "b"], "item_id": ["i0", "i1", "i2"]})
    data = Dataset.from_frames(inter, items)
    r = Calibration()
    with caplog.at_level(logging.WARNING):
        r.train(data)
    assert "MAX_CATEGORIES_PER_ITEM" in caplog.text
    genres = r._rows("genres")
    row = genres[0]
    assert row.nnz == MAX_CATEGORIES_PER_ITEM
    kept = {r._category_names[c] for c in row.indices}
    assert {"pop0", "pop1"} <= kept  # the frequent ones, then rare ones in name order
    np.testing.assert_allclose(row.data, 1.0 / MAX_CATEGORIES_PER_ITEM)
    assert genres[1:].nnz == n - 1


def test_state_from_a_dense_genre_matrix_still_loads() -> None:
    """A state saved before the sparse layout (dense genres, a string array of names)."""
    data, genres = catalog()
    r = Calibration(strength=0.9)
    r.train(data)
    x, names = dense_indicator(genres)
    old = Calibration(strength=0.9)
    old._set_state(n_items=np.asarray(data.n_items),
                   genres=(x / np.maximum(x.sum(axis=1, keepdims=True), 1)).astype(np.float32),
                   category_names=np.asarray(names, dtype=np.str_))
    q, cand, _ = candidates(data, 4, seed=4)
    a, b = r(q, cand, 8), old(q, cand, 8)
    assert a.items.tolist() == b.items.tolist()
