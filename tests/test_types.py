from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from serendip.types import ItemList, Query


@given(st.lists(st.integers(0, 4), min_size=0, max_size=60), st.integers(0, 70))
def test_top_matches_stable_sort(scores, k):
    lst = ItemList(np.arange(len(scores)) * 3, np.asarray(scores, dtype=float))
    ref = np.argsort(-np.asarray(scores, dtype=float), kind="stable")[:k] * 3
    assert lst.top(k).items.tolist() == ref.tolist()


def test_itemlist_validation_and_helpers():
    with pytest.raises(ValueError, match="same length"):
        ItemList([1, 2], [0.5])
    with pytest.raises(ValueError, match="reasons"):
        ItemList([1, 2], [0.5, 0.4], reasons=(("a",),))
    lst = ItemList([5, 6, 7], [0.1, 0.9, 0.5]).with_reasons([["a"], ["b"], ["c"]])
    assert lst.exclude(np.array([6])).items.tolist() == [5, 7]
    assert lst.top(2).reason_lists() == [["b"], ["c"]]
    assert lst.with_field("p", np.array([1, 2, 3])).take([2]).fields["p"].tolist() == [3]
    with pytest.raises(ValueError, match="-1"):
        lst.top(-1)


def test_query_discovery_bounds():
    assert Query(None, [1, 2], discovery=0.3).history.tolist() == [1, 2]
    with pytest.raises(ValueError, match="1.5"):
        Query(None, discovery=1.5)
