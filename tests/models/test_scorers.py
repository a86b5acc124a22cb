"""Common checks every scorer passes (one line per new model), plus known answers."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from serendip.component import Component
from serendip.data import Dataset
from serendip.errors import ConfigError, DataError, NotTrainedError
from serendip.models import EASE, SCORERS, TextCF, Transition
from serendip.types import Query
from tests.conftest import make_blocks

ALL = sorted(SCORERS)


@pytest.fixture(scope="module")
def data() -> Dataset:
    return make_blocks()


@pytest.fixture(scope="module")
def trained(data):
    out = {}
    for name in ALL:
        m = SCORERS[name]()
        m.train(data)
        out[name] = m
    return out


@pytest.mark.parametrize("name", ALL)
def test_config_round_trip_and_validation(name):
    cls = SCORERS[name]
    m = cls()
    again = cls(json.loads(json.dumps(m.config.model_dump())))
    assert again.config == m.config
    with pytest.raises(ConfigError, match="not_a_field"):
        cls({"not_a_field": 1})


@pytest.mark.parametrize("name", ALL)
def test_untrained_raises(name):
    with pytest.raises(NotTrainedError, match=name):
        SCORERS[name]().score(Query(0, [1, 2]))


@pytest.mark.parametrize("name", ALL)
def test_save_load_identical(name, trained, data, tmp_path):
    m = trained[name]
    m.save(tmp_path / name)
    back = SCORERS[name].load(tmp_path / name)
    q = [Query(u, data.history(u)) for u in (0, 25)]
    np.testing.assert_allclose(back.score_many(q), m.score_many(q), rtol=1e-6)


@pytest.mark.parametrize("name", ALL)
def test_batch_equals_single_and_shape(name, trained, data):
    m = trained[name]
    qs = [Query(u, data.history(u)) for u in range(0, 40, 7)]
    batch = m.score_many(qs)
    assert batch.shape == (len(qs), data.n_items)
    assert np.isfinite(batch).all()
    for row, q in zip(batch, qs, strict=True):
        np.testing.assert_allclose(m.score(q), row, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ALL)
def test_cheap_forms_equal_full_scores(name, trained, data):
    """A factor form (score = q . f_j + b) or a sparse form gives exactly ``score_many``."""
    m = trained[name]
    qs = [Query(u, data.history(u)) for u in (0, 13, 33)] + [Query(None, data.history(5))]
    full = m.score_many(qs)
    form = m.factor_space()
    if form is not None:
        _, items = form
        q, b = m.query_factors(qs)
        assert items.shape[0] == data.n_items and q.shape == (len(qs), items.shape[1])
        np.testing.assert_allclose(q @ items.T.astype(np.float64) + b[:, None], full,
                                   rtol=1e-5, atol=1e-5)
    sparse = m.sparse_scores(qs)
    if sparse is not None:
        np.testing.assert_allclose(sparse.toarray(), full, rtol=1e-6, atol=1e-9)
    expected = {"als", "popularity", "semantic", "textcf", "two_tower", "sequential"}
    assert (form is not None) == (name in expected), name
    assert (sparse is not None) == (name == "transition"), name


@pytest.mark.parametrize("name", [n for n in ALL if n != "popularity"])
def test_known_answer_on_blocks(name, trained, data):
    """A user of block A gets block-A items ranked above block-B items (unseen ones)."""
    m = trained[name]
    for u, own in ((0, range(0, 10)), (30, range(10, 20))):
        q = Query(u, data.history(u))
        s = m.score(q)
        unseen_own = [i for i in own if i not in set(q.history)]
        other = [i for i in range(20) if i not in own]
        assert min(s[unseen_own]) > max(s[other]), name


@pytest.mark.parametrize("name", ALL)
def test_anonymous_history_works(name, trained, data):
    s = trained[name].score(Query(None, data.history(3)))
    assert s.shape == (data.n_items,) and np.isfinite(s).all()


def test_ease_matches_per_column_ridge():
    """Each EASE column is a ridge regression of that item on all the others (Steck 2019)."""
    rng = np.random.default_rng(1)
    x = (rng.random((30, 8)) < 0.4).astype(float)
    rows, cols = np.nonzero(x)
    inter = pd.DataFrame({"user_id": rows.astype(str), "item_id": cols.astype(str)})
    items = pd.DataFrame({"item_id": [str(i) for i in range(8)]})
    d = Dataset.from_frames(inter, items)
    lam = 3.0
    m = EASE(l2=lam)
    m.train(d)
    b = m._state["weights"]
    xm = d.matrix.toarray().astype(float)
    for j in range(8):
        others = [i for i in range(8) if i != j]
        a = xm[:, others]
        w = np.linalg.solve(a.T @ a + lam * np.eye(7), a.T @ xm[:, j])
        np.testing.assert_allclose(b[others, j], w, rtol=1e-4, atol=1e-6)
        assert b[j, j] == 0


def test_textcf_matches_kronecker_solution():
    """The eigenbasis closed form equals the direct vec/Kronecker ridge solution."""
    rng = np.random.default_rng(2)
    n_u, n_i, dim = 12, 7, 3
    x = (rng.random((n_u, n_i)) < 0.5).astype(float)
    rows, cols = np.nonzero(x)
    inter = pd.DataFrame({"user_id": rows.astype(str), "item_id": cols.astype(str)})
    items = pd.DataFrame({"item_id": [str(i) for i in range(n_i)]})
    d = Dataset.from_frames(inter, items)
    vec = rng.normal(size=(n_i, dim)).astype(np.float32)
    d = d.with_item_vectors(vec)
    lam = 0.7
    m = TextCF(l2=lam, bias=False)
    m.train(d)
    e = vec / np.linalg.norm(vec, axis=1, keepdims=True)
    xm = d.matrix.toarray().astype(float)
    a = xm @ e
    k = np.kron(e, a)  # vec(A W E^T) = (E kron A) vec(W), column-major vec
    w = np.linalg.solve(k.T @ k + lam * np.eye(dim * dim), k.T @ xm.reshape(-1, order="F"))
    np.testing.assert_allclose(m._state["weights"], w.reshape(dim, dim, order="F"), rtol=1e-3, atol=1e-5)


def test_textcf_reaches_cold_items():
    """An item nobody has seen gets the score of its text neighbours' block."""
    data = make_blocks()
    inter = data.interactions
    cold = 3  # a block-A item
    train = data.with_interactions(inter[inter.item != cold])
    m = TextCF()
    m.train(train)
    s = m.score(Query(0, train.history(0)))
    assert s[cold] > max(s[10:20])


def test_transition_hand_computed():
    inter = pd.DataFrame({"user_id": ["u"] * 3 + ["v"] * 2, "item_id": ["a", "b", "c", "a", "c"],
                          "timestamp": [1, 2, 3, 1, 2]})
    d = Dataset.from_frames(inter)
    m = Transition(window=2, recent=1, smoothing=0.0)
    m.train(d)
    a, b, c = d.item_numbers(["a", "b", "c"])
    s = m.score(Query(None, [a]))
    # from a: b (gap 1, weight 1), c (gap 2 for u, weight 1/2; gap 1 for v, weight 1)
    np.testing.assert_allclose([s[a], s[b], s[c]], [0.0, 1 / 2.5, 1.5 / 2.5])


def test_transition_sparse_scores_equal_the_decayed_row_sum(data):
    """Cross-check: each query's scores are sum_k decay^k T[recent_k], the product of a decay
    row vector with T; repeated history items vote once per occurrence; empty history is 0."""
    import scipy.sparse as sp

    m = Transition(recent=4, decay=0.5)
    m.train(data)
    t = m._t.toarray().astype(np.float64)
    queries = [Query(u, data.history(u)) for u in (0, 3, 9)]
    queries += [Query(None, np.array([5, 2, 5])), Query(None)]
    got = m.sparse_scores(queries)
    assert isinstance(got, sp.csr_matrix) and got.shape == (5, data.n_items)
    for row, q in zip(got.toarray(), queries, strict=True):
        want = np.zeros(data.n_items)
        for step, item in enumerate(q.history[-4:][::-1]):
            want += 0.5**step * t[item]
        np.testing.assert_allclose(row, want, rtol=1e-12, atol=1e-15)
    for r in range(5):  # columns come sorted and unique
        cols = got.indices[got.indptr[r]:got.indptr[r + 1]]
        assert np.all(np.diff(cols) > 0)


def test_transition_max_next_keeps_each_rows_strongest_successors(data):
    """Against a row-by-row reference on the full model: each row keeps its ``max_next``
    largest entries (ties to the lower item), values unchanged; rows already short are whole."""
    full = Transition()
    full.train(data)
    cut = Transition(max_next=3)
    cut.train(data)
    a, b = full._t.toarray(), cut._t.toarray()
    assert b.shape == a.shape and np.diff(cut._t.indptr).max() <= 3
    for row_a, row_b in zip(a, b, strict=True):
        nz = np.flatnonzero(row_a)
        keep = nz[np.lexsort((nz, -row_a[nz]))][:3]
        want = np.zeros_like(row_a)
        want[keep] = row_a[keep]
        np.testing.assert_array_equal(row_b, want)
    for r in range(cut._t.shape[0]):  # the kept entries stay in column order
        assert np.all(np.diff(cut._t.indices[cut._t.indptr[r]:cut._t.indptr[r + 1]]) > 0)
    assert (np.diff(full._t.indptr) > 3).any()  # some rows were cut
    loose = Transition(max_next=10_000)
    loose.train(data)
    assert (loose._t != full._t).nnz == 0


def test_component_repr_and_isinstance():
    assert isinstance(EASE(), Component)
    assert "l2=500.0" in repr(EASE())


@pytest.mark.parametrize("name", ["ease", "knn"])
def test_dense_models_refuse_catalogs_over_their_limit(name, data):
    m = SCORERS[name]({"max_items": data.n_items - 1})
    with pytest.raises(DataError, match=rf"{name}.*max_items={data.n_items - 1}"):
        m.train(data)
    assert not m.is_trained


@pytest.mark.parametrize("name", ["ease", "knn"])
def test_dense_models_refuse_catalogs_too_large_for_free_memory(name, data, monkeypatch):
    import serendip.models._util as util

    need = data.n_items ** 2 * 8 * 3
    monkeypatch.setattr(util, "available_memory", lambda: need - 1)
    m = SCORERS[name]()
    with pytest.raises(DataError, match=rf"{name} needs about .* GB of memory is available"):
        m.train(data)
    assert not m.is_trained
    monkeypatch.setattr(util, "available_memory", lambda: need)
    m.train(data)
    assert m.is_trained


def test_ease_weights_are_the_closed_form(data):
    """B = -P / diag(P) off the diagonal, 0 on it, P = (X'X + l2 I)^-1 (computed in place)."""
    m = EASE({"l2": 10.0})
    m.train(data)
    x = data.matrix.toarray().astype(np.float64)
    p = np.linalg.inv(x.T @ x + 10.0 * np.eye(data.n_items))
    b = -p / np.diag(p)[None, :]
    np.fill_diagonal(b, 0.0)
    np.testing.assert_allclose(m._require_trained()["weights"], b, rtol=1e-4, atol=1e-6)


def test_two_tower_numpy_user_tower_equals_the_torch_one(trained, data):
    """Scoring re-implements the user tower in NumPy; it must match the trained network."""
    import torch

    from serendip.models.two_tower import _Towers

    m = trained["two_tower"]
    st = m._require_trained()
    text = torch.tensor(st["text"])
    towers = _Towers(text.shape[1], data.n_items, m.config)
    towers.load_state_dict({k: torch.tensor(v) for k, v in m._w.items()})
    for u in (0, 7, 33):
        h = data.history(u)[-m.config.max_history:]
        w = 0.5 ** (np.arange(h.size - 1, -1, -1) / m.config.half_life)
        with torch.no_grad():
            ref = towers.user(torch.tensor(h[None, :]), torch.tensor((w / w.sum())[None, :],
                                                                     dtype=torch.float32), text)
            items = towers.item(torch.arange(data.n_items), text)
        np.testing.assert_allclose(m.query_factors([Query(u, h)])[0][0], ref[0].numpy(),
                                   atol=1e-5)
        np.testing.assert_allclose(st["item_factors"], items.numpy(), atol=1e-5)


def test_two_tower_reaches_cold_items_through_text():
    data = make_blocks(n_users=40, n_items=24, seed=3)
    inter = data.interactions
    cold = 4  # a block-A item nobody used: only its text says where it belongs
    warm = data.with_interactions(inter[inter["item"] != cold].reset_index(drop=True))
    m = SCORERS["two_tower"]({"epochs": 40})
    m.train(warm)
    s = m.score(Query(0, warm.history(0)))  # a block-A user
    assert s[cold] > np.max(s[12:])  # above every block-B item


def test_sequential_learns_what_comes_next():
    """Every user walks a chain i -> i+1 -> ... (from a random start): after i comes i+1."""
    rng = np.random.default_rng(0)
    rows = []
    for u in range(60):
        start = int(rng.integers(0, 12))
        for t, i in enumerate(range(start, start + 8)):
            rows.append((f"u{u}", f"i{i}", float(t)))
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    items = pd.DataFrame({"item_id": [f"i{i}" for i in range(20)],
                          "title": [f"item {i}" for i in range(20)]})
    data = Dataset.from_frames(inter, items)
    vec = np.random.default_rng(1).normal(size=(20, 8)).astype(np.float32)
    data = data.with_item_vectors(vec / np.linalg.norm(vec, axis=1, keepdims=True))
    m = SCORERS["sequential"]({"epochs": 60, "dropout": 0.0})
    m.train(data)
    hits = 0
    for start in range(3, 10):
        hist = np.array([data.item_ids.tolist().index(f"i{i}") for i in range(start - 3, start + 1)])
        s = m.score(Query(None, hist))
        s[hist] = -np.inf
        hits += int(data.item_ids[int(np.argmax(s))] == f"i{start + 1}")
    assert hits >= 6  # the next item of the chain comes first (almost) every time
