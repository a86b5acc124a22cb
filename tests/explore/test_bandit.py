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
    np.testing.assert_allclose(x[:, 5], 0.0)  # never shown


def test_the_shown_feature_counts_earlier_showings(data):
    """1 - 0.5^n, n the times the candidate appears in the person's recent lists; the other
    columns do not move."""
    b = bandit(data)
    cands = ItemList(np.array([0, 11, 5, 7]), np.array([2.0, 0.0, 1.0, 0.5]))
    q = Query(0, data.history(0), shown=np.array([5, 11, 5, 3, 5, 19]))
    x = b.features(q, cands)
    np.testing.assert_allclose(x[:, FEATURES.index("shown")], [0.0, 0.5, 0.875, 0.0])
    np.testing.assert_array_equal(x[:, :5], b.features(Query(0, data.history(0)), cands)[:, :5])


@pytest.mark.parametrize("hierarchy", [False, True])
def test_statistics_saved_before_the_shown_feature_load_exactly(data, tmp_path, hierarchy):
    """Sums over the five earlier features (every row had shown = 0) are the same sums with
    the feature present: A gains the prior's row and column, b the prior's mean; people and
    items (hierarchy) are kept.  A model directory saved then loads the same way."""
    cfg = {"hierarchy": hierarchy, "prior": 2.0, "prior_mean": {"relevance": 1.0,
                                                                "shown": -0.5}}
    b = bandit(data, **cfg)
    rng = np.random.default_rng(0)
    rows = rng.random((6, b.row_width))
    rows[:, FEATURES.index("shown")] = 0.0
    if hierarchy:
        rows[:, len(FEATURES):] = [[3.0, 4.0]] * 6
    b.update(rows, (rng.random(6) < 0.5).astype(float))
    a, bb = b.statistics()
    d = len(FEATURES)
    old_a, old_b = a[: d - 1, : d - 1], np.concatenate([bb[: d - 1], bb[d:]])
    fresh = bandit(data, **cfg)
    fresh.set_statistics(old_a, old_b)
    a2, b2 = fresh.statistics()
    np.testing.assert_array_equal(a2, a)
    np.testing.assert_array_equal(b2, bb)
    assert fresh.weights() == pytest.approx(b.weights())
    # a model directory from before: its shared sums are five-wide
    b.save(tmp_path / "ts")
    with np.load(tmp_path / "ts" / "state.npz") as z:
        state = {k: z[k] for k in z.files}
    assert state["A"].shape == (d, d)
    state["A"], state["b"] = state["A"][: d - 1, : d - 1], state["b"][: d - 1]
    np.savez(tmp_path / "ts" / "state.npz", **state)
    back = LinearTS.load(tmp_path / "ts")
    np.testing.assert_array_equal(back.statistics()[0], a)
    np.testing.assert_array_equal(back.statistics()[1][:d], bb[:d])


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
    sure._state["b"][:] = np.array([0, 1e6, 0, 0, 0, 0])
    out = sure(Query(None), cands, 3)
    assert out.items.tolist() == [0, 1, 2] and out.fields["propensity"].tolist() == [1.0] * 3


def test_update_checks_and_persistence(data, tmp_path):
    b = bandit(data)
    d = len(FEATURES)
    with pytest.raises(DataError, match=rf"n x {d} features"):
        b.update(np.ones((2, 3)), np.ones(2))
    with pytest.raises(DataError, match="finite"):
        b.update(np.full((1, d), np.nan), np.ones(1))
    with pytest.raises(ConfigError, match="k must be a positive integer, got 0"):
        b(Query(None), ItemList(np.arange(3), np.ones(3)), 0)
    b.update(np.ones((4, d)), np.array([1.0, 0.0, 1.0, 1.0]))
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
    b.credit(np.ones((2, len(FEATURES))))  # two rewards for slots counted as shown
    a, bb = b.statistics()
    assert bb[1] == pytest.approx(1e4 + 2)
    fresh = bandit(data)
    fresh.set_statistics(a, bb)
    assert fresh.weights() == pytest.approx(b.weights())
    with pytest.raises(DataError, match="6x6"):
        fresh.set_statistics(np.eye(3), np.zeros(3))
    items, probs = b.slot_distribution(Query(None), cands, 3)
    np.testing.assert_allclose(probs.sum(axis=0), 1.0)
    assert items.tolist() == list(range(20)) and probs.shape == (20, 3)


# ---------------------------------------------------------------- hierarchy and new-item budget
def with_new_items(n_new: int = 4):  # type: ignore[no-untyped-def]
    """``make_blocks`` plus ``n_new`` catalog items nobody has interacted with (i20, ...)."""
    import pandas as pd

    from serendip.data.dataset import Dataset

    base = make_blocks(n_users=40, n_items=20)
    users, items = base.user_ids, base.item_ids
    inter = base.interactions
    rows = pd.DataFrame({
        "user_id": users[inter["user"].to_numpy()] if "user" in inter else inter["user_id"],
        "item_id": items[inter["item"].to_numpy()] if "item" in inter else inter["item_id"],
        "timestamp": np.arange(len(inter), dtype=float), "rating": 1.0})
    n = 20 + n_new
    cat = pd.DataFrame({"item_id": [f"i{i}" for i in range(n)],
                        "title": [f"item {i}" for i in range(n)]})
    data = Dataset.from_frames(rows, cat)
    vec = np.zeros((n, 8), dtype=np.float32)
    vec[np.arange(n), np.arange(n) % 8] = 1.0
    return data.with_item_vectors(vec)


def test_the_hierarchy_learns_a_planted_item_the_shared_model_cannot(data):
    """Everyone clicks item 13, whatever its features; other items pay 10% of the time.
    Item 13's feature row lies inside the convex hull of the other candidates' rows (checked
    below), so no shared weight vector can score it strictly above all of them: LinearTS
    cannot learn to put it first; the item offset of the hierarchy can (default priors)."""
    from scipy.optimize import linprog

    cands = ItemList(np.arange(20), np.linspace(1, 0, 20))
    q = Query(0, data.history(0))
    x = bandit(data).features(q, cands)
    inside = linprog(np.zeros(19), A_eq=np.delete(x, 13, axis=0).T, b_eq=x[13],
                     bounds=[(0, None)] * 19)
    assert inside.status == 0  # x13 = a convex combination of the others (bias column = 1)
    rng = np.random.default_rng(1)
    first = {}
    for hier in (False, True):
        b = bandit(data, noise=0.25, hierarchy=hier)  # the adaptive preset's settings
        for _ in range(300):
            shown = b(q, cands, 3)
            r = np.where(shown.items == 13, 1.0, (rng.random(3) < 0.1).astype(float))
            b.update(shown.fields["features"], r)
        mean = b.mean_scores(q, cands)
        first[hier] = (int(np.argmax(mean)),
                       np.mean([b(q, cands, 3).items[0] == 13 for _ in range(50)]))
    assert first[True][0] == 13 and first[True][1] > 0.8
    assert first[False][0] != 13 and first[False][1] < 0.2


def test_hierarchy_rows_credit_and_state_round_trip(data):
    b = bandit(data, hierarchy=True)
    cands = ItemList(np.arange(20), np.linspace(1, 0, 20))
    q = Query(3, data.history(3))
    shown = b(q, cands, 4)
    rows = shown.fields["features"]
    assert rows.shape == (4, len(FEATURES) + 2)
    assert len(set(rows[:, -2].tolist())) == 4 and len(set(rows[:, -1].tolist())) == 1
    # shown with reward 0, then credited, equals shown with reward 1 (state for state)
    twin = bandit(data, hierarchy=True)
    twin.set_statistics(*b.statistics())
    b.update(rows, np.zeros(4))
    b.credit(rows[:2])
    twin.update(rows, np.array([1.0, 1.0, 0.0, 0.0]))
    for u, v in zip(b.statistics(), twin.statistics(), strict=True):
        np.testing.assert_allclose(u, v)
    assert b.mean_scores(q, cands)[shown.items[0]] > b.mean_scores(q, cands)[shown.items[3]]
    # save / load through the (A, b) arrays: offsets and their recency come back exactly
    back = bandit(data, hierarchy=True)
    back.set_statistics(*b.statistics())
    np.testing.assert_allclose(back.mean_scores(q, cands), b.mean_scores(q, cands))
    np.testing.assert_array_equal(back.statistics()[1], b.statistics()[1])
    # a plain state loads into a hierarchical bandit (no offsets yet), not the reverse
    plain = bandit(data)
    back.set_statistics(*plain.statistics())
    assert back.statistics()[1].tolist()[-2:] == [0.0, 0.0]  # no people, no items
    with pytest.raises(DataError, match="hierarchy = false"):
        plain.set_statistics(*b.statistics())
    with pytest.raises(DataError, match="do not hold"):
        back.set_statistics(b.statistics()[0], b.statistics()[1][:-1])
    # memory bounds: the least recently updated items are dropped
    small = bandit(data, hierarchy=True, max_items=2, max_people=1)
    small.update(rows, np.zeros(4))
    small.update(bandit(data, hierarchy=True)(Query(30, data.history(30)), cands, 1)
                 .fields["features"], np.ones(1))
    _, packed = small.statistics()
    assert packed[len(FEATURES):len(FEATURES) + 2].tolist() == [1.0, 2.0]


def budget_bandit(data, **cfg) -> tuple[LinearTS, ItemList]:  # type: ignore[no-untyped-def]
    b = LinearTS({"seed": 0, "new_item_share": 0.3, "new_item_pool": 2, **cfg})
    b.train(data)
    # old items 0..19 then the new items 20..23, the blend's order
    cands = ItemList(np.arange(24), np.linspace(1, 0, 24))
    return b, cands


def test_the_budget_slot_shows_new_items_at_their_exact_share():
    """A posterior sure of relevance: the base list is the blend's top 3, so each of the two
    best new items (20, 21) is in the last slot with probability exactly 0.3 / 2 and the base's
    third item with 0.7; the other slots never change (propensity 1)."""
    data = with_new_items()
    b, cands = budget_bandit(data, prior=1e6, noise=1e-4)
    b._state["b"][:] = np.array([0, 1e6, 0, 0, 0, 0])
    n = 3000
    last = np.zeros(n, dtype=np.int64)
    inv = np.zeros(n)
    for t in range(n):
        out = b(Query(None), cands, 3)
        assert out.items[:2].tolist() == [0, 1]
        assert out.fields["propensity"][:2].tolist() == [1.0, 1.0]
        last[t], inv[t] = out.items[2], 1.0 / out.fields["propensity"][2]
    for item, p in ((20, 0.15), (21, 0.15), (2, 0.7)):
        hit = last == item
        assert hit.mean() == pytest.approx(p, abs=4 * np.sqrt(p * (1 - p) / n))
        # IPS of "this item in the last slot": E[1{shown} / propensity] = 1
        w = np.where(hit, inv, 0.0)
        assert abs(w.mean() - 1.0) < 4 * w.std() / np.sqrt(n), (item, w.mean())
    assert set(np.unique(last).tolist()) == {2, 20, 21}
    _, probs = b.slot_distribution(Query(None), cands, 3)
    np.testing.assert_allclose(probs[[20, 21, 2], 2], [0.15, 0.15, 0.7], atol=0.05)


def test_budget_propensities_stay_unbiased_when_the_base_can_pick_new_items_too():
    """With an uncertain posterior the base policy also puts new items in the last slot:
    the item's probability there is 0.3/2 + 0.7 p_base; 1 / propensity stays unbiased for it."""
    data = with_new_items()
    b, cands = budget_bandit(data, noise=1.0, new_item_share=0.3)
    cands = ItemList(cands.items[-8:], cands.scores[-8:])  # 16..23: four old, four new
    n = 3000
    w = np.zeros((n, 2))
    for t in range(n):
        out = b(Query(None), cands, 2)
        for j, item in enumerate((20, 21)):
            if out.items[1] == item:
                w[t, j] = 1.0 / out.fields["propensity"][1]
    for j in range(2):
        assert abs(w[:, j].mean() - 1.0) < 4 * w[:, j].std() / np.sqrt(n), w[:, j].mean()


def test_budget_config_checks():
    with pytest.raises(ConfigError, match="new_item_share"):
        LinearTS({"new_item_share": 1.5})
    data = with_new_items()
    b, cands = budget_bandit(data)
    old = ItemList(np.arange(20), np.linspace(1, 0, 20))  # no new candidate: no budget
    out = b(Query(None), old, 3)
    assert (out.items < 20).all()


def test_a_runs_position_counts_higher_scores_and_earlier_ties():
    """``_at`` is the stable order by score (ties to the earlier candidate), row by row."""
    from serendip.explore.bandit import _at

    rng = np.random.default_rng(4)
    scores = rng.integers(0, 4, size=(300, 9)).astype(np.float32)  # many exact ties
    scores[::7, 2] = -np.inf  # a budget pick, out of the ranking
    order = np.argsort(-scores, axis=1, kind="stable")
    for c in range(9):
        position = np.argmax(order == c, axis=1)
        for j in range(9):
            np.testing.assert_array_equal(_at(scores, c, j), position == j, err_msg=f"{c} {j}")
            work = np.ones(scores.size + 5, dtype=bool)  # a reused buffer, stale contents
            np.testing.assert_array_equal(_at(scores, c, j, work), position == j)
    # more candidates than a 16-bit count holds: the count widens
    wide = np.zeros((2, 70_000), dtype=np.float32)
    wide[:, 1:] = 1.0  # candidate 0 below all 69,999 others
    np.testing.assert_array_equal(_at(wide, 0, 69_999), [True, True])
    np.testing.assert_array_equal(_at(wide, 0, 69_999 - (1 << 16)), [False, False])


def test_a_blocks_count_above_is_the_stable_order():
    """``_count_above`` over any sorted block of candidates counts those with a higher score
    or an equal one and an earlier position, row by row."""
    from serendip.explore.bandit import _count_above

    rng = np.random.default_rng(5)
    scores = rng.integers(0, 4, size=(300, 12)).astype(np.float32)  # many exact ties
    scores[::5, 3] = -np.inf
    order = np.argsort(-scores, axis=1, kind="stable")
    for cols in (np.arange(12), np.array([0, 2, 3, 7, 11]), np.array([1, 5, 6, 9])):
        for c in cols:
            want = np.array([np.count_nonzero(np.isin(row[: np.argmax(row == c)], cols))
                             for row in order])
            got = _count_above(scores[:, cols], scores[:, c], int(np.searchsorted(cols, c)))
            np.testing.assert_array_equal(got, want, err_msg=f"{cols} {c}")


def test_a_runs_scores_are_the_same_bits_in_any_block():
    """Counting runs score a few candidates first and the rest later: every score must be the
    very bits the list shown was made with."""
    from serendip.explore.bandit import _product

    rng = np.random.default_rng(6)
    w = rng.normal(size=(50, 7)).astype(np.float32)
    xm = rng.random((7, 300)).astype(np.float32)
    full = _product(w, xm)
    cols = np.sort(rng.choice(300, size=40, replace=False))
    rows = np.sort(rng.choice(50, size=9, replace=False))
    assert np.array_equal(_product(w, np.ascontiguousarray(xm[:, cols])), full[:, cols])
    assert np.array_equal(_product(w[rows], xm), full[rows])
    np.testing.assert_allclose(full, w.astype(np.float64) @ xm.astype(np.float64), rtol=1e-5,
                               atol=1e-5)


def _splitmix_bits(seed: int, runs: int, n: int) -> np.ndarray:
    """runs x n 16-bit draws, written from the splitmix64 definition: run r's candidate at
    place t takes 16 bits (lane t % 4) of the output for counter r * ceil(n / 4) + t // 4 + 1."""
    words = (n + 3) // 4
    t = np.arange(n, dtype=np.uint64)
    counter = (np.arange(runs, dtype=np.uint64)[:, None] * np.uint64(words)
               + t[None, :] // np.uint64(4) + np.uint64(1))
    with np.errstate(over="ignore"):
        z = np.uint64(seed) + counter * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return ((z >> (np.uint64(16) * (t % np.uint64(4)))[None, :]) & np.uint64(0xFFFF)).astype(
        np.int64)


def test_a_kernel_numba_cannot_cache_is_compiled_in_the_process():
    """Where numba finds nowhere to cache machine code (here a function with no source file,
    as a read-only install has no writable folder), ``compiled`` compiles it in the process
    instead of raising."""
    from numba import njit

    from serendip.explore._kernels import compiled

    ns: dict[str, object] = {}
    exec("def plus_one(x):\n    return x + 1\n", ns)
    with pytest.raises(RuntimeError, match="cannot cache"):
        njit(cache=True)(ns["plus_one"])
    assert compiled(nogil=True)(ns["plus_one"])(41) == 42


def test_the_compiled_count_scores_and_counts_as_the_numpy_runs():
    """``count_runs`` (the compiled counting loop) scores in ``_product``'s float32 order plus
    ``sd z``, z drawn from splitmix64 as its docstring says: the shown items' scores are the
    very bits of the numpy computation; every run it keeps open has exactly
    ``_count_above``'s count for each open slot (ties to the earlier candidate), a run it
    closes early is one in which no open slot can take its item any more, and each open slot's
    first hit, and so the runs made, are those of the full numpy runs."""
    from serendip.explore._kernels import count_runs
    from serendip.explore.bandit import NORMAL_GRID, _count_above, _product

    rng = np.random.default_rng(11)
    runs, n, feats, k = 600, 61, 7, 4  # n not a multiple of 4: a run's last word is partial
    w = rng.normal(size=(runs, feats)).astype(np.float32)
    w[:, -1] = 1.0
    xm = rng.random((feats, n)).astype(np.float32)
    xm[0] = 1.0
    xm[4, rng.random(n) < 0.7] = 0.0
    sd = rng.uniform(0.0, 0.6, n).astype(np.float32)
    sd[[1, 7, 8, 9]] = 0.0
    xm[1:, 1] = 0.9  # slot 1's item scores high often enough to be settled in a batch
    xm[:, [7, 8, 9]] = xm[:, [1]]  # scoring places 7-9 tie exactly with slot 1's item
    cols = rng.permutation(n).astype(np.int64)  # place -> candidate position
    # of slot 1's three exact twins one comes before it (always ranks above), two after
    cols[[7, 1, 8, 9]] = np.sort(cols[[7, 1, 8, 9]])
    picks = np.where(rng.random(runs) < 0.3, cols[rng.integers(n, size=runs)], -1)
    seed = 2**63 + 12345
    want = _product(w, xm) + NORMAL_GRID[_splitmix_bits(seed, runs, n)] * sd
    want[picks[:, None] == cols[None, :]] = -np.inf
    by_position = np.empty_like(want)
    by_position[:, cols] = want  # the runs' scores in candidate order
    slots = np.array([0, 1, 3])
    refs = [_count_above(by_position, want[:, j], int(cols[j])) for j in slots]
    hits = [np.where((j == k - 1) & (picks >= 0), picks == cols[j], ref == j)
            for j, ref in zip(slots, refs, strict=True)]
    firsts = [int(np.argmax(h)) if h.any() else -1 for h in hits]
    assert min(firsts) >= 0 and max(firsts) > 20

    own = np.full((slots.size, runs), np.nan, dtype=np.float32)
    above = np.full((slots.size, runs), -1, dtype=np.int64)
    first = np.full(slots.size, -2, dtype=np.int64)
    made = count_runs(w, picks, xm, sd, cols, NORMAL_GRID, np.uint64(seed), slots, k - 1, own,
                      above, first)
    assert made == max(firsts) + 1
    np.testing.assert_array_equal(first, firsts)
    np.testing.assert_array_equal(own[:, :made], want[:made, slots].T)  # bit for bit
    # a run goes on while a slot not yet settled by an earlier run of the batch may take it
    may = np.zeros(made, dtype=bool)
    for q, j in enumerate(slots):
        unsettled = np.arange(made) <= firsts[q]
        may |= unsettled & (refs[q][:made] <= j) & ~((j == k - 1) & (picks[:made] >= 0))
    stopped_short = 0
    for q in range(slots.size):
        np.testing.assert_array_equal(above[q, :made][may], refs[q][:made][may])
        assert (above[q, :made][~may] <= refs[q][:made][~may]).all()
        stopped_short += int((above[q, :made][~may] < refs[q][:made][~may]).sum())
    assert may.any() and (~may).any() and stopped_short > 0  # runs do stop early
    free = ~np.isin(picks, cols[[1, 7, 8, 9]])  # runs whose budget pick is none of the four
    assert (want[free, 7:10] == want[free, 1:2]).all() and free.sum() > runs // 2

    # a batch in which an open slot is never settled makes every run and reports -1
    late = int(slots[np.argmax(firsts)])
    short = max(firsts)  # the runs before that slot's first hit settle nothing for it
    made = count_runs(w[:short], picks[:short], xm, sd, cols, NORMAL_GRID, np.uint64(seed),
                      np.array([late]), k - 1, own, above, first)
    assert made == short and first[0] == -1


@pytest.mark.parametrize("zeros", [0.0, 0.5, 0.9, 0.99, 1.0])
def test_features_mostly_zero_keep_every_sum_exact(zeros):
    """Terms whose feature is 0 are left out of ``_product``'s sums (a sparse ``shown`` or
    ``tail``): each score equals, as a number, the plain fixed-order sum of every term, in any
    block of candidates."""
    from serendip.explore.bandit import _product, _sparse_rows

    rng = np.random.default_rng(7)
    w = rng.normal(size=(40, 7)).astype(np.float32)
    xm = rng.random((7, 500)).astype(np.float32)
    for f in (4, 5):
        xm[f, rng.random(500) < zeros] = 0.0
    want = w[:, :1] * xm[:1]
    for f in range(1, 7):
        want = want + w[:, f : f + 1] * xm[f : f + 1]
    sparse = _sparse_rows(xm)
    assert (sparse[5] is None) == (zeros < 0.75) and sparse[1] is None
    assert np.array_equal(_product(w, xm, sparse=sparse), want)
    assert np.array_equal(_product(w, xm), want)
    cols = np.sort(rng.choice(500, size=60, replace=False))
    block = np.ascontiguousarray(xm[:, cols])
    assert np.array_equal(_product(w, block, sparse=_sparse_rows(block)), want[:, cols])


@pytest.mark.parametrize("hierarchy", [True, False])
def test_threads_draw_into_their_own_buffers(hierarchy):
    """Runs reuse buffers kept per thread: one policy serving two threads at once over
    different candidates gives each its own list.  With a near-zero posterior scale the list
    is the top 5 by relevance and every propensity is 1, so a run that read the other
    thread's scores would show it."""
    import threading

    from serendip.explore.bandit import LinearTSConfig

    rng = np.random.default_rng(9)
    xs = [rng.random((700 + 300 * i, len(FEATURES))) for i in range(2)]
    keys = [rng.integers(1, 10**9, size=x.shape[0]).astype(np.float64) for x in xs]
    # with item offsets counts are probed (own arrays); without, every batch of runs is
    # scored in the thread's buffers
    policy = LinearTS(LinearTSConfig(seed=3, noise=1e-7, hierarchy=hierarchy))
    policy.start()
    wrong: list = []
    done = [0, 0]
    barrier = threading.Barrier(2)

    def run(i):
        want = np.argsort(-xs[i][:, 1], kind="stable")[:5]
        barrier.wait()
        try:
            for _ in range(40):
                shown, prop, _ = policy.choose(xs[i], 5,
                                               item_keys=keys[i] if hierarchy else None,
                                               person_key=0.0)
                if not (np.array_equal(shown, want) and np.all(prop == 1.0)):
                    wrong.append((i, shown, prop))
                done[i] += 1
        except Exception as e:  # an error in a thread must fail the test, not pass it
            wrong.append((i, repr(e)))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not wrong and done == [40, 40]


def test_the_normal_grid_is_a_fine_standard_normal():
    from scipy.stats import norm

    from serendip.explore.bandit import NORMAL_GRID

    assert NORMAL_GRID.size == 1 << 16 and not NORMAL_GRID.flags.writeable
    assert abs(float(NORMAL_GRID.mean())) < 1e-6
    assert float(NORMAL_GRID.std()) == pytest.approx(1.0, abs=2e-4)
    # equally likely quantiles: the share below any point is the normal's cdf within 1 / 2^16
    for q in (-2.5, -1.0, 0.3, 1.96):
        assert np.mean(NORMAL_GRID < q) == pytest.approx(norm.cdf(q), abs=2.0 / (1 << 16))


def test_hierarchical_budget_propensities_give_unbiased_inverse_weights():
    """The served configuration (person and item offsets, a new-item budget): for every
    (item, slot) the IPS of 'that item in that slot' with reward 1 is 1 in expectation, and the
    share of lists that show it there matches the policy's own slot distribution."""
    data = with_new_items()
    b = LinearTS({"seed": 5, "noise": 0.5, "hierarchy": True, "new_item_share": 0.3,
                  "new_item_pool": 2})
    b.train(data)
    cands = ItemList(np.array([3, 8, 14, 20, 21, 22]), np.array([1.0, 0.8, 0.7, 0.5, 0.4, 0.1]))
    q = Query(2, data.history(2))
    warm = b(q, cands, 2)  # one learnt showing, so the offsets are not all at their prior
    b.update(warm.fields["features"], np.array([1.0, 0.0]))
    _, probs = b.slot_distribution(q, cands, 2)
    n = 4000
    w = np.zeros((n, cands.items.size, 2))
    for t in range(n):
        out = b(q, cands, 2)
        for j, item in enumerate(out.items):
            w[t, int(np.flatnonzero(cands.items == item)[0]), j] = 1.0 / out.fields["propensity"][j]
    for i in range(cands.items.size):
        for j in range(2):
            p = float(np.mean(w[:, i, j] > 0))
            assert p == pytest.approx(probs[i, j], abs=4 * np.sqrt(p * (1 - p) / n) + 0.035)
            if p > 0.03:
                se = w[:, i, j].std() / np.sqrt(n)
                assert abs(w[:, i, j].mean() - 1.0) < 4 * se, (i, j, w[:, i, j].mean(), se)


def test_the_target_distribution_is_the_list_shown_even_with_exact_ties():
    """``slot_distribution`` (the policy as an off-policy target) makes its runs as the shown
    list is made, ties to the earlier candidate: identical rows (new items with no history
    share every feature) and rows equal only in float32 get the mass the lists show."""
    data = with_new_items()
    for cfg, scores, k in (({}, np.array([0.5, 0.5 + 1e-9, 0.0]), 2),
                           ({"new_item_share": 0.3, "new_item_pool": 2}, np.zeros(6), 4)):
        b = LinearTS({"seed": 2, **cfg})
        b.train(data)
        items = np.array([0, 1, 2]) if scores.size == 3 else np.array([20, 21, 22, 23, 3, 4])
        cands = ItemList(items, scores)
        shown = np.zeros((len(items), k))
        n = 400
        for _ in range(n):
            out = b(Query(None), cands, k)
            for j, item in enumerate(out.items):
                shown[int(np.flatnonzero(items == item)[0]), j] += 1.0 / n
        _, probs = b.slot_distribution(Query(None), cands, k)
        np.testing.assert_allclose(probs, shown, atol=0.1)


# ------------------------------------------------------------------ position-aware learning
def test_positions_learn_the_slot_curve_through_show_and_credit():
    """The service's flow: every list counted as shown (reward 0), then a click credits its
    slot.  Clicks need the slot looked at ((p + 1)^-0.7) and the item liked (relevance / 2):
    the bandit learns the curve, and its relevance weight the top-slot appeal's slope (0.5);
    a plain bandit credits relevance with the visibility of the top slots, where the most
    relevant items are shown, and over-weighs it (above 0.6)."""
    true_e = (np.arange(4) + 1.0) ** -0.7
    rng = np.random.default_rng(0)
    fitted = {}
    for positions in (True, False):
        b = LinearTS({"seed": 1, "positions": positions, "noise": 0.5, "prior": 1.0,
                      "prior_mean": {}, "samples": 50})
        b.start()
        for _ in range(4000):
            x = np.column_stack([np.ones(12), rng.random(12), np.full(12, 0.5),
                                 np.zeros(12), np.zeros(12), np.zeros(12)])
            shown, _, rows = b.choose(x, 4)
            assert rows.shape == (4, len(FEATURES) + (1 if positions else 0))
            if positions:
                np.testing.assert_array_equal(rows[:, -1], np.arange(4))
            b.update(rows, np.zeros(4))
            clicked = rng.random(4) < true_e * x[shown, 1] / 2.0
            if clicked.any():
                b.credit(rows[clicked])
        fitted[positions] = b
    exam = fitted[True].examination()
    assert exam is not None and fitted[False].examination() is None
    rates = (2.0 + exam[0]) / (2.0 + exam[1])
    np.testing.assert_allclose(rates[:4] / rates[0], true_e, atol=0.08)
    w_aware = fitted[True].weights()
    w_plain = fitted[False].weights()
    # appeal = relevance / 2: at relevance 0.5 the top slot's is 0.25, the slope 0.5
    middle = w_aware["bias"] + 0.5 * (w_aware["relevance"] + w_aware["unexpectedness"])
    assert abs(middle - 0.25) < 0.04
    assert abs(w_aware["relevance"] - 0.5) < 0.08 and w_plain["relevance"] > 0.6


def test_position_rows_are_checked_and_the_curve_round_trips():
    b = LinearTS({"seed": 0, "positions": True, "hierarchy": True})
    b.start()
    d = len(FEATURES)
    assert b.row_width == d + 3
    row = np.concatenate([np.ones(d), [5.0, 7.0, 2.5]])
    with pytest.raises(DataError, match="slot must be an integer.*2.5"):
        b.update(row[None, :], np.zeros(1))
    row[-1] = 1
    b.update(row[None, :], np.zeros(1))
    b.credit(row[None, :])
    state = b.examination()
    assert state is not None and state.shape == (2, 2) and state[0, 1] == 1.0
    twin = LinearTS({"seed": 0, "positions": True, "hierarchy": True})
    twin.start()
    twin.set_examination(state)
    np.testing.assert_array_equal(twin.examination(), state)
    with pytest.raises(DataError, match="examination state"):
        twin.set_examination(np.array([[1.0, -1.0], [1.0, 1.0]]))
    plain = LinearTS({"seed": 0})
    plain.start()
    plain.set_examination(state)  # ignored: no positions
    assert plain.examination() is None


def test_a_position_weighed_update_by_hand():
    """Hierarchy and positions, one row in slot 1 with reward 1, the curve's sums set to
    clicks (0, 0) and appeal (0, 2): the update decays them (x 0.9998), adds the predicted
    appeal 0.3 (the prior's relevance weight 1 x relevance 0.3; no offsets yet) and the
    click, so e_1 = ((2 + 1) / (2 + 2 x 0.9998 + 0.3)) / (2 / 2).  Then A gains e^2 f f',
    b gains e f (reward e, no offsets to take off), the person e^2 row row' and
    (e - e^2 0.3) row, the item e^2 showings and e - e^2 0.3."""
    b = LinearTS({"seed": 0, "positions": True, "hierarchy": True})
    b.start()
    b.set_examination(np.array([[0.0, 0.0], [0.0, 2.0]]))
    a0, b0 = (v.copy() for v in b.statistics())
    f = np.array([1.0, 0.3, 0.5, 0.2, 1.0, 0.0])
    b.update(np.concatenate([f, [11.0, 7.0, 1.0]])[None, :], np.ones(1))
    e = 3.0 / (2.0 + 2.0 * 0.9998 + 0.3)
    a1, b1 = b.statistics()
    np.testing.assert_allclose(a1 - a0, e * e * np.outer(f, f), rtol=1e-12)
    np.testing.assert_allclose(b1[:6] - b0[:6], e * f, rtol=1e-12)
    person_a, person_b = b._people[7.0]
    row = f[[2, 3, 4]]
    np.testing.assert_allclose(person_a, 25.0 * np.eye(3) + e * e * np.outer(row, row))
    np.testing.assert_allclose(person_b, (e - e * e * 0.3) * row)
    np.testing.assert_allclose(b._items[11.0], [e * e, e - e * e * 0.3])
    np.testing.assert_allclose(b.examination(), [[0.0, 1.0], [0.0, 2 * 0.9998 + 0.3]])


def test_position_rows_have_their_width_and_k_its_bound():
    b = LinearTS({"seed": 0, "positions": True})
    b.start()
    d = len(FEATURES)
    assert b.row_width == d + 1  # no keys without hierarchy: the slot alone
    x = np.column_stack([np.ones(3), np.linspace(0, 1, 3), np.full((3, 4), 0.5)])
    _, _, rows = b.choose(x, 2)
    np.testing.assert_array_equal(rows[:, -1], [0.0, 1.0])
    a0 = b.statistics()[0].copy()
    b.update(rows[:, :d], np.zeros(2))  # rows without their slot: the shared part, weight 1
    np.testing.assert_allclose(b.statistics()[0] - a0, rows[:, :d].T @ rows[:, :d])
    with pytest.raises(ConfigError, match="k must be at most 1000 for a bandit with positions"):
        b.choose(np.tile(x, (400, 1)), 1001)
    h = LinearTS({"seed": 0, "positions": True, "hierarchy": True})
    h.start()
    with pytest.raises(DataError, match=f"update needs n x {d + 3} features"):
        h.update(np.ones((1, d + 2)), np.zeros(1))  # keys without the slot


@pytest.mark.parametrize("budget_item", [False, True])
def test_probed_return_counts_are_geometric_in_the_policys_own_probability(budget_item):
    """Counting runs score the shown items first and the others only while needed
    (``_probed_firsts``): the count for each slot stays geometric with mean 1/p, p the share of
    the policy's own full runs (``_orders``) that put the item there, including a new item the
    budget shows in the last slot."""
    from serendip.explore.bandit import LinearTSConfig

    rng = np.random.default_rng(2)
    n, k = 120, 4
    x = rng.random((n, len(FEATURES)))
    x[:, 0] = 1.0
    keys = np.arange(1.0, n + 1.0)
    new = np.zeros(n, dtype=bool)
    new[-10:] = True
    b = LinearTS(LinearTSConfig(seed=7, noise=0.5, hierarchy=True, new_item_share=0.3,
                                new_item_pool=3))
    b.start()
    for _ in range(30):  # a little learning, so the offsets differ from one item to the next
        _, _, rows = b.choose(x, k, item_keys=keys, person_key=1.0, new=new)
        b.update(rows, (rng.random(k) < 0.3).astype(float))
    ctx = b._context_of(x, keys, 1.0, new)
    order = np.vstack([b._orders(ctx, 20_000, k) for _ in range(10)])
    shown = np.zeros(k, dtype=np.int64)
    for j in range(k):  # per slot an item it holds in about 1.5 % of the runs, distinct: its
        # count spans several batches of runs, so the slots close at different times
        freq = np.bincount(order[:, j], minlength=n) / order.shape[0]
        freq[shown[:j]] = np.inf
        shown[j] = int(np.argmin(np.abs(freq - 0.015)))
    if budget_item:
        shown[k - 1] = int(ctx.pool[0])
    p = np.array([np.mean(order[:, j] == shown[j]) for j in range(k)])
    assert (p > 0.005).all()
    reps = 2000
    counts = np.array([b._return_counts(ctx, shown) for _ in range(reps)])
    for j in range(k):
        se_count = np.sqrt(1 - p[j]) / p[j] / np.sqrt(reps)  # a geometric count's sd / sqrt(reps)
        se_p = np.sqrt(p[j] * (1 - p[j]) / order.shape[0]) / p[j] ** 2  # 1/p's, from the runs
        assert abs(counts[:, j].mean() - 1 / p[j]) < 4 * np.hypot(se_count, se_p), (j, p[j])
