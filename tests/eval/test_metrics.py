"""Metrics: hand-computed cases, properties, a LensKit cross-check and the aggregator."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from serendip.data import Dataset
from serendip.eval import (
    arp,
    average_precision,
    calibration_kl,
    compute_metrics,
    coverage,
    gini,
    head_by_interaction_share,
    head_by_item_share,
    hit_rate,
    ild_cosine,
    ild_jaccard,
    mrr,
    ndcg,
    novelty,
    popularity_groups,
    primitive_list,
    recall,
    serendipity_ge,
    tail_share,
    unexpectedness,
)
from tests.conftest import make_blocks

LG3 = 1 / math.log2(3)  # discount at rank 2
LG5 = 1 / math.log2(5)  # discount at rank 4
ACCURACY = [ndcg, recall, hit_rate, mrr, average_precision]


# =========================================================================== hand-computed
@pytest.mark.parametrize("metric", ACCURACY)
def test_perfect_list_scores_one(metric):
    assert metric(np.array([4, 2, 9]), np.array([2, 4, 9]), 3) == pytest.approx(1.0)
    # more relevant items than k: the ideal list of length k is still perfect (not recall)
    if metric is not recall:
        assert metric(np.array([0, 1]), np.array([0, 1, 2, 3]), 2) == pytest.approx(1.0)


@pytest.mark.parametrize("metric", ACCURACY)
def test_list_without_hit_scores_zero(metric):
    assert metric(np.array([5, 6, 7]), np.array([1, 2]), 3) == 0.0
    # a hit just past the cutoff does not count
    assert metric(np.array([5, 6, 7, 1]), np.array([1, 2]), 3) == 0.0


@pytest.mark.parametrize("metric", ACCURACY)
def test_empty_list_scores_zero_and_padding_is_dropped(metric):
    assert metric(np.array([], dtype=np.int64), np.array([1]), 5) == 0.0
    assert metric(np.array([-1, -1]), np.array([1]), 5) == 0.0
    assert metric(np.array([1, -1, -1]), np.array([1]), 3) == metric(np.array([1]), [1], 3)


@pytest.mark.parametrize("metric", ACCURACY + [lambda r, t, k: serendipity_ge(r, t, [], k)])
def test_empty_relevant_raises_naming_it(metric):
    with pytest.raises(ValueError, match="relevant"):
        metric(np.array([1, 2]), np.array([], dtype=np.int64), 2)


@pytest.mark.parametrize("k", [0, -3, 2.5, True])
def test_bad_k_raises_naming_value(k):
    with pytest.raises(ValueError, match=f"k must be a positive integer, got {k!r}"):
        ndcg(np.array([1]), np.array([1]), k)


def test_bad_lists_raise():
    with pytest.raises(ValueError, match="repeats item 3"):
        recall(np.array([3, 1, 3]), np.array([1]), 3)
    with pytest.raises(ValueError, match="negative item index -4"):
        recall(np.array([3, -4]), np.array([1]), 3)
    with pytest.raises(ValueError, match="1-D"):
        recall(np.array([[3, 1]]), np.array([1]), 3)


def test_worked_example_accuracy():
    # rec = [5, 1, 7, 3], relevant = {1, 3, 9}: hits at ranks 2 and 4.
    rec, rel = np.array([5, 1, 7, 3]), np.array([1, 3, 9])
    # k=4: DCG = 1/log2(3) + 1/log2(5) = 0.63093 + 0.43068 = 1.06161
    #      IDCG over min(4, 3) = 3 ranks = 1 + 0.63093 + 0.5 = 2.13093  ->  NDCG = 0.49819
    assert ndcg(rec, rel, 4) == pytest.approx((LG3 + LG5) / (1 + LG3 + 0.5))
    assert ndcg(rec, rel, 4) == pytest.approx(0.4981892575)
    assert recall(rec, rel, 4) == pytest.approx(2 / 3)
    assert hit_rate(rec, rel, 4) == 1.0
    assert mrr(rec, rel, 4) == pytest.approx(0.5)
    # AP@4 = (P@2 + P@4) / min(4, 3) = (1/2 + 2/4) / 3 = 1/3
    assert average_precision(rec, rel, 4) == pytest.approx(1 / 3)
    # k=2: one hit at rank 2; IDCG over 2 ranks = 1 + 0.63093 -> 0.38685
    assert ndcg(rec, rel, 2) == pytest.approx(LG3 / (1 + LG3))
    assert ndcg(rec, rel, 2) == pytest.approx(0.3868528072)
    assert recall(rec, rel, 2) == pytest.approx(1 / 3)  # denominator |relevant| = 3
    assert average_precision(rec, rel, 2) == pytest.approx(0.25)  # (1/2) / min(2, 3)
    assert mrr(rec, rel, 1) == 0.0


def test_worked_example_popularity():
    pop = np.array([4.0, 2.0, 1.0, 0.0])  # users per item, n_users = 4
    # self-information: -log2(4/4)=0, -log2(2/4)=1, -log2(1/4)=2, item 3 has 0 users -> capped at 2
    assert novelty(np.array([0, 1, 3]), pop, 4) == pytest.approx((0 + 1 + 2) / 3)
    assert novelty(np.array([3]), pop, 4) == pytest.approx(math.log2(4))
    assert novelty(np.array([], dtype=np.int64), pop, 4) == 0.0
    assert arp(np.array([0, 1, 3]), pop) == pytest.approx((4 + 2 + 0) / 3)
    head = head_by_item_share(pop, 0.2)  # ceil(0.2 * 4) = 1 item
    assert head.tolist() == [True, False, False, False]
    assert tail_share(np.array([0, 1, 3]), head) == pytest.approx(2 / 3)
    assert tail_share(np.array([0]), head) == 0.0
    with pytest.raises(ValueError, match="n_users must be a positive integer, got 0"):
        novelty(np.array([0]), pop, 0)
    with pytest.raises(ValueError, match="item index 7"):
        arp(np.array([7]), pop)


def test_heads_break_ties_by_index():
    pop = np.array([3.0, 5.0, 5.0, 1.0, 0.0])
    assert head_by_item_share(pop, 0.4).tolist() == [False, True, True, False, False]
    assert head_by_item_share(pop, 0.2).tolist() == [False, True, False, False, False]
    # Elliot: 80 % of 100 interactions = 80, reached by items 0 and 1 (50 + 30)
    pop2 = np.array([50.0, 30.0, 10.0, 5.0, 5.0])
    assert head_by_interaction_share(pop2, 0.8).tolist() == [True, True, False, False, False]
    assert head_by_interaction_share(pop2, 0.81).tolist() == [True, True, True, False, False]
    assert not head_by_interaction_share(np.zeros(3)).any()
    assert primitive_list(pop, 2).tolist() == [1, 2]
    # groups: order 1, 2, 0, 3, 4 -> head ceil(1)=1 item, mid up to ceil(2.5)=3 items
    assert popularity_groups(pop).tolist() == [1, 0, 1, 2, 2]
    with pytest.raises(ValueError, match="share must be a number in \\(0, 1\\], got 1.5"):
        head_by_item_share(pop, 1.5)


def test_worked_example_diversity():
    vec = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
    # cos(0,1)=0, cos(0,2)=cos(1,2)=1/sqrt2 -> distances 1, 0.29289, 0.29289 -> mean 0.52860
    assert ild_cosine(np.array([0, 1, 2]), vec) == pytest.approx((3 - math.sqrt(2)) / 3)
    assert ild_cosine(np.array([0]), vec) == 0.0
    assert ild_cosine(np.array([0, 3]), vec) == pytest.approx(1.0)  # zero vector: cosine 0
    cats = sp.csr_matrix(
        np.array([[1, 1, 0], [0, 1, 1], [1, 1, 0], [0, 0, 0], [0, 0, 0]], dtype=np.float32)
    )  # 0:{A,B} 1:{B,C} 2:{A,B} 3:{} 4:{}
    # J(0,1)=1/3, J(0,2)=1, J(1,2)=1/3 -> distances 2/3, 0, 2/3 -> mean 4/9
    assert ild_jaccard(np.array([0, 1, 2]), cats) == pytest.approx(4 / 9)
    assert ild_jaccard(np.array([3, 4]), cats) == 0.0  # both uncategorised: identical
    assert ild_jaccard(np.array([0, 3]), cats) == pytest.approx(1.0)
    # history {0}, list [1, 2]: cosines 0 and 1/sqrt2 -> 1 - 0.35355 = 0.64645
    assert unexpectedness(np.array([1, 2]), np.array([0]), vec) == pytest.approx(
        1 - 1 / (2 * math.sqrt(2))
    )
    assert unexpectedness(np.array([2]), np.array([0, 1]), vec) == pytest.approx(
        1 - 1 / math.sqrt(2)
    )
    assert unexpectedness(np.array([0]), np.array([0]), vec) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="history"):
        unexpectedness(np.array([0]), np.array([], dtype=np.int64), vec)


def test_worked_example_serendipity_and_calibration():
    # top-4 [0,5,6,7], relevant {0,5,9}, primitive {0,1}: only 5 is relevant and unexpected
    assert serendipity_ge(np.array([0, 5, 6, 7]), np.array([0, 5, 9]), np.array([0, 1]), 4) == 0.25
    assert serendipity_ge(np.array([0, 5]), np.array([0, 5]), np.array([]), 4) == 0.5  # / k
    cats = sp.csr_matrix(np.array([[1, 0], [0, 1], [1, 1]], dtype=np.float32))  # A, B, A|B
    # history {0, 2}: A = 1 + 1/2, B = 1/2 -> p = (0.75, 0.25); list [1]: q = (0, 1)
    # q~ = 0.99 q + 0.01 p = (0.0075, 0.9925)
    # KL = 0.75 ln(0.75/0.0075) + 0.25 ln(0.25/0.9925) = 3.45388 - 0.34470 = 3.10919
    expected = 0.75 * math.log(100) + 0.25 * math.log(0.25 / 0.9925)
    assert calibration_kl(np.array([0, 2]), np.array([1]), cats) == pytest.approx(expected)
    assert expected == pytest.approx(3.1091861158)
    assert calibration_kl(np.array([0, 2]), np.array([2, 0]), cats) == pytest.approx(0.0)
    assert calibration_kl(np.array([0]), np.array([], dtype=np.int64), cats) == pytest.approx(
        math.log(100)
    )
    with pytest.raises(ValueError, match="alpha must be in \\(0, 1\\], got 0"):
        calibration_kl(np.array([0]), np.array([1]), cats, alpha=0)


def test_worked_example_catalog():
    lists = [np.array([0, 1]), np.array([1, 2])]
    assert coverage(lists, 4) == pytest.approx(3 / 4)
    # counts (1, 2, 1, 0) sorted (0, 1, 1, 2); sum (2j - 5) c_j = 0 - 1 + 1 + 6 = 6; / (4 * 4)
    assert gini(lists, 4) == pytest.approx(6 / 16)
    assert gini(np.array([[0, 1], [2, 3]]), 4) == pytest.approx(0.0)
    assert gini(np.array([[2], [2], [2]]), 5) == pytest.approx(4 / 5)
    assert gini(np.array([[0, -1], [1, -1]]), 2) == pytest.approx(0.0)  # padding ignored
    assert coverage(np.zeros((0, 3), dtype=np.int64), 3) == 0.0
    with pytest.raises(ValueError, match="n_items must be a positive integer, got 0"):
        coverage(lists, 0)
    with pytest.raises(ValueError, match="item index 2"):
        gini(lists, 2)


# =========================================================================== properties
@st.composite
def ranking_case(draw, max_items: int = 30):
    n = draw(st.integers(1, max_items))
    perm = draw(st.permutations(list(range(n))))
    rec_len = draw(st.integers(0, n))
    rel = draw(st.lists(st.integers(0, n + 5), min_size=1, max_size=n + 5, unique=True))
    k = draw(st.integers(1, n + 3))
    return np.array(perm[:rec_len], dtype=np.int64), np.array(rel, dtype=np.int64), k


@settings(max_examples=200, deadline=None)
@given(ranking_case())
def test_accuracy_bounds_and_no_nan(case):
    rec, rel, k = case
    for metric in ACCURACY:
        v = metric(rec, rel, k)
        assert not math.isnan(v)
        assert 0.0 <= v <= 1.0 + 1e-12, (metric.__name__, v)
    assert 0.0 <= serendipity_ge(rec, rel, rec[: len(rec) // 2], k) <= 1.0
    # AP and MRR never exceed NDCG's ordering-free siblings when there is no hit
    if hit_rate(rec, rel, k) == 0:
        assert ndcg(rec, rel, k) == recall(rec, rel, k) == mrr(rec, rel, k) == 0.0


@settings(max_examples=200, deadline=None)
@given(ranking_case())
def test_ndcg_at_most_ideal(case):
    rec, rel, k = case
    # the ideal list puts relevant items first
    ideal = np.concatenate([rel, np.setdiff1d(rec, rel)])
    assert ndcg(rec, rel, k) <= ndcg(ideal, rel, k) + 1e-12
    assert ndcg(ideal, rel, k) == pytest.approx(1.0)
    assert average_precision(ideal, rel, k) == pytest.approx(1.0)


@settings(max_examples=200, deadline=None)
@given(ranking_case())
def test_recall_and_hit_monotone_in_k(case):
    rec, rel, k = case
    assert recall(rec, rel, k) <= recall(rec, rel, k + 1) + 1e-12
    assert hit_rate(rec, rel, k) <= hit_rate(rec, rel, k + 1)
    assert mrr(rec, rel, k) <= mrr(rec, rel, k + 1)


@settings(max_examples=150, deadline=None)
@given(
    st.integers(1, 20).flatmap(
        lambda n: st.tuples(
            st.just(n),
            st.lists(st.lists(st.integers(0, n - 1), max_size=n, unique=True), max_size=8),
        )
    )
)
def test_coverage_and_gini_bounds(args):
    n, lists = args
    arrays = [np.array(x, dtype=np.int64) for x in lists]
    c, g = coverage(arrays, n), gini(arrays, n)
    assert 0.0 <= c <= 1.0
    assert 0.0 - 1e-12 <= g <= (n - 1) / n + 1e-12
    assert not math.isnan(c) and not math.isnan(g)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.floats(0, 50, allow_nan=False), min_size=1, max_size=30),
    st.floats(0.01, 1.0),
    st.data(),
)
def test_popularity_metric_bounds(pop_list, share, data):
    pop = np.floor(np.array(pop_list))
    n_users = int(pop.max()) + 1
    rec = np.array(data.draw(st.lists(st.integers(0, pop.size - 1), unique=True)), np.int64)
    head = head_by_item_share(pop, share)
    assert head.sum() == math.ceil(share * pop.size - 1e-9)
    assert 0.0 <= tail_share(rec, head) <= 1.0
    assert 0.0 <= novelty(rec, pop, n_users) <= math.log2(n_users) + 1e-12
    elliot = head_by_interaction_share(pop, share)
    if pop.sum() > 0:
        assert pop[elliot].sum() >= share * pop.sum() - 1e-9
        # minimal: dropping the least popular head item falls below the share
        assert pop[elliot].sum() - pop[elliot].min() < share * pop.sum() + 1e-9


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_diversity_bounds(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 15))
    vec = rng.normal(size=(n, 4))
    cats = sp.csr_matrix((rng.random((n, 3)) < 0.4).astype(np.float32))
    rec = rng.permutation(n)[: int(rng.integers(0, n + 1))]
    hist = rng.permutation(n)[: int(rng.integers(1, n + 1))]
    assert 0.0 <= ild_cosine(rec, vec) <= 2.0 + 1e-12
    assert 0.0 <= ild_jaccard(rec, cats) <= 1.0 + 1e-12
    assert 0.0 <= unexpectedness(rec, hist, vec) <= 2.0 + 1e-12
    if cats[hist].sum() > 0:
        kl = calibration_kl(hist, rec, cats)
        assert 0.0 - 1e-12 <= kl <= math.log(100) + 1e-9  # alpha = 0.01 bounds the KL


# =========================================================================== LensKit cross-check
def _lenskit_cases(n_cases: int = 300):
    rng = np.random.default_rng(42)
    for _ in range(n_cases):
        n_items = int(rng.integers(20, 60))
        rec = rng.permutation(n_items)[: int(rng.integers(0, 25))]
        rel = rng.choice(n_items, size=int(rng.integers(1, 20)), replace=False)
        k = int(rng.integers(1, 30))
        yield rec, rel, k


def test_matches_lenskit_where_definitions_coincide():
    pytest.importorskip("lenskit")
    from lenskit.data import ItemList
    from lenskit.metrics.ranking import (
        NDCG,
        AveragePrecision,
        Hit,
        LogRankWeight,
        Recall,
        RecipRank,
    )

    n_checked = 0
    for rec, rel, k in _lenskit_cases():
        recs = ItemList(item_ids=rec, ordered=True)
        test = ItemList(item_ids=rel)
        # NDCG: LensKit's discount 1/log2(rank + 1) is LogRankWeight(offset=1)
        lk = NDCG(k, weight=LogRankWeight(offset=1)).measure_list(recs, test)
        assert ndcg(rec, rel, k) == pytest.approx(lk, abs=1e-9)
        assert mrr(rec, rel, k) == pytest.approx(RecipRank(k).measure_list(recs, test), abs=1e-9)
        assert hit_rate(rec, rel, k) == pytest.approx(Hit(k).measure_list(recs, test), abs=1e-9)
        # Recall: LensKit divides by min(|relevant|, k), we by |relevant| (RecBole/Elliot)
        lk_recall = Recall(k).measure_list(recs, test)
        assert recall(rec, rel, k) == pytest.approx(
            lk_recall * min(len(rel), k) / len(rel), abs=1e-9
        )
        if len(rel) <= k:
            assert recall(rec, rel, k) == pytest.approx(lk_recall, abs=1e-9)
        # AP: LensKit divides by min(|relevant|, |truncated list|); same when the list has >= k
        if len(rec) >= k:
            lk_ap = AveragePrecision(k).measure_list(recs, test)
            assert average_precision(rec, rel, k) == pytest.approx(lk_ap, abs=1e-9)
        n_checked += 1
    assert n_checked == 300


def test_lenskit_default_ndcg_discount_differs_on_purpose():
    pytest.importorskip("lenskit")
    from lenskit.data import ItemList
    from lenskit.metrics.ranking import NDCG

    # hit only at rank 2: LensKit's default clips log2(rank) at 1, so its rank-2 weight is 1
    rec, rel = np.array([7, 1]), np.array([1])
    lk = NDCG(2).measure_list(ItemList(item_ids=rec, ordered=True), ItemList(item_ids=rel))
    assert lk == pytest.approx(1.0)
    assert ndcg(rec, rel, 2) == pytest.approx(LG3)


# =========================================================================== aggregator
def _tiny() -> Dataset:
    """3 users, 5 items.  Popularity (3, 2, 1, 1, 0); activity (2, 2, 3)."""
    inter = pd.DataFrame(
        [("u0", "i0"), ("u0", "i1"), ("u1", "i0"), ("u1", "i2"),
         ("u2", "i0"), ("u2", "i1"), ("u2", "i3")],
        columns=["user_id", "item_id"],
    )
    items = pd.DataFrame(
        {"item_id": [f"i{i}" for i in range(5)], "genres": ["A", "A", "B", "B|C", "C"]}
    )
    c = 1 / math.sqrt(2)
    vec = np.array([[1, 0], [1, 0], [0, 1], [0, 1], [c, c]], dtype=np.float32)
    return Dataset.from_frames(inter, items).with_item_vectors(vec)


def test_compute_metrics_tiny_known_values():
    data = _tiny()
    assert data.item_popularity.tolist() == [3, 2, 1, 1, 0]
    recs = np.array([[2, 3], [1, 4], [4, 2]])
    truth = {0: np.array([3]), 1: np.array([1, 3]), 2: np.array([2])}
    m = compute_metrics(recs, np.array([0, 1, 2]), truth, data, 2, primitive_size=2)
    c = 1 / math.sqrt(2)
    # per user: u0 hit at rank 2 of 1 relevant; u1 hit at rank 1 of 2; u2 hit at rank 2 of 1
    n0, n1 = LG3, 1 / (1 + LG3)
    assert m["ndcg"] == pytest.approx((2 * n0 + n1) / 3)
    assert m["recall"] == pytest.approx((1 + 0.5 + 1) / 3)
    assert m["hit_rate"] == 1.0
    assert m["mrr"] == pytest.approx((0.5 + 1 + 0.5) / 3)
    assert m["map"] == pytest.approx(0.5)  # (1/2)/1, 1/2, (1/2)/1
    # self-information -log2(max(pop,1)/3): i1 log2 1.5, i2 = i3 = i4 (capped) = log2 3
    l3, l15 = math.log2(3), math.log2(1.5)
    assert m["novelty"] == pytest.approx((l3 + (l15 + l3) / 2 + l3) / 3)
    assert m["arp"] == pytest.approx((1 + 1 + 0.5) / 3)
    assert m["tail_share"] == 1.0  # head = {i0}, never recommended
    assert m["tail_share_elliot"] == pytest.approx(0.5)  # head {i0,i1,i2}: 6 of 7 >= 5.6
    assert m["serendipity"] == pytest.approx((0.5 + 0 + 0.5) / 3)  # primitive {i0, i1}
    assert m["coverage"] == pytest.approx(4 / 5)
    assert m["gini"] == pytest.approx(10 / 30)  # counts sorted (0,1,1,2,2)
    # groups: head {i0}, mid {i1, i2}, tail {i3, i4}; nobody holds out a head item
    assert math.isnan(m["ndcg_head"]) and math.isnan(m["recall_head"])
    assert m["ndcg_mid"] == pytest.approx((1 + LG3) / 2)  # u1 {i1} rank 1, u2 {i2} rank 2
    assert m["recall_mid"] == pytest.approx(1.0)
    assert m["ndcg_tail"] == pytest.approx((LG3 + 0) / 2)  # u0 {i3} rank 2, u1 {i3} missed
    assert m["recall_tail"] == pytest.approx(0.5)
    assert m["ndcg_users_low"] == pytest.approx(n0)  # activity 2, 2, 3 -> u0 | u1 | u2
    assert m["ndcg_users_mid"] == pytest.approx(n1)
    assert m["ndcg_users_high"] == pytest.approx(n0)
    assert m["ild"] == pytest.approx((0 + (1 - c) + (1 - c)) / 3)
    # u0: all cosines 0 -> 1; u1: (1 + 0 + c + c)/4; u2: item i4 -> c, item i2 -> 1/3
    u1 = 1 - (1 + 2 * c) / 4
    u2 = 1 - (c + 1 / 3) / 2
    assert m["unexpectedness"] == pytest.approx((1 + u1 + u2) / 3)
    assert m["ild_genre"] == pytest.approx((0.5 + 1 + 1) / 3)  # J({B},{B,C}) = 1/2
    # u0: p = (A 1), q~_A = 0.01 -> ln 100; u1: p = (.5 A, .5 B), q = (.5 A, .5 C)
    # -> .5 ln(.5/.5) + .5 ln(.5/.005); u2: p = (2/3, 1/6, 1/6), q = (0, .5, .5)
    ln100 = math.log(100)
    kl2 = (2 / 3) * math.log((2 / 3) / (0.01 * 2 / 3)) + (1 / 3) * math.log(
        (1 / 6) / (0.99 * 0.5 + 0.01 / 6)
    )
    assert m["calibration_kl"] == pytest.approx((ln100 + 0.5 * ln100 + kl2) / 3)


def test_compute_metrics_padding_truncation_and_optional_keys():
    data = _tiny()
    truth = {0: np.array([3]), 1: np.array([1, 3]), 2: np.array([2])}
    users = np.array([0, 1, 2])
    base = compute_metrics(np.array([[2, 3], [1, 4], [4, 2]]), users, truth, data, 2)
    # -1 is dropped first (as in the per-list functions), then items past k are ignored
    wide = compute_metrics(np.array([[2, 3, 0], [1, -1, 4], [-1, 4, 2]]), users, truth, data, 2)
    for key, value in base.items():
        assert wide[key] == pytest.approx(value, nan_ok=True), key
    # lists shorter than k: serendipity still divides by k (Ge et al.), NDCG's ideal uses k
    narrow = compute_metrics(
        np.array([[2, 3], [1, 4], [4, 2]]), users, truth, data, 3, primitive_size=2
    )
    assert narrow["serendipity"] == pytest.approx((1 / 3 + 0 + 1 / 3) / 3)
    assert narrow["ndcg"] == pytest.approx(base["ndcg"])  # min(k, |relevant|) <= 2 here
    short = compute_metrics(np.array([[3, -1], [-1, -1], [2, -1]]), users, truth, data, 2)
    assert short["hit_rate"] == pytest.approx(2 / 3)
    assert short["ndcg"] == pytest.approx((1 + 0 + 1) / 3)
    assert short["ild"] == 0.0
    plain = Dataset.from_frames(
        pd.DataFrame({"user_id": ["a", "b"], "item_id": ["x", "y"]})
    )
    m = compute_metrics(np.array([[1], [0]]), np.array([0, 1]), {0: [1], 1: [1]}, plain, 1)
    assert {"ild", "unexpectedness", "ild_genre", "calibration_kl"}.isdisjoint(m)
    assert m["ndcg"] == pytest.approx(0.5)


def test_compute_metrics_errors_name_the_bad_value():
    data = _tiny()
    users = np.array([0, 1])
    truth = {0: np.array([3]), 1: np.array([1])}
    ok = np.array([[2, 3], [1, 4]])
    with pytest.raises(ValueError, match="no entry for user 1"):
        compute_metrics(ok, users, {0: np.array([3])}, data, 2)
    with pytest.raises(ValueError, match=r"truth\[1\] is empty"):
        compute_metrics(ok, users, {0: np.array([3]), 1: np.array([], np.int64)}, data, 2)
    with pytest.raises(ValueError, match="item index 9"):
        compute_metrics(np.array([[2, 9], [1, 4]]), users, truth, data, 2)
    with pytest.raises(ValueError, match="user 1 repeats item 4"):
        compute_metrics(np.array([[2, 3], [4, 4]]), users, truth, data, 2)
    with pytest.raises(ValueError, match="3 row"):
        compute_metrics(np.array([[2, 3], [1, 4], [0, 1]]), users, truth, data, 2)
    with pytest.raises(ValueError, match="index 7, outside the 3 training users"):
        compute_metrics(ok, np.array([0, 7]), truth, data, 2)
    with pytest.raises(ValueError, match="k must be a positive integer, got 0"):
        compute_metrics(ok, users, truth, data, 0)


def test_compute_metrics_equals_mean_of_per_list_functions():
    data = make_blocks(n_users=60, n_items=30, seed=3)
    rng = np.random.default_rng(7)
    users = np.arange(data.n_users)
    k = 6
    recs = np.stack([rng.permutation(data.n_items)[:k] for _ in users])
    recs[::5, -2:] = -1  # some short lists
    truth = {int(u): rng.choice(data.n_items, int(rng.integers(1, 9)), replace=False)
             for u in users}
    m = compute_metrics(recs, users, truth, data, k, primitive_size=5)
    pop, vec, cats = data.item_popularity, data.item_vectors, data.item_categories
    assert vec is not None and cats is not None
    head = head_by_item_share(pop, 0.2)
    ell = head_by_interaction_share(pop, 0.8)
    prim = primitive_list(pop, 5)
    expected = {
        "ndcg": [ndcg(recs[u], truth[u], k) for u in users],
        "recall": [recall(recs[u], truth[u], k) for u in users],
        "hit_rate": [hit_rate(recs[u], truth[u], k) for u in users],
        "mrr": [mrr(recs[u], truth[u], k) for u in users],
        "map": [average_precision(recs[u], truth[u], k) for u in users],
        "novelty": [novelty(recs[u], pop, data.n_users) for u in users],
        "arp": [arp(recs[u], pop) for u in users],
        "tail_share": [tail_share(recs[u], head) for u in users],
        "tail_share_elliot": [tail_share(recs[u], ell) for u in users],
        "serendipity": [serendipity_ge(recs[u], truth[u], prim, k) for u in users],
        "ild": [ild_cosine(recs[u], vec) for u in users],
        "ild_genre": [ild_jaccard(recs[u], cats) for u in users],
        "unexpectedness": [unexpectedness(recs[u], data.history(u), vec) for u in users],
        "calibration_kl": [calibration_kl(data.history(u), recs[u], cats) for u in users],
    }
    for key, vals in expected.items():
        assert m[key] == pytest.approx(float(np.mean(vals)), abs=1e-9), key
    assert m["coverage"] == pytest.approx(coverage(recs, data.n_items))
    assert m["gini"] == pytest.approx(gini(recs, data.n_items))
    groups = popularity_groups(pop)
    for g, name in enumerate(("head", "mid", "tail")):
        vals = [
            ndcg(recs[u], truth[u][groups[truth[u]] == g], k)
            for u in users
            if (groups[truth[u]] == g).any()
        ]
        assert m[f"ndcg_{name}"] == pytest.approx(float(np.mean(vals)), abs=1e-9), name
    order = np.lexsort((users, data.user_activity[users]))
    nd = np.array(expected["ndcg"])
    for part, name in zip(np.array_split(order, 3), ("low", "mid", "high"), strict=True):
        assert m[f"ndcg_users_{name}"] == pytest.approx(float(nd[part].mean())), name


def test_compute_metrics_is_fast():
    rng = np.random.default_rng(0)
    n_users, n_items, k = 943, 1682, 10
    rows = [
        (f"u{u}", f"i{i}")
        for u in range(n_users)
        for i in rng.choice(n_items, size=int(rng.integers(20, 150)), replace=False)
    ]
    genres = ["|".join(rng.choice(list("ABCDEFGHIJKLMNOPQRS"), size=2, replace=False))
              for _ in range(n_items)]
    items = pd.DataFrame({"item_id": [f"i{i}" for i in range(n_items)], "genres": genres})
    data = Dataset.from_frames(pd.DataFrame(rows, columns=["user_id", "item_id"]), items)
    data = data.with_item_vectors(rng.normal(size=(n_items, 384)))
    recs = np.stack([rng.permutation(n_items)[:k] for _ in range(n_users)])
    truth = {u: rng.choice(n_items, int(rng.integers(1, 30)), replace=False)
             for u in range(n_users)}
    users = np.arange(n_users)
    m = compute_metrics(recs, users, truth, data, k)
    assert all(not math.isnan(v) for v in m.values())
