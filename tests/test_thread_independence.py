"""Lists do not depend on the number of BLAS threads that made them.

A Ray worker runs one BLAS thread, the command that starts it all of the machine's; the
lists must be the same bits either way.  OpenBLAS splits a matrix-vector product among its
threads so that the rows past a thread's last full block take another code path, with
another summation order, so every product that decides a list is taken by numpy's own loops
(``serendip.models._util.row_dots``)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from threadpoolctl import threadpool_limits

from serendip.data import Dataset
from serendip.models._util import quadratic_form, row_dots, rows_times
from serendip.pipeline import FitConfig, Recommender
from serendip.types import Query


def _dump(lists: list) -> list:
    return [(x.items.tolist(), x.scores.tolist(), x.reason_lists()) for x in lists]


def test_row_dots_are_the_same_bits_with_one_and_two_threads() -> None:
    rng = np.random.default_rng(0)
    q32 = rng.standard_normal(384).astype(np.float32)
    for n in (7, 1499, 1500, 1501, 2048):  # row counts that split unevenly between threads
        rows = rng.standard_normal((n, 384)).astype(np.float32)
        with threadpool_limits(1):
            one = row_dots(rows, q32)
        with threadpool_limits(2):
            two = row_dots(rows, q32)
        assert one.dtype == np.float32 and np.array_equal(one, two)
        want = rows.astype(np.float64) @ q32.astype(np.float64)
        np.testing.assert_allclose(one, want, rtol=1e-4, atol=1e-4)
    m = rng.standard_normal((384, 384))
    q = rng.standard_normal(384)
    with threadpool_limits(1):
        a = quadratic_form(q, m)
    with threadpool_limits(2):
        b = quadratic_form(q, m)
    assert a == b and a == pytest.approx(float(q @ m @ q), rel=1e-9)
    # one person's scores or query vector: a single row, where BLAS runs a matrix-vector
    # product; more rows go to BLAS's matrix-matrix product
    items = rng.standard_normal((384, 1501)).astype(np.float32)
    for a_rows in (rng.standard_normal((1, 384)).astype(np.float32),
                   rng.standard_normal((5, 384)).astype(np.float32)):
        with threadpool_limits(1):
            one = rows_times(a_rows, items)
        with threadpool_limits(2):
            two = rows_times(a_rows, items)
        assert np.array_equal(one, two)
        np.testing.assert_allclose(one, a_rows.astype(np.float64) @ items, rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def retrieving() -> Recommender:
    """6,000 items in 40 topics (unit vectors of the encoder's width, 384: OpenBLAS splits
    products of that width unevenly), 1,500 people, candidate retrieval on
    with pools of 1,500 items per source: matrix-vector products of a thousand rows and more,
    which OpenBLAS runs on two threads."""
    rng = np.random.default_rng(1)
    n_items, n_users, dim = 6000, 1500, 384
    topic = rng.integers(0, 40, size=n_items)
    centres = rng.standard_normal((40, dim))
    vectors = centres[topic] + 0.7 * rng.standard_normal((n_items, dim))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    p = 1.0 / (rng.permutation(n_items) + 20.0) ** 0.8  # a long tail, most items seen
    p /= p.sum()
    rows = []
    for u in range(n_users):
        items = np.unique(rng.choice(n_items, size=int(rng.integers(5, 40)), p=p))
        rows += [(f"u{u}", f"i{i}", t) for t, i in enumerate(rng.permutation(items))]
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    items = pd.DataFrame({"item_id": [f"i{i}" for i in range(n_items)],
                          "title": [f"Item {i}" for i in range(n_items)],
                          "genre": [f"g{t % 7}|g{(t * 3) % 7}" for t in topic]})
    data = Dataset.from_frames(inter, items, category_column="genre")
    data = data.with_item_vectors(vectors[data.item_numbers(items["item_id"].tolist())])
    config = FitConfig(models={"popularity": {}, "als": {"factors": 16, "iterations": 3,
                                                         "use_gpu": False},
                               "semantic": {}, "textcf": {}, "transition": {}},
                       retrieval={"mode": "ann", "per_source": 1500, "exact_flops": 0})
    return Recommender.fit(data, config, progress=False)


@pytest.mark.parametrize("preset", ["balanced", "accurate"])
def test_lists_are_the_same_bits_with_one_and_two_blas_threads(retrieving: Recommender,
                                                               preset: str) -> None:
    assert retrieving.retriever() is not None
    pipe = retrieving.pipeline(preset)
    users = [str(u) for u in retrieving.data.user_ids[:120]]
    queries = [pipe.query(u) for u in users]
    with threadpool_limits(1):
        one = _dump(pipe.recommend_many(queries, 10))
    with threadpool_limits(2):
        two = _dump(pipe.recommend_many(queries, 10))
    assert one == two
    # the blend's exact scores of the 400 retrieved candidates, which the lists are made from
    retriever = retrieving.retriever()
    assert retriever is not None
    d = pipe.preset.internal_discovery(pipe.preset.discovery)
    for q0 in queries:
        q = Query(q0.user, q0.history, q0.text, discovery=d)
        with threadpool_limits(1):
            a = pipe.hybrid.retrieve(q, retriever, 400)
        with threadpool_limits(2):
            b = pipe.hybrid.retrieve(q, retriever, 400)
        assert np.array_equal(a.items, b.items) and np.array_equal(a.scores, b.scores)


def test_forked_processes_give_the_same_lists_on_a_retrieval_model(retrieving: Recommender
                                                                   ) -> None:
    """``recommend --processes``: each forked process runs one BLAS thread, the parent two."""
    from serendip.distributed import recommend_batch_local

    pipe = retrieving.pipeline("balanced")
    queries = [pipe.query(str(u)) for u in retrieving.data.user_ids[:600]]
    with threadpool_limits(2):
        one = _dump(pipe.recommend_many(queries, 10))
        forked = _dump(recommend_batch_local(pipe, queries, 10, processes=2))
    assert one == forked
