"""Differentially private item-item statistics: clipping, noise calibration, EASE and ItemKNN."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from serendip.errors import ConfigError
from serendip.models import EASE, ItemKNN
from serendip.robust import (
    classic_gaussian_sigma,
    clip_rows,
    gaussian_sigma,
    gram_sensitivity,
    private_gram,
    symmetric_noise,
)
from serendip.types import Query
from tests.conftest import make_blocks


def _phi(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def _delta_by_hand(sigma: float, eps: float, sens: float) -> float:
    """Balle & Wang's condition written out with math.erfc (independent of the library)."""
    a, b = sens / (2 * sigma), eps * sigma / sens
    return _phi(a - b) - math.exp(eps) * _phi(-a - b)


def _reference_ease(data, l2: float) -> np.ndarray:
    """EASE written out from the paper: B = I - P diag(1/diag(P)), diag(B) = 0."""
    x = data.matrix.toarray().astype(np.float64)
    p = np.linalg.inv(x.T @ x + l2 * np.eye(x.shape[1]))
    b = np.eye(x.shape[1]) - p / np.diag(p)[None, :]
    np.fill_diagonal(b, 0.0)
    return b.astype(np.float32)


def test_no_epsilon_is_bit_identical_to_plain_ease():
    data = make_blocks()
    m = EASE(l2=3.0)
    m.train(data)
    w = m._require_trained()["weights"]
    x = data.matrix
    g = (x.T @ x).toarray().astype(np.float64)
    g[np.diag_indices_from(g)] += 3.0
    p = np.linalg.inv(g)
    b = -p / np.diag(p)[None, :]
    b[np.diag_indices_from(b)] = 0.0
    assert np.array_equal(w, b.astype(np.float32))
    np.testing.assert_allclose(w, _reference_ease(data, 3.0), atol=1e-6)


def test_no_epsilon_knn_is_unchanged_by_the_new_fields():
    data = make_blocks()
    a, b = ItemKNN(neighbors=5), ItemKNN(neighbors=5, dp_delta=1e-3, dp_clip=2, seed=9)
    a.train(data)
    b.train(data)
    assert np.array_equal(a._require_trained()["similarity"], b._require_trained()["similarity"])


def test_clipping_bounds_each_row_and_keeps_short_rows():
    rng = np.random.default_rng(0)
    dense = (rng.random((30, 40)) < 0.4).astype(np.float32)
    dense[0] = 0
    dense[0, :3] = 1  # a short row
    m = sp.csr_matrix(dense)
    out = clip_rows(m, 5, np.random.default_rng(1))
    counts = np.diff(out.indptr)
    assert counts.max() == 5
    np.testing.assert_array_equal(counts, np.minimum(dense.sum(axis=1), 5))
    # kept entries are a subset of the original ones, all equal to 1
    assert set(out.data) == {1.0}
    assert (out.toarray() <= dense).all()
    np.testing.assert_array_equal(out[0].toarray(), m[0].toarray())


def test_sensitivity_is_the_norm_of_one_clipped_users_contribution():
    for clip in (1, 2, 7, 50):
        x = np.zeros(60)
        x[:clip] = 1
        contribution = np.triu(np.outer(x, x))
        assert gram_sensitivity(clip) == pytest.approx(np.linalg.norm(contribution))
        assert gram_sensitivity(clip) == pytest.approx(math.sqrt(clip * (clip + 1) / 2))


@pytest.mark.parametrize("eps,delta,clip", [(0.5, 1e-6, 10), (1.0, 1e-5, 1), (8.0, 1e-6, 100)])
def test_sigma_matches_the_analytic_gaussian_mechanism(eps, delta, clip):
    sens = math.sqrt(clip * (clip + 1) / 2)
    sigma = gaussian_sigma(eps, delta, sens)
    # the condition holds at sigma and fails just below it: sigma is the smallest such scale
    assert _delta_by_hand(sigma, eps, sens) <= delta * (1 + 1e-6)
    assert _delta_by_hand(sigma * 0.999, eps, sens) > delta
    if eps < 1:
        assert sigma < classic_gaussian_sigma(eps, delta, sens)


def test_classic_formula_by_hand():
    # clip 3: Delta = sqrt(6); eps 0.5, delta 1e-5
    assert classic_gaussian_sigma(0.5, 1e-5, math.sqrt(6)) == pytest.approx(
        math.sqrt(6) * math.sqrt(2 * math.log(1.25e5)) / 0.5)


def test_noise_is_symmetric_with_the_stated_scale():
    z = symmetric_noise(300, 2.5, np.random.default_rng(3))
    assert np.array_equal(z, z.T)
    upper = z[np.triu_indices(300)]
    assert upper.std() == pytest.approx(2.5, rel=0.02)
    assert abs(upper.mean()) < 0.05


def test_private_gram_noise_has_the_calibrated_scale():
    rng = np.random.default_rng(0)
    m = sp.csr_matrix((rng.random((200, 120)) < 0.05).astype(np.float32))
    pg = private_gram(m, epsilon=2.0, delta=1e-6, clip=8, seed=4)
    assert np.array_equal(pg.gram, pg.gram.T)
    assert pg.sensitivity == pytest.approx(6.0)  # sqrt(8 * 9 / 2)
    assert pg.sigma == pytest.approx(gaussian_sigma(2.0, 1e-6, 6.0))
    # the exact clipped Gram with the same sample: the residual is the noise
    x = clip_rows(m, 8, np.random.default_rng(4))
    resid = pg.gram - (x.T @ x).toarray()
    assert np.array_equal(resid, resid.T)
    assert resid[np.triu_indices(120)].std() == pytest.approx(pg.sigma, rel=0.03)
    again = private_gram(m, epsilon=2.0, delta=1e-6, clip=8, seed=4)
    assert np.array_equal(again.gram, pg.gram)
    other = private_gram(m, epsilon=2.0, delta=1e-6, clip=8, seed=5)
    assert not np.array_equal(other.gram, pg.gram)


def test_large_epsilon_approaches_the_exact_model():
    data = make_blocks()
    clip = int(data.user_activity.max())  # nothing is clipped: only the noise differs
    exact = EASE(l2=20.0)
    exact.train(data)
    w0 = exact._require_trained()["weights"]
    errs = []
    for eps in (1.0, 100.0, 5000.0):
        m = EASE(l2=20.0, dp_epsilon=eps, dp_clip=clip, seed=1)
        m.train(data)
        errs.append(float(np.abs(m._require_trained()["weights"] - w0).max()))
    assert errs[0] > errs[1] > errs[2]
    assert errs[2] < 0.01
    # and the private model still ranks a block-A user's unseen block-A items first
    q = Query(0, data.history(0))
    s = m.score(q)
    unseen = np.setdiff1d(np.arange(data.n_items), data.history(0))
    best = unseen[np.argsort(-s[unseen])][:2]
    assert (best < 10).all()


def test_knn_private_is_seeded_and_close_for_large_epsilon():
    data = make_blocks()
    clip = int(data.user_activity.max())
    exact = ItemKNN(neighbors=19)
    exact.train(data)
    a = ItemKNN(neighbors=19, dp_epsilon=5000.0, dp_clip=clip, seed=2)
    b = ItemKNN(neighbors=19, dp_epsilon=5000.0, dp_clip=clip, seed=2)
    a.train(data)
    b.train(data)
    sa = a._require_trained()["similarity"]
    assert np.array_equal(sa, b._require_trained()["similarity"])
    np.testing.assert_allclose(sa, exact._require_trained()["similarity"], atol=0.01)
    noisy = ItemKNN(neighbors=19, dp_epsilon=0.5, dp_clip=clip, seed=2)
    noisy.train(data)
    assert np.abs(noisy._require_trained()["similarity"]
                  - exact._require_trained()["similarity"]).max() > 0.05


def test_clip_reaches_the_private_gram_diagonal():
    # without noise to speak of, the diagonal of the private Gram counts clipped rows
    data = make_blocks()
    pg = private_gram(data.matrix, epsilon=1e4, delta=1e-6, clip=3, seed=0)
    assert pg.clipped_rows == data.n_users  # every user has 8 items
    assert np.trace(pg.gram) == pytest.approx(3 * data.n_users, abs=2.0)


def test_bad_privacy_values_are_refused():
    with pytest.raises(ConfigError, match="dp_epsilon"):
        EASE(dp_epsilon=0.0)
    with pytest.raises(ConfigError, match="dp_delta"):
        EASE(dp_epsilon=1.0, dp_delta=1.5)
    with pytest.raises(ConfigError, match="dp_clip"):
        ItemKNN(dp_epsilon=1.0, dp_clip=0)
    with pytest.raises(ConfigError, match="epsilon"):
        gaussian_sigma(-1.0, 1e-6, 1.0)


def test_private_ease_is_ease_on_the_projected_noisy_gram():
    data = make_blocks()
    m = EASE(l2=20.0, dp_epsilon=3.0, dp_delta=1e-5, dp_clip=4, dp_l2_noise=2.0, seed=6)
    m.train(data)
    pg = private_gram(data.matrix, 3.0, 1e-5, 4, 6)
    w, v = np.linalg.eigh(pg.gram)
    g = (v * np.clip(w, 0.0, None)) @ v.T
    assert np.linalg.eigvalsh(g).min() > -1e-6  # projected onto the PSD matrices
    lam = 20.0 + 2.0 * pg.sigma * math.sqrt(data.n_items)
    p = np.linalg.inv(g + lam * np.eye(data.n_items))
    b = -p / np.diag(p)[None, :]
    np.fill_diagonal(b, 0.0)
    np.testing.assert_allclose(m._require_trained()["weights"], b.astype(np.float32), atol=1e-6)


def test_dp_fields_flow_through_fit_config():
    from serendip.pipeline import FitConfig

    cfg = FitConfig(models={"ease": {"l2": 10.0, "dp_epsilon": 2.0, "dp_clip": 5, "seed": 3}})
    assert cfg.models["ease"]["dp_epsilon"] == 2.0
    with pytest.raises(ValueError, match="models.ease.dp_epsilon"):
        FitConfig(models={"ease": {"dp_epsilon": -1.0}})
