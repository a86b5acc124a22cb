"""Hybrid: cold_fill puts never-seen items on the blend's scale, in both scoring paths."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import pytest

from serendip.models import SCORERS, Hybrid
from serendip.models.base import BatchScorer
from serendip.models.retrieval import RetrievalConfig, Retriever
from serendip.types import Query
from tests.conftest import make_blocks


class Fixed(BatchScorer):
    """A stand-in scorer of a given type that gives every query the same scores."""

    name: ClassVar[str] = "fixed"

    def __init__(self, kind: str, scores: Sequence[float]) -> None:
        super().__init__()
        self.name = kind  # type: ignore[misc]
        self._state = {"scores": np.asarray(scores, dtype=np.float64)}

    def score_many(self, queries: Sequence[Query]) -> np.ndarray:
        return np.tile(self._require_trained()["scores"], (len(queries), 1))


# six items; item 5 is new (popularity 0), so the collaborative model gives it 0
POP = np.array([9.0, 5.0, 3.0, 2.0, 1.0, 0.0])
COLLAB = [10.0, 4.0, 1.0, 0.0, 0.0, 0.0]  # mean 2.5, variance 79.5 / 6
TEXT = [3.0, 2.0, 1.0, 0.0, -1.0, 2.5]  # mean 1.25, variance 11.875 / 6
SC, ST = np.sqrt(79.5 / 6), np.sqrt(11.875 / 6)
ZC = (np.array(COLLAB) - 2.5) / SC
ZT = (np.array(TEXT) - 1.25) / ST


def fixed(**kinds: Sequence[float]) -> dict[str, BatchScorer]:
    return {k: Fixed(k, v) for k, v in kinds.items()}


def test_cold_item_takes_the_members_score_at_its_text_quantile_hand_computed():
    """Sorted by text, the seen items are 4, 3, 2, 1, 0 (positions 0..4); the new item's text
    score 2.5 lies halfway between items 1 and 0: position 3.5.  The collaborative scores of the
    seen items, sorted, are 0, 0, 1, 4, 10: at position 3.5 that is 7, so z = (7 - 2.5) / sd."""
    scorers = fixed(ease=COLLAB, textcf=TEXT)
    q = [Query(0, np.array([0]))]
    # textcf has no weight here: it is read from the trained scorers all the same
    filled = Hybrid(scorers, {"ease": 1.0}, POP).score_many(q)[0]
    np.testing.assert_allclose(filled, [*ZC[:5], 4.5 / SC])
    plain = Hybrid(scorers, {"ease": 1.0}, POP, cold_fill=False).score_many(q)[0]
    np.testing.assert_allclose(plain, ZC)
    # blended with textcf itself: 2 * z_ease + 1 * z_text, the new item's z_ease filled
    both = Hybrid(scorers, {"ease": 2.0, "textcf": 1.0}, POP).score_many(q)[0]
    np.testing.assert_allclose(both, 2 * np.r_[ZC[:5], 4.5 / SC] + ZT)


@pytest.mark.parametrize(("text_new", "collab_raw"), [
    (5.0, 10.0),  # above every seen item: the member's best seen score
    (-3.0, 0.0),  # below every seen item: its worst
    (1.0, 1.0),  # equal to item 2's text: item 2's place (position 2), collab 1
])
def test_quantile_fill_at_the_ends_and_on_ties(text_new, collab_raw):
    text = [*TEXT[:5], text_new]
    h = Hybrid(fixed(ease=COLLAB, textcf=text), {"ease": 1.0}, POP)
    assert h.score_many([Query(None)])[0][5] == pytest.approx((collab_raw - 2.5) / SC)


def test_tied_reference_scores_share_their_mean_position():
    # text of items 1 and 2 tied at 1.0 (positions 2 and 3 -> 2.5); collab sorted 0, 0, 1, 4, 10
    text = [3.0, 1.0, 1.0, 0.0, -1.0, 1.0]
    h = Hybrid(fixed(ease=COLLAB, textcf=text), {"ease": 1.0}, POP)
    assert h.score_many([Query(None)])[0][5] == pytest.approx((2.5 - 2.5) / SC)


def test_fill_source_textcf_then_semantic_and_text_towers_kept():
    sem = Fixed("semantic", [0.0, 1.0, 2.0, 3.0, 4.0, 5.0])  # the reverse order of TEXT's
    tower = Fixed("two_tower", [0.0, 1.0, 0.0, 1.0, 0.0, 1.0])  # reaches new items by itself
    scorers = {"ease": Fixed("ease", COLLAB), "sem": sem, "tt": tower,
               "my_textcf": Fixed("textcf", TEXT)}
    h = Hybrid(scorers, {"ease": 1.0, "tt": 1.0}, POP)
    assert h.cold_source is not None and h.cold_source[0] == "my_textcf"
    q = [Query(None)]
    # ease's fill comes from textcf (4.5 / SC); the two-tower's own z (+1) is kept
    assert h.score_many(q)[0][5] == pytest.approx(4.5 / SC + 1.0)
    no_textcf = {k: v for k, v in scorers.items() if k != "my_textcf"}
    h2 = Hybrid(no_textcf, {"ease": 1.0}, POP)
    assert h2.cold_source is not None and h2.cold_source[0] == "sem"
    # semantic ranks the new item above every seen item: ease's best seen score
    assert h2.score_many(q)[0][5] == pytest.approx(ZC[0])
    h3 = Hybrid({"ease": Fixed("ease", COLLAB)}, {"ease": 1.0}, POP)  # nothing to fill from
    assert h3.cold_source is None and h3.cold is None
    assert h3.score_many(q)[0][5] == pytest.approx(ZC[5])
    # no new items, or only text members: nothing to do
    assert Hybrid(scorers, {"ease": 1.0}, POP + 1).cold is None
    assert Hybrid(scorers, {"my_textcf": 1.0}, POP).cold is None


def test_reference_is_an_even_sample_of_seen_items_in_large_catalogs(monkeypatch):
    import serendip.models.hybrid as hybrid_module

    monkeypatch.setattr(hybrid_module, "COLD_REFERENCE", 3)
    h = Hybrid(fixed(ease=COLLAB, textcf=TEXT), {"ease": 1.0}, POP)
    assert h.reference.tolist() == [0, 2, 4]  # seen items 0..4: first, middle, last
    # sorted by text: 4, 2, 0 (positions 0..2); 2.5 lies 3/4 of the way from item 2 (1.0) to
    # item 0 (3.0): position 1.75; collab sorted 0, 1, 10 -> 1 + 0.75 * 9
    assert h.score_many([Query(None)])[0][5] == pytest.approx((1 + 0.75 * 9 - 2.5) / SC)


@pytest.fixture(scope="module")
def cold_data():
    """Blocks of 40 items; items 3, 4 (block A) and 27 (block B) have no interactions."""
    data = make_blocks(n_users=60, n_items=40)
    inter = data.interactions
    return data.with_interactions(inter[~inter.item.isin([3, 4, 27])])


@pytest.fixture(scope="module")
def cold_trained(cold_data):
    out = {}
    for name in ("popularity", "ease", "als", "semantic", "textcf", "transition", "knn"):
        m = SCORERS[name]()
        m.train(cold_data)
        out[name] = m
    return out


def test_new_items_rank_with_their_block(cold_data, cold_trained):
    """Known answer: a block-A user gets the new A items above every B item, which the
    unfilled blend puts them below."""
    pop = cold_data.item_popularity
    assert np.flatnonzero(pop == 0).tolist() == [3, 4, 27]
    weights = {"ease": 1.0, "als": 0.5, "transition": 0.25, "popularity": 0.1}
    filled = Hybrid(cold_trained, weights, pop)
    plain = Hybrid(cold_trained, weights, pop, cold_fill=False)
    for u in (0, 5, 29):  # block A users
        q = [Query(u, cold_data.history(u))]
        f, p = filled.score_many(q)[0], plain.score_many(q)[0]
        b_items = np.r_[20:27, 28:40]
        assert min(f[3], f[4]) > f[b_items].max()
        assert max(p[3], p[4]) < np.median(p[b_items])
        assert f[27] < min(f[3], f[4])  # the new B item stays below the new A items
        np.testing.assert_allclose(np.delete(f, [3, 4, 27]), np.delete(p, [3, 4, 27]))


@pytest.mark.parametrize("weights", [
    {"popularity": 0.3, "ease": 1.0, "als": 0.5, "transition": 0.25},  # textcf read, not blended
    {"ease": 1.0, "textcf": 0.7, "semantic": 0.4, "knn": 0.5},
])
@pytest.mark.parametrize(("tail_boost", "reference"), [(0.0, 2048), (2.0, 2048), (0.0, 10)])
@pytest.mark.parametrize("cold_index", [False, True])
def test_retrieval_scores_equal_full_scores_with_new_items(cold_data, cold_trained, weights,
                                                           tail_boost, reference, cold_index,
                                                           monkeypatch):
    import serendip.models.hybrid as hybrid_module

    monkeypatch.setattr(hybrid_module, "COLD_REFERENCE", reference)
    hybrid = Hybrid(cold_trained, weights, cold_data.item_popularity, tail_boost)
    assert hybrid.reference.size == min(reference, 37)
    retriever = Retriever(cold_trained, cold_data.n_items,
                          RetrievalConfig(mode="ann", per_source=4, exact_flops=0, n_lists=4),
                          cold=np.flatnonzero(cold_data.item_popularity == 0) if cold_index
                          else None)
    assert bool(retriever.cold_spaces) == cold_index
    for q in (Query(0, cold_data.history(0)), Query(45, cold_data.history(45)),
              Query(None, np.array([3, 30])), Query(None)):
        full = hybrid.score_many([q])[0]
        items = np.array([0, 3, 4, 17, 27, 39])
        np.testing.assert_allclose(hybrid.score_items(q, retriever, items), full[items],
                                   rtol=1e-4, atol=1e-4)
        # few items per source: the new items that belong in the top come back all the same
        got = hybrid.retrieve(q, retriever, 6)
        np.testing.assert_allclose(got.scores, full[got.items], rtol=1e-4, atol=1e-4)
        want = full.copy()
        want[q.history] = -np.inf
        top = np.argsort(-want, kind="stable")[:6]
        assert {3, 4, 27} & set(top.tolist()) <= set(got.items.tolist())


def test_cold_fill_reaches_the_retrieved_list(cold_data, cold_trained):
    """With every source asked for 2 items, the new A items still come back for an A user."""
    weights = {"ease": 1.0, "als": 0.5, "transition": 0.25}
    retriever = Retriever(cold_trained, cold_data.n_items,
                          RetrievalConfig(mode="ann", per_source=2))
    q = Query(0, cold_data.history(0))
    got = Hybrid(cold_trained, weights, cold_data.item_popularity).retrieve(q, retriever, 12)
    assert {3, 4} <= set(got.items.tolist())
    plain = Hybrid(cold_trained, weights, cold_data.item_popularity, cold_fill=False)
    assert not {3, 4} & set(plain.retrieve(q, retriever, 12).items.tolist())


def test_never_seen_items_found_through_their_own_index(cold_data, cold_trained):
    """With an index over the never-seen items (here one list, so its search is exact), the
    cold candidates come from a search, not a scan, and a block-A user still gets the new A
    items with their exact blend scores; without the cold set the retriever builds none."""
    weights = {"ease": 1.0, "als": 0.5, "transition": 0.25, "textcf": 0.3}
    cold = np.flatnonzero(cold_data.item_popularity == 0)
    config = RetrievalConfig(mode="ann", per_source=2, exact_flops=0, n_lists=1)
    with_index = Retriever(cold_trained, cold_data.n_items, config, cold=cold)
    assert set(with_index.cold_spaces) == {with_index.space_of["textcf"]}
    assert not Retriever(cold_trained, cold_data.n_items, config).cold_spaces
    hybrid = Hybrid(cold_trained, weights, cold_data.item_popularity)
    q = Query(0, cold_data.history(0))
    views = hybrid._views(q, with_index)
    search = hybrid._cold_search(views, with_index)
    assert search is not None
    assert set(search(2).tolist()) == {3, 4}  # the two new A items, not the new B item
    got = hybrid.retrieve(q, with_index, 12)
    assert {3, 4} <= set(got.items.tolist())
    full = hybrid.score_many([q])[0]
    np.testing.assert_allclose(got.scores, full[got.items], rtol=1e-4, atol=1e-4)
    # another cold set than the one the index holds: no index, the exact scan
    other = Hybrid(cold_trained, weights, cold_data.item_popularity + (np.arange(40) == 27))
    assert other._cold_search(other._views(q, with_index), with_index) is None
