"""Multi-objective greedy reranker: weights, single-objective known answers, reasons."""

from __future__ import annotations

import numpy as np
import pytest

from serendip.errors import ConfigError
from serendip.rerank import MultiObjective
from serendip.types import ItemList, Query
from tests.conftest import make_blocks

ZERO = dict(relevance=0, novelty=0, tail=0, diversity=0, unexpectedness=0, calibration=0)


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
    assert out.reasons[0][-1].startswith("long-tail pick")


def test_diversity_only_alternates_blocks() -> None:
    out = only("diversity")(Query(0, discovery=1.0), a_first(), 2)
    assert out.items[0] == 0 and out.items[1] >= 10
    assert out.reasons[1][-1].startswith("adds variety")


def test_unexpectedness_only_leaves_the_history_block() -> None:
    data = make_blocks()
    out = only("unexpectedness")(Query(0, data.history(0), discovery=1.0), a_first(), 3)
    assert set(out.items.tolist()) <= set(range(10, 20))
    assert out.reasons[0][-1].startswith("unexpected for you")


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
