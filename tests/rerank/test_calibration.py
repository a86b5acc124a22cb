"""Calibration (Steck 2018): the KL of the list's genre mix goes down against the top-k."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from serendip.data import Dataset
from serendip.rerank import Calibration
from serendip.rerank.calibration import kl_divergence
from serendip.types import ItemList, Query
from tests.conftest import make_blocks


def list_kl(genres: np.ndarray, history: np.ndarray, items: np.ndarray, alpha: float = 0.01) -> float:
    p = genres[history].sum(axis=0)
    p = p / p.sum()
    q = genres[items].sum(axis=0)
    q = q / q.sum() if q.sum() > 0 else q
    return float(kl_divergence(p, q, alpha)[0])


def test_kl_hand_computed() -> None:
    p = np.array([0.5, 0.5, 0.0])
    q = np.array([1.0, 0.0, 0.0])
    expect = 0.5 * math.log(0.5 / 0.995) + 0.5 * math.log(0.5 / 0.005)
    assert math.isclose(kl_divergence(p, q, 0.01)[0], expect, rel_tol=1e-12)
    assert kl_divergence(p, p, 0.01)[0] == 0.0


def mixed_history() -> np.ndarray:
    data = make_blocks()
    return np.r_[data.history(0)[:3], 15]  # 75% A, 25% B


def a_first() -> ItemList:
    return ItemList(np.arange(20), np.r_[np.linspace(2.0, 1.6, 10), np.linspace(1.0, 0.0, 10)])


def test_moves_genre_mix_toward_history() -> None:
    data = make_blocks()
    r = Calibration(strength=1.0)
    r.train(data)
    genres = r._rows("genres").toarray()
    hist = mixed_history()
    cand = a_first().exclude(hist)
    plain = r(Query(0, hist, discovery=0.0), cand, 6)
    assert not (plain.items >= 10).any()  # all block A: KL(p || q~) is large
    calibrated = r(Query(0, hist, discovery=0.8), cand, 6)
    assert list_kl(genres, hist, calibrated.items) < list_kl(genres, hist, plain.items) / 10
    assert (calibrated.items >= 10).any()
    b_reasons = [rs[-1] for i, rs in zip(calibrated.items, calibrated.reasons, strict=True) if i >= 10]
    assert b_reasons[0] == "brings back your interest in B (1 of the 4 you chose)"


def test_each_step_is_the_greedy_argmax() -> None:
    data = make_blocks()
    r = Calibration(strength=0.7)
    r.train(data)
    genres = r._rows("genres").toarray()
    hist = mixed_history()
    rng = np.random.default_rng(5)
    cand = ItemList(rng.permutation(20), rng.normal(size=20)).exclude(hist)
    lam = 0.7
    out = r(Query(0, hist, discovery=1.0), cand, 6)
    order = np.argsort(-cand.scores, kind="stable")
    items = cand.items[order]
    rel = (cand.scores[order] - cand.scores.min()) / np.ptp(cand.scores)
    chosen: list[int] = []
    for _ in range(6):
        before = list_kl(genres, hist, np.array(chosen, dtype=np.int64))
        best = max(
            (i for i in range(items.size) if items[i] not in chosen),
            key=lambda i: (1 - lam) * rel[i]
            - lam * (list_kl(genres, hist, np.array([*chosen, items[i]])) - before),
        )
        chosen.append(int(items[best]))
    np.testing.assert_array_equal(out.items, chosen)


def test_without_categories_returns_top_k() -> None:
    inter = pd.DataFrame({"user_id": ["a", "a", "b", "b"], "item_id": ["x", "y", "z", "w"]})
    data = Dataset.from_frames(inter)
    r = Calibration(strength=1.0)
    r.train(data)
    cand = ItemList(np.array([3, 1, 2, 0]), np.array([0.1, 0.9, 0.5, 0.7]))
    out = r(Query(0, np.array([0, 1]), discovery=1.0), cand, 3)
    np.testing.assert_array_equal(out.items, [1, 0, 2])


def test_calibration_state_on_a_column_subset_matches_the_full_one():
    from serendip.rerank.calibration import CalibrationState

    rng = np.random.default_rng(0)
    genres = rng.random((30, 12)) * (rng.random((30, 12)) < 0.3)
    genres /= np.maximum(genres.sum(axis=1, keepdims=True), 1e-12)
    p = np.zeros(12)
    p[[1, 4, 7]] = [0.5, 0.3, 0.2]
    full = CalibrationState(p, genres, 0.01)
    cols = np.array([1, 4, 7])
    sub = CalibrationState(p[cols], genres[:, cols], 0.01, row_mass=genres.sum(axis=1))
    for j in (3, 11, 20):
        np.testing.assert_allclose(sub.kl_if_added(), full.kl_if_added(), rtol=1e-12)
        kl = full.kl_if_added()[j]
        full.add(j, kl)
        sub.add(j, kl)
        m = full.missing_genre(5)
        assert (m is None and sub.missing_genre(5) is None) or cols[sub.missing_genre(5)] == m


def test_calibration_state_matches_the_kl_formula_for_any_row_mass():
    """Sparse rows, unequal row masses (several normalisers at once): every extension's KL
    is KL(p || (1 - alpha) (mass + x_c) / (total + m_c) + alpha p), computed densely here."""
    import scipy.sparse as sp

    from serendip.rerank.calibration import CalibrationState

    rng = np.random.default_rng(3)
    x = rng.random((25, 9)) * (rng.random((25, 9)) < 0.35)
    mass = x.sum(axis=1) + rng.random(25) * (rng.random(25) < 0.5)  # genres outside p too
    p = np.array([0.3, 0.0, 0.1, 0.2, 0.0, 0.25, 0.15, 0.0, 0.0])
    alpha = 0.02
    cal = CalibrationState(p, sp.csr_matrix(x), alpha, row_mass=mass)
    picked: list[int] = []
    for j in (4, 17, 0, 9):
        m_sum = x[picked].sum(axis=0)
        total = mass[picked].sum()
        expect = []
        for c in range(25):
            t = total + mass[c]
            q = (m_sum + x[c]) / (t if t > 0 else 1.0)
            qt = (1 - alpha) * q + alpha * p
            on = p > 0
            expect.append(float((p[on] * np.log(p[on] / qt[on])).sum()))
        np.testing.assert_allclose(cal.kl_if_added(), expect, rtol=1e-12, atol=1e-14)
        # the genre of item j most short in the list so far, among those of p
        q_now = m_sum / total if total > 0 else m_sum
        deficit = np.where(x[j] > 0, p - q_now, -np.inf)
        want = int(np.argmax(deficit)) if deficit.max() > 0 else None
        assert cal.missing_genre(j) == want
        cal.add(j, float(cal.kl_if_added()[j]))
        picked.append(j)
