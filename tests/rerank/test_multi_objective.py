"""Multi-objective greedy reranker: weights, single-objective known answers, reasons."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from serendip.data import Dataset
from serendip.errors import ConfigError
from serendip.rerank import MultiObjective
from serendip.rerank.multi_objective import OBJECTIVES, at_least_median
from serendip.types import ItemList, Query
from tests.conftest import make_blocks

ZERO = dict(relevance=0, novelty=0, tail=0, diversity=0, unexpectedness=0, calibration=0,
            fresh=0, exposure=0)


def only(objective: str) -> MultiObjective:
    r = MultiObjective(strength=1.0, weights={**ZERO, objective: 1.0})
    r.train(make_blocks())
    return r


def a_first() -> ItemList:
    return ItemList(np.arange(20), np.r_[np.linspace(2.0, 1.6, 10), np.linspace(1.0, 0.0, 10)])


def test_weights_are_validated() -> None:
    with pytest.raises(ConfigError, match="serendipity"):
        MultiObjective(weights={"serendipity": 1.0})
    with pytest.raises(ConfigError, match="-1"):
        MultiObjective(weights={"tail": -1.0})
    with pytest.raises(ConfigError, match="at least one objective"):
        MultiObjective(weights=ZERO)


def test_nested_weights_round_trip() -> None:
    r = MultiObjective(weights={"tail": 3.0, "novelty": 0.0})
    again = MultiObjective.config_class.model_validate_json(r.config.model_dump_json())
    assert again == r.config and again.weights.tail == 3.0


def test_relevance_only_is_top_k_at_any_discovery() -> None:
    cand = a_first()
    out = only("relevance")(Query(0, discovery=1.0), cand, 6)
    np.testing.assert_array_equal(out.items, np.arange(6))


def test_tail_only_puts_tail_items_first_by_relevance() -> None:
    r = only("tail")
    head = r._require_trained()["head"]
    cand = a_first()
    out = r(Query(0, discovery=1.0), cand, 10)
    tail_items = [i for i in range(20) if not head[i]]
    np.testing.assert_array_equal(out.items, tail_items[:10])
    assert out.reasons[0][-1].startswith("few people have found it yet")


def test_diversity_only_alternates_blocks() -> None:
    out = only("diversity")(Query(0, discovery=1.0), a_first(), 2)
    assert out.items[0] == 0 and out.items[1] >= 10
    assert out.reasons[1][-1].startswith("unlike the rest of this list")


def test_unexpectedness_only_leaves_the_history_block() -> None:
    data = make_blocks()
    out = only("unexpectedness")(Query(0, data.history(0), discovery=1.0), a_first(), 3)
    assert set(out.items.tolist()) <= set(range(10, 20))
    assert out.reasons[0][-1].startswith("unlike what you usually choose")


def test_novelty_only_prefers_the_rarest() -> None:
    data = make_blocks()
    r = only("novelty")
    out = r(Query(0, discovery=1.0), a_first(), 1)
    assert data.item_popularity[out.items[0]] == data.item_popularity.min()
    assert out.reasons[0][-1].startswith("a rare find")


def test_calibration_only_brings_back_minority_genre() -> None:
    data = make_blocks()
    hist = np.r_[data.history(0)[:3], 15]  # 75% A, 25% B
    out = only("calibration")(Query(0, hist, discovery=1.0), a_first().exclude(hist), 8)
    assert int((out.items >= 10).sum()) == 2
    assert any("interest in B" in rs[-1] for rs in out.reasons)


def test_default_mix_moves_toward_discovery() -> None:
    """The preset mix raises tail share and block variety over the top-k."""
    data = make_blocks()
    r = MultiObjective()
    r.train(data)
    head = r._require_trained()["head"]
    cand = a_first()
    plain = r(Query(0, data.history(0), discovery=0.0), cand, 6)
    disc = r(Query(0, data.history(0), discovery=1.0), cand, 6)
    assert (~head[disc.items]).mean() >= (~head[plain.items]).mean()
    assert (disc.items >= 10).any() and not (plain.items >= 10).any()


def with_new_items() -> tuple[Dataset, np.ndarray]:
    """Blocks with items 4 and 14 never used in training."""
    data = make_blocks()
    inter = data.interactions
    train = data.with_interactions(inter[~inter.item.isin([4, 14])])
    return train, train.item_popularity


def test_default_weights_leave_fresh_and_exposure_off() -> None:
    w = MultiObjective().config.weights
    assert w.fresh == 0.0 and w.exposure == 0.0
    assert set(OBJECTIVES) >= {"fresh", "exposure"}
    r = MultiObjective()
    r.train(make_blocks())
    assert not r.tracks_exposure
    q = Query(0, make_blocks().history(0), discovery=1.0)
    first = r(q, a_first(), 6)
    for _ in range(3):  # no memory: the same list every time
        assert r(q, a_first(), 6).items.tolist() == first.items.tolist()


def test_fresh_only_puts_new_items_first_hand_computed() -> None:
    train, pop = with_new_items()
    r = MultiObjective(strength=1.0, weights={**ZERO, "fresh": 1.0})
    r.train(train)
    out = r(Query(0, discovery=1.0), a_first(), 4)
    # lam = 1: the value is 1 / (1 + popularity); the two new items (value 1) come first
    assert out.items[:2].tolist() == [4, 14]
    np.testing.assert_allclose(out.scores, 1.0 / (1.0 + pop[out.items]))
    why = out.reason_lists()
    assert why[0][-1] == "new in the catalog: nobody has chosen it yet"
    rest = why[2][-1]
    assert rest.startswith("new here: only ") and rest.endswith("chosen it so far")
    # half discovery: (1 - 0.5) * rel + 0.5 * fresh, with rel min-max scaled over candidates
    cand = ItemList(np.array([0, 4, 1]), np.array([3.0, 1.0, 2.0]))
    half = r(Query(0, discovery=0.5), cand, 3)
    p0, p1 = pop[0], pop[1]
    expect = {0: 0.5 + 0.5 / (1 + p0), 4: 0.5 * 0.0 + 0.5, 1: 0.5 * 0.5 + 0.5 / (1 + p1)}
    best = max(expect, key=lambda i: expect[i])
    assert half.items[0] == best and half.scores[0] == pytest.approx(expect[best])


def test_popularity_objectives_are_neutral_for_new_items() -> None:
    """Novelty (and tail) give a never-seen candidate the seen candidates' mean, so they do
    not flood the list with new items; only ``fresh`` pushes them."""
    train, pop = with_new_items()
    cand = ItemList(np.array([0, 4, 1, 2]), np.array([4.0, 3.0, 2.0, 1.0]))
    for name in ("novelty", "tail"):
        r = MultiObjective(strength=1.0, weights={**ZERO, name: 1.0})
        r.train(train)
        st = r._require_trained()
        value = st["novelty"].copy() if name == "novelty" else (~st["head"]).astype(float)
        assert value[4] == value.max()  # what popularity alone would say: the rarest there is
        value[4] = value[[0, 1, 2]].mean()  # the seen candidates' mean
        want = sorted(cand.items.tolist(), key=lambda i: -value[i])  # stable: ties by position
        out = r(Query(0, discovery=1.0), cand, 4)
        assert out.items.tolist() == want
        np.testing.assert_allclose(out.scores, value[want])
    # with novelty alone a new item is never picked for being new; with fresh it is
    both = MultiObjective(strength=1.0, weights={**ZERO, "novelty": 1.0, "fresh": 1.0})
    both.train(train)
    assert both(Query(0, discovery=1.0), cand, 1).items.tolist() == [4]


def hub_setup(**config: object) -> tuple[MultiObjective, list[Query], ItemList]:
    """Every user gets the same candidates, and the rarest of them (a tail item) is the best
    discovery pick for everybody."""
    data = make_blocks()
    values: dict[str, object] = {
        "strength": 1.0, "weights": {**ZERO, "novelty": 1.0, "relevance": 0.2}, **config}
    r = MultiObjective(values)
    r.train(data)
    queries = [Query(u, discovery=0.8) for u in range(20)]
    return r, queries, a_first()


def batch_counts(r: MultiObjective, queries: list[Query], cand: ItemList, k: int) -> np.ndarray:
    counts = np.zeros(20, dtype=np.int64)
    for q in queries:
        counts[r(q, cand, k).items] += 1
    return counts


def test_without_exposure_one_tail_item_is_in_every_list() -> None:
    r, qs, cand = hub_setup()
    counts = batch_counts(r, qs, cand, 3)
    head = r._require_trained()["head"]
    always = np.flatnonzero(counts == len(qs))
    assert always.size == 3  # the same list for everybody
    assert any(not head[i] and i != 0 for i in always)  # with a tail item picked for discovery


@pytest.mark.parametrize("cap", [0.15, 0.25, 0.5])
def test_exposure_cap_bounds_every_items_share_of_a_batch(cap: float) -> None:
    r, qs, cand = hub_setup(weights={**ZERO, "novelty": 1.0, "relevance": 0.2, "exposure": 1.0},
                            exposure_cap=cap)
    counts = batch_counts(r, qs, cand, 3)
    assert counts.max() <= cap * len(qs) + 1e-9
    assert counts.sum() == 3 * len(qs)  # every list is full
    shares = r.exposure_shares()
    np.testing.assert_allclose(shares, counts / len(qs))


def test_a_cap_too_tight_for_the_candidates_spreads_evenly() -> None:
    """20 lists of 3 from 20 candidates need 3 lists per item: a 10% cap cannot hold, and
    the least shown items fill the lists."""
    r, qs, cand = hub_setup(exposure_cap=0.1)
    counts = batch_counts(r, qs, cand, 3)
    assert counts.sum() == 60 and counts.max() - counts.min() <= 1


def test_soft_exposure_spreads_the_hub_without_a_cap() -> None:
    r, qs, cand = hub_setup(weights={**ZERO, "novelty": 1.0, "exposure": 2.0})
    counts = batch_counts(r, qs, cand, 3)
    assert counts.max() < len(qs) and np.count_nonzero(counts) > 3
    # a pick made because it was shown less says so
    r2, _, _ = hub_setup(weights={**ZERO, "novelty": 0.01, "exposure": 1.0})
    r2(Query(0, discovery=1.0), cand, 3)
    out = r2(Query(1, discovery=1.0), cand, 3)
    assert out.reason_lists()[0][-1] == "given a turn: not recommended to anyone lately"


def test_exposure_window_slides_and_hand_computed_shares() -> None:
    r = MultiObjective(weights={**ZERO, "relevance": 1.0, "exposure": 1.0}, exposure_window=2)
    r.train(make_blocks())
    q = Query(0, discovery=0.0)  # lam = 0: the top of the candidates, recorded all the same
    for first in (0, 5, 10):
        r(q, ItemList(np.array([first, first + 1]), np.array([2.0, 1.0])), 2)
    shares = r.exposure_shares()  # the last two lists: {5, 6} and {10, 11}
    expect = np.zeros(20)
    expect[[5, 6, 10, 11]] = 0.5
    np.testing.assert_allclose(shares, expect)
    r.reset_exposure()
    assert not r.exposure_shares().any()


def test_cap_counts_the_list_that_drops_out_of_the_window() -> None:
    r = MultiObjective(strength=1.0, weights={**ZERO, "relevance": 1.0}, exposure_window=2,
                       exposure_cap=0.5)
    r.train(make_blocks())
    q = Query(0, discovery=1.0)
    cand = ItemList(np.array([0, 1, 2]), np.array([3.0, 2.0, 1.0]))
    got = [r(q, cand, 1).items.tolist() for _ in range(4)]
    # window 2, cap 0.5: an item is in at most one of any two consecutive lists
    assert got == [[0], [1], [0], [1]]


def test_record_false_and_determinism_for_one_state() -> None:
    r, qs, cand = hub_setup(weights={**ZERO, "novelty": 1.0, "exposure": 1.0},
                            exposure_cap=0.2)
    for q in qs[:7]:
        r(q, cand, 3)
    before = r.exposure_shares()
    a = r(qs[7], cand, 3, record=False)
    b = r(qs[7], cand, 3, record=False)
    assert a.items.tolist() == b.items.tolist() and a.reasons == b.reasons
    np.testing.assert_array_equal(r.exposure_shares(), before)
    assert r(qs[7], cand, 3).items.tolist() == a.items.tolist()


def test_cap_never_shortens_a_list() -> None:
    r = MultiObjective(strength=1.0, weights={**ZERO, "novelty": 1.0}, exposure_cap=0.05)
    r.train(make_blocks())
    cand = ItemList(np.array([0, 1, 2, 3]), np.array([4.0, 3.0, 2.0, 1.0]))
    for u in range(5):
        out = r(Query(u, discovery=1.0), cand, 3)
        assert len(out) == 3 and len(set(out.items.tolist())) == 3


def test_exposure_memory_is_thread_safe() -> None:
    r, qs, cand = hub_setup(weights={**ZERO, "novelty": 1.0, "exposure": 1.0},
                            exposure_window=10_000)
    counts = np.zeros(20, dtype=np.int64)
    lock = threading.Lock()

    def work(start: int) -> None:
        for i in range(50):
            out = r(Query(start + i, discovery=1.0), cand, 3)
            with lock:
                counts[out.items] += 1

    threads = [threading.Thread(target=work, args=(100 * t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    np.testing.assert_allclose(r.exposure_shares(), counts / 200)


def test_new_config_fields_are_validated_and_round_trip() -> None:
    r = MultiObjective(weights={"fresh": 2.0, "exposure": 0.5}, exposure_window=50,
                       exposure_cap=0.3)
    again = MultiObjective.config_class.model_validate_json(r.config.model_dump_json())
    assert again == r.config and again.weights.fresh == 2.0 and again.exposure_cap == 0.3
    with pytest.raises(ConfigError, match="exposure_cap"):
        MultiObjective(exposure_cap=1.5)
    with pytest.raises(ConfigError, match="exposure_window"):
        MultiObjective(exposure_window=0)
    with pytest.raises(ConfigError, match="-1"):
        MultiObjective(weights={"fresh": -1.0})


def test_exposure_penalty_hand_computed_and_no_dilution() -> None:
    def make(exposure: float) -> MultiObjective:
        r = MultiObjective(strength=1.0, weights={**ZERO, "relevance": 1.0, "exposure": exposure})
        r.train(make_blocks())
        r(Query(0, discovery=1.0), ItemList(np.array([0]), np.array([1.0])), 1)  # shows item 0
        return r

    cand = ItemList(np.array([0, 1]), np.array([1.0, 0.0]))
    q = Query(1, discovery=0.5)  # lam 0.5: value = 0.5 rel + 0.5 rel - 0.5 * w * share
    out = make(1.0)(q, cand, 2)  # item 0: 1 - 0.5 * 1 * 1 = 0.5; item 1: 0
    assert out.items.tolist() == [0, 1]
    np.testing.assert_allclose(out.scores, [0.5, 0.0])
    out = make(3.0)(q, cand, 2)  # item 0: 1 - 1.5 = -0.5
    assert out.items.tolist() == [1, 0]
    np.testing.assert_allclose(out.scores, [0.0, -0.5])
    # before any list is remembered the penalty is zero: the lists of exposure = 0, exactly
    data = make_blocks()
    base = MultiObjective()
    spread = MultiObjective(weights={"exposure": 5.0})
    for r in (base, spread):
        r.train(data)
    q0 = Query(0, data.history(0), discovery=1.0)
    a, b = base(q0, a_first(), 6), spread(q0, a_first(), 6)
    assert a.items.tolist() == b.items.tolist()
    np.testing.assert_allclose(a.scores, b.scores)


def test_at_least_median_agrees_with_numpy_median() -> None:
    """The sort-free comparison decides as ``values >= np.median(pool, axis=1)`` on odd and even
    rows, with ties, repeated values and each row's own entries as the compared values."""
    rng = np.random.default_rng(3)
    for n in (1, 2, 3, 4, 7, 8, 50, 51):
        for _ in range(40):
            pool = rng.integers(0, 4, size=(7, n)) / 4.0 if rng.random() < 0.5 else \
                rng.standard_normal((7, n))
            cols = rng.integers(0, n, size=7)
            for values in (pool[np.arange(7), cols], rng.standard_normal(7),
                           np.median(pool, axis=1)):
                want = values >= np.median(pool, axis=1)
                np.testing.assert_array_equal(at_least_median(values, pool), want)
