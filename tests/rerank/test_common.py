"""Common checks run against every reranker in RERANKERS (one line per new reranker: none)."""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serendip.component import Reranker
from serendip.data import Dataset
from serendip.errors import ConfigError, NotTrainedError, UnknownIdError
from serendip.rerank import RERANKERS
from serendip.types import ItemList, Query
from tests.conftest import make_blocks

ALL = sorted(RERANKERS)


@functools.cache
def trained(name: str) -> Reranker:
    r = RERANKERS[name]()
    r.train(make_blocks())
    return r


def candidates(seed: int = 0, n: int = 20) -> ItemList:
    """All items of make_blocks, scored at random, with one existing reason each."""
    rng = np.random.default_rng(seed)
    items = rng.permutation(n)
    scores = rng.normal(size=n) * 3 + 5
    return ItemList(items, scores, tuple((f"scored {i}",) for i in items))


def query(discovery: float | None = 1.0, user: int = 3) -> Query:
    return Query(user, make_blocks().history(user)[:5], discovery=discovery)


def top_k(cand: ItemList, k: int) -> np.ndarray:
    """Reference top-k: highest score first, ties keep the earlier entry (stable sort)."""
    return cand.items[np.argsort(-cand.scores, kind="stable")[:k]]


def check_list(out: ItemList, cand: ItemList, k: int) -> None:
    assert len(out) == min(k, len(cand))
    assert set(out.items.tolist()) <= set(cand.items.tolist())
    assert np.unique(out.items).size == len(out)
    finite = out.scores[np.isfinite(out.scores)]
    assert np.all(np.diff(finite) <= 1e-12), out.scores
    # -inf (fill) entries only at the end
    assert np.all(np.isfinite(out.scores[: finite.size]))
    assert not np.isnan(out.scores).any()
    pos = {int(i): p for p, i in enumerate(cand.items)}
    old = cand.reason_lists()
    for item, reasons, rel in zip(
        out.items, out.reason_lists(), out.fields["relevance"], strict=True
    ):
        p = pos[int(item)]
        assert reasons[:-1] == old[p]
        assert isinstance(reasons[-1], str) and len(reasons[-1]) > 10
        assert rel == cand.scores[p]


@pytest.mark.parametrize("name", ALL)
class TestCommon:
    def test_registry_names(self, name: str) -> None:
        cls = RERANKERS[name]
        assert cls.name == name
        assert issubclass(cls, Reranker)

    def test_config_json_round_trip(self, name: str) -> None:
        cls = RERANKERS[name]
        for cfg in (cls().config, cls(discovery=0.2, strength=0.3).config):
            again = cls.config_class.model_validate_json(cfg.model_dump_json())
            assert again == cfg
            assert cls(again.model_dump()).config == cfg

    def test_config_fields_are_documented(self, name: str) -> None:
        for field_name, info in RERANKERS[name].config_class.model_fields.items():
            assert info.description, field_name

    def test_refuses_unknown_key(self, name: str) -> None:
        with pytest.raises(ConfigError, match="no_such_knob"):
            RERANKERS[name]({"no_such_knob": 1})

    @pytest.mark.parametrize("field", ["discovery", "strength"])
    def test_refuses_out_of_range(self, name: str, field: str) -> None:
        with pytest.raises(ConfigError, match="1.5"):
            RERANKERS[name]({field: 1.5})

    def test_untrained_call_raises(self, name: str) -> None:
        r = RERANKERS[name]()
        assert not r.is_trained
        with pytest.raises(NotTrainedError, match=name):
            r(query(), candidates(), 5)

    def test_save_load_same_output(self, name: str, tmp_path) -> None:
        r = RERANKERS[name](strength=0.9)
        r.train(make_blocks())
        r.save(tmp_path / name)
        again = type(r).load(tmp_path / name)
        assert again.config == r.config
        for d in (0.0, 0.5, 1.0):
            a, b = r(query(d), candidates(), 7), again(query(d), candidates(), 7)
            np.testing.assert_array_equal(a.items, b.items)
            np.testing.assert_array_equal(a.scores, b.scores)
            assert a.reasons == b.reasons

    @pytest.mark.parametrize("k", [0, 1, 5, 20, 50])
    def test_output_contract(self, name: str, k: int) -> None:
        cand = candidates()
        for d in (0.0, 0.3, 1.0):
            check_list(trained(name)(query(d), cand, k), cand, k)

    @pytest.mark.parametrize("k", [1, 5, 10])
    def test_lam_zero_is_top_k(self, name: str, k: int) -> None:
        cand = candidates(seed=4)
        top = top_k(cand, k)
        out = trained(name)(query(0.0), cand, k)
        np.testing.assert_array_equal(out.items, top)
        # the same through the config: strength 0 or default discovery 0
        for cfg in ({"strength": 0.0}, {"discovery": 0.0}):
            r = RERANKERS[name](cfg)
            r.train(make_blocks())
            np.testing.assert_array_equal(r(query(None), cand, k).items, top)

    def test_discovery_changes_the_list(self, name: str) -> None:
        """At full discovery the reranker must do something on blocks data (not a no-op)."""
        cand = ItemList(np.arange(20), np.r_[np.linspace(2, 1.5, 10), np.linspace(1.4, 0, 10)])
        r = RERANKERS[name](strength=1.0)
        r.train(make_blocks())
        q = Query(0, np.r_[make_blocks().history(0)[:6], 12], discovery=1.0)
        assert not np.array_equal(r(q, cand, 10).items, top_k(cand, 10))

    def test_deterministic(self, name: str) -> None:
        a = trained(name)(query(0.7), candidates(), 8)
        b = trained(name)(query(0.7), candidates(), 8)
        np.testing.assert_array_equal(a.items, b.items)
        assert a.reasons == b.reasons

    def test_query_discovery_overrides_config(self, name: str) -> None:
        r = RERANKERS[name](discovery=0.0, strength=1.0)
        r.train(make_blocks())
        assert r.trade_off(query(None)) == 0.0
        assert r.trade_off(query(0.25)) == 0.25

    def test_unscorable_candidates_come_last(self, name: str) -> None:
        cand = ItemList(np.arange(6), np.array([1.0, -np.inf, 0.5, 0.2, -np.inf, 0.9]))
        out = trained(name)(query(1.0), cand, 6)
        check_list(out, cand, 6)
        assert set(out.items[:4].tolist()) == {0, 2, 3, 5}
        np.testing.assert_array_equal(out.items[4:], [1, 4])
        assert np.all(np.isneginf(out.scores[4:]))

    def test_empty_and_single(self, name: str) -> None:
        assert len(trained(name)(query(), ItemList.empty(), 5)) == 0
        one = ItemList(np.array([7]), np.array([0.3]))
        out = trained(name)(query(), one, 5)
        np.testing.assert_array_equal(out.items, [7])

    def test_bad_input_is_refused_with_the_value(self, name: str) -> None:
        r = trained(name)
        with pytest.raises(ValueError, match="-1"):
            r(query(), candidates(), -1)
        with pytest.raises(UnknownIdError, match="99"):
            r(query(), ItemList(np.array([1, 99]), np.array([0.1, 0.2])), 2)
        with pytest.raises(UnknownIdError, match="123"):
            r(Query(0, np.array([123])), candidates(), 2)
        with pytest.raises(ValueError, match="nan"):
            r(query(), ItemList(np.array([1, 2]), np.array([0.1, np.nan])), 2)
        with pytest.raises(ValueError, match="appears more than once"):
            r(query(), ItemList(np.array([1, 1]), np.array([0.1, 0.2])), 2)

    def test_without_history(self, name: str) -> None:
        cand = candidates()
        check_list(trained(name)(Query(None, discovery=1.0), cand, 10), cand, 10)

    def test_genre_only_dataset(self, name: str) -> None:
        """Without encoder vectors, similarity falls back to the genre indicators."""
        blocks = make_blocks()
        data = Dataset.from_frames(
            blocks.interactions.assign(
                user_id=blocks.user_ids[blocks.interactions["user"]],
                item_id=blocks.item_ids[blocks.interactions["item"]],
            )[["user_id", "item_id", "timestamp"]],
            blocks.items,
        )
        assert data.item_vectors is None
        r = RERANKERS[name]()
        r.train(data)
        cand = candidates()
        check_list(r(query(1.0), cand, 10), cand, 10)

    @settings(
        max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
    )
    @given(
        scores=st.lists(
            st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False), min_size=1, max_size=20
        ),
        k=st.integers(0, 25),
        discovery=st.floats(0, 1),
        user=st.integers(0, 39),
        n_hist=st.integers(0, 8),
    )
    def test_properties(
        self, name: str, scores: list[float], k: int, discovery: float, user: int, n_hist: int
    ) -> None:
        n = len(scores)
        items = np.random.default_rng(n).permutation(20)[:n]
        cand = ItemList(items, np.asarray(scores))
        q = Query(user, make_blocks().history(user)[:n_hist], discovery=discovery)
        out = trained(name)(q, cand, k)
        check_list(out, cand, k)
        if discovery == 0.0:
            np.testing.assert_array_equal(out.items, top_k(cand, k))


def test_neither_vectors_nor_categories() -> None:
    inter = pd.DataFrame({"user_id": ["a", "a", "b"], "item_id": ["x", "y", "x"]})
    data = Dataset.from_frames(inter)
    cand = ItemList(np.array([0, 1]), np.array([0.2, 0.1]))
    for name, cls in RERANKERS.items():
        r = cls()
        if name in ("mmr", "dpp", "serendipity"):
            with pytest.raises(ValueError, match="item vectors"):
                r.train(data)
            continue
        r.train(data)
        check_list(r(Query(0, np.array([0]), discovery=1.0), cand, 2), cand, 2)


@pytest.mark.parametrize("name", ALL)
def test_record_false_gives_the_same_list(name: str) -> None:
    r = RERANKERS[name]()
    r.train(make_blocks())
    a = r(query(), candidates(), 5, record=False)
    b = r(query(), candidates(), 5)
    assert a.items.tolist() == b.items.tolist() and a.reasons == b.reasons
