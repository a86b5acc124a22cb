"""LinearTS: features by hand, learning a known preference, propensities, persistence."""

from __future__ import annotations

import numpy as np
import pytest

from serendip.errors import ConfigError, DataError
from serendip.explore.bandit import FEATURES, LinearTS
from serendip.types import ItemList, Query
from tests.conftest import make_blocks


@pytest.fixture(scope="module")
def data():
    return make_blocks(n_users=40, n_items=20)


def bandit(data, **cfg) -> LinearTS:  # type: ignore[no-untyped-def]
    b = LinearTS({"seed": 0, **cfg})
    b.train(data)
    return b


def test_features_by_hand(data):
    b = bandit(data)
    cands = ItemList(np.array([0, 11, 5]), np.array([2.0, 0.0, 1.0]))
    x = b.features(Query(None), cands)
    assert x.shape == (3, len(FEATURES))
    np.testing.assert_allclose(x[:, 0], 1.0)
    np.testing.assert_allclose(x[:, 1], [1.0, 0.0, 0.5])  # min-max relevance
    np.testing.assert_allclose(x[:, 2], 0.5)  # no history: neutral unexpectedness
    pop = data.item_popularity[[0, 11, 5]]
    info = -np.log2(np.maximum(pop, 1) / data.n_users)
    full = -np.log2(np.maximum(data.item_popularity, 1) / data.n_users)
    np.testing.assert_allclose(x[:, 3], info / full.max())
    # a block-A history: the block-B item is the unexpected one
    xa = b.features(Query(0, data.history(0)), cands)
    assert xa[1, 2] > 0.4 > xa[0, 2]
    assert set(np.unique(x[:, 4])) <= {0.0, 1.0}


def test_learns_a_known_preference_and_follows_it(data):
    """Users reward only block-B items (indices 10..19); relevance says block A."""
    b = bandit(data, noise=0.2, prior_mean={})  # no head start: learn from scratch
    scores = np.where(np.arange(20) < 10, 1.0, 0.0) + np.linspace(0, 0.1, 20)
    cands = ItemList(np.arange(20), scores)
    q = Query(0, data.history(0))  # a block-A history: block B is unexpected
    for _ in range(300):
        shown = b(q, cands, 3)
        b.update(shown.fields["features"], (shown.items >= 10).astype(float))
    w = b.weights()
    assert w["unexpectedness"] > 0 > w["relevance"]
    late = [b(q, cands, 3).items for _ in range(50)]
    assert np.mean([np.mean(s >= 10) for s in late]) > 0.9


def two_candidates(data, p_first: float, **cfg):  # type: ignore[no-untyped-def]
    """A bandit and two candidates where candidate 0 wins slot 1 with known probability
    ``p_first``: with posterior N(m, I), the score gap is normal with mean delta . m and sd
    |delta|, so P = Phi(delta . m / |delta|)."""
    from scipy.stats import norm

    b = bandit(data, noise=1.0, prior=1.0, **cfg)
    cands = ItemList(np.array([0, 11]), np.array([1.0, 0.0]))
    x = b.features(Query(None), cands)
    delta = x[0] - x[1]
    m = norm.ppf(p_first) * delta / np.linalg.norm(delta)
    b.set_statistics(np.eye(len(FEATURES)), m)  # mean A^-1 b = m, covariance noise^2 I
    return b, cands


def test_propensities_give_unbiased_inverse_weights(data):
    """IPS of 'candidate c in slot 1' with reward 1 is exactly 1 in expectation when
    1 / propensity is unbiased for 1 / p, for either candidate."""
    b, cands = two_candidates(data, 0.35)
    n = 3000
    weights = np.zeros((n, 2))
    for t in range(n):
        shown = b(Query(None), cands, 2)
        first = int(shown.items[0] == 11)
        weights[t, first] = 1.0 / shown.fields["propensity"][0]
    for c, p in ((0, 0.35), (1, 0.65)):
        w = weights[:, c]
        assert np.mean(w > 0) == pytest.approx(p, abs=0.04)  # the list follows the posterior
        se = w.std() / np.sqrt(n)
        assert abs(w.mean() - 1.0) < 4 * se, (c, w.mean(), se)


def test_a_capped_count_is_biased_low_by_the_documented_factor(data):
    """With at most ``samples`` = M fresh draws, E[1 / propensity] = (1 - (1 - p)^M) / p: the
    bias the old 'share of 200 draws' estimate had with M = 200."""
    b, cands = two_candidates(data, 0.35, samples=2)
    n = 4000
    w = np.zeros(n)
    for t in range(n):
        shown = b(Query(None), cands, 2)
        if shown.items[0] == 0:
            w[t] = 1.0 / shown.fields["propensity"][0]
    expected = 1 - (1 - 0.35) ** 2  # 0.5775, not 1
    assert w.mean() == pytest.approx(expected, abs=4 * w.std() / np.sqrt(n))
    assert abs(w.mean() - 1.0) > 0.3


def test_propensities_are_positive_and_exact_when_certain(data):
    b = bandit(data, noise=1.0)
    cands = ItemList(np.arange(20), np.linspace(1, 0, 20))
    p = b(Query(None), cands, 4).fields["propensity"]
    assert ((p > 0) & (p <= 1)).all()
    # a posterior concentrated on relevance: the list is the relevance order, propensity 1
    sure = bandit(data, prior=1e6, noise=1e-4)
    sure._state["b"][:] = np.array([0, 1e6, 0, 0, 0])
    out = sure(Query(None), cands, 3)
    assert out.items.tolist() == [0, 1, 2] and out.fields["propensity"].tolist() == [1.0] * 3


def test_update_checks_and_persistence(data, tmp_path):
    b = bandit(data)
    with pytest.raises(DataError, match=r"n x 5 features"):
        b.update(np.ones((2, 3)), np.ones(2))
    with pytest.raises(DataError, match="finite"):
        b.update(np.full((1, 5), np.nan), np.ones(1))
    with pytest.raises(ConfigError, match="k must be a positive integer, got 0"):
        b(Query(None), ItemList(np.arange(3), np.ones(3)), 0)
    b.update(np.ones((4, 5)), np.array([1.0, 0.0, 1.0, 1.0]))
    b.save(tmp_path / "ts")
    back = LinearTS.load(tmp_path / "ts")
    assert back.weights() == pytest.approx(b.weights())


def test_the_prior_mean_is_where_learning_starts(data):
    cands = ItemList(np.arange(20), np.linspace(1, 0, 20))
    b = bandit(data, prior=1e4, noise=1e-3)  # default prior: relevance weight 1
    assert b.weights()["relevance"] == pytest.approx(1.0)
    assert b(Query(None), cands, 3).items.tolist() == [0, 1, 2]  # the blend's order at first
    with pytest.raises(ConfigError, match="unknown features.*'charm'"):
        LinearTS({"prior_mean": {"charm": 1.0}})
    b.credit(np.ones((2, 5)))  # two rewards for slots counted as shown
    a, bb = b.statistics()
    assert bb[1] == pytest.approx(1e4 + 2)
    fresh = bandit(data)
    fresh.set_statistics(a, bb)
    assert fresh.weights() == pytest.approx(b.weights())
    with pytest.raises(DataError, match="5x5"):
        fresh.set_statistics(np.eye(3), np.zeros(3))
    items, probs = b.slot_distribution(Query(None), cands, 3)
    np.testing.assert_allclose(probs.sum(axis=0), 1.0)
    assert items.tolist() == list(range(20)) and probs.shape == (20, 3)
