"""Shared pieces: the discovery knob on Query, normalisation, head mask, genre shares."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given
from hypothesis import strategies as st

from serendip.rerank.base import csr_rows, genre_shares, head_mask, minmax, people, row_columns
from serendip.types import Query
from tests.conftest import make_blocks


@pytest.mark.parametrize("bad", [1.5, -0.1, float("nan")])
def test_query_refuses_discovery_outside_unit_interval(bad: float) -> None:
    with pytest.raises(ValueError, match=str(bad)):
        Query(None, discovery=bad)


@pytest.mark.parametrize("ok", [None, 0, 0.0, 0.5, 1])
def test_query_accepts_discovery(ok: float | None) -> None:
    q = Query(None, discovery=ok)
    assert q.discovery == ok
    assert q.discovery is None or isinstance(q.discovery, float)


def test_minmax() -> None:
    np.testing.assert_allclose(minmax(np.array([3.0, 1.0, 2.0])), [1.0, 0.0, 0.5])
    np.testing.assert_array_equal(minmax(np.array([4.0, 4.0])), [1.0, 1.0])
    assert minmax(np.zeros(0)).size == 0


@given(st.lists(st.floats(-1e9, 1e9), min_size=1, max_size=50))
def test_minmax_properties(xs: list[float]) -> None:
    x = np.asarray(xs)
    y = minmax(x)
    assert np.all((y >= 0) & (y <= 1))
    assert y.max() == 1.0
    # order preserving (never reverses two items)
    i, j = np.argsort(x, kind="stable")[[0, -1]]
    assert y[i] <= y[j]


def test_head_mask_is_the_most_popular_share() -> None:
    pop = np.array([5.0, 50, 1, 30, 2, 2, 9, 0, 40, 3])
    mask = head_mask(pop, 0.2)
    np.testing.assert_array_equal(np.flatnonzero(mask), [1, 8])
    assert head_mask(pop, 0.25).sum() == 3  # ceil(2.5)


def test_genre_shares_weight_each_genre_by_one_over_count() -> None:
    data = make_blocks()
    m, names = genre_shares(data)
    assert sp.issparse(m) and m.nnz == data.n_items
    assert list(names) == ["A", "B"]
    np.testing.assert_array_equal(np.asarray(m.sum(axis=1)).ravel(), np.ones(data.n_items))
    assert m[0, 0] == 1.0 and m[-1, 1] == 1.0


def test_people_grammar() -> None:
    assert people(0) == "nobody has"
    assert people(1) == "only 1 person has"
    assert people(12) == "only 12 people have"


def test_csr_rows_equals_scipy_row_indexing():
    """Rows in the given order, repeats and empty rows included, as ``m[rows]``."""
    rng = np.random.default_rng(0)
    dense = rng.random((30, 12)) * (rng.random((30, 12)) < 0.3)
    dense[4] = 0.0
    m = sp.csr_matrix(dense.astype(np.float32))
    for rows in (np.array([3, 4, 3, 29, 0]), np.arange(30)[::-1], np.zeros(0, np.int64),
                 np.array([4, 4])):
        got, want = csr_rows(m, rows), m[rows]
        assert got.shape == want.shape and got.dtype == want.dtype
        np.testing.assert_array_equal(got.toarray(), want.toarray())
        np.testing.assert_array_equal(got.indptr, want.indptr)
        np.testing.assert_array_equal(got.indices, want.indices)
        np.testing.assert_array_equal(row_columns(m, rows), want.indices)  # no matrix built
