"""Sequential model: the random-input reference, the popularity-gated dual view, and known
answers on planted sequence and text patterns."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from serendip.data import Dataset
from serendip.errors import ConfigError, DataError
from serendip.eval import recall
from serendip.models import Sequential, SequentialConfig
from serendip.models.semantic import normalized_vectors
from serendip.types import Query
from tests.conftest import make_blocks

SMALL = {"dim": 16, "heads": 1, "max_len": 10, "dropout": 0.0}


def _dataset(seqs: list[list[int]], n_items: int, vectors: np.ndarray | None) -> Dataset:
    rows = [(f"u{u}", f"i{i}", float(t)) for u, s in enumerate(seqs) for t, i in enumerate(s)]
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    items = pd.DataFrame({"item_id": [f"i{i}" for i in range(n_items)],
                          "title": [f"item {i}" for i in range(n_items)]})
    data = Dataset.from_frames(inter, items)
    if vectors is None:
        return data
    # external id i{i} -> internal index: the vectors in the dataset's numbering
    order = np.array([int(x[1:]) for x in data.item_ids])
    return data.with_item_vectors(vectors[order])


def _index(data: Dataset, items: list[int]) -> np.ndarray:
    pos = {x: n for n, x in enumerate(data.item_ids.tolist())}
    return np.array([pos[f"i{i}"] for i in items], dtype=np.int64)


# --------------------------------------------------------------------------- config
def test_defaults_unchanged():
    c = SequentialConfig()
    assert c.item_input == "text" and c.dual_view is False and c.dual_pivot == 10.0


@pytest.mark.parametrize(("values", "field"), [
    ({"item_input": "noise"}, "item_input"),
    ({"dual_pivot": 0.0}, "dual_pivot"),
    ({"dual_pivot": -3.0}, "dual_pivot"),
    ({"dual_view": "sometimes"}, "dual_view"),
])
def test_bad_values_are_named(values, field):
    with pytest.raises(ConfigError, match=field) as e:
        Sequential(values)
    assert repr(next(iter(values.values()))) in str(e.value)


# --------------------------------------------------------------------------- item inputs
@pytest.fixture(scope="module")
def blocks() -> Dataset:
    return make_blocks()


def test_text_input_reads_the_unit_text_vectors(blocks):
    m = Sequential({**SMALL, "epochs": 1})
    m.train(blocks)
    np.testing.assert_allclose(m._require_trained()["text"], normalized_vectors(blocks, "t"), atol=1e-7)


def test_random_input_has_the_text_shape_and_norm_not_its_content(blocks):
    a = Sequential({**SMALL, "epochs": 1, "item_input": "random", "seed": 3})
    b = Sequential({**SMALL, "epochs": 1, "item_input": "random", "seed": 3})
    c = Sequential({**SMALL, "epochs": 1, "item_input": "random", "seed": 4})
    for m in (a, b, c):
        m.train(blocks)
    r, text = a._require_trained()["text"], normalized_vectors(blocks, "t")
    assert r.shape == text.shape
    np.testing.assert_allclose(np.linalg.norm(r, axis=1), 1.0, atol=1e-6)
    # the block structure of the text (items of one block share a direction) is gone
    assert np.abs(r[:10] @ r[:10].T - np.eye(10)).max() < 0.9
    assert (text[:10] @ text[:10].T).min() > 0.9
    np.testing.assert_array_equal(r, b._require_trained()["text"])  # fixed by the seed
    assert not np.allclose(r, c._require_trained()["text"])


def test_random_input_needs_no_encoder(blocks):
    bare = Dataset.from_frames(blocks.interactions.assign(
        user_id=blocks.user_ids[blocks.interactions["user"]],
        item_id=blocks.item_ids[blocks.interactions["item"]])[["user_id", "item_id",
                                                               "timestamp"]])
    with pytest.raises(DataError, match="item vectors"):
        Sequential({**SMALL, "epochs": 1}).train(bare)
    m = Sequential({**SMALL, "epochs": 1, "item_input": "random"})
    m.train(bare)
    assert m._require_trained()["text"].shape == (bare.n_items, SMALL["dim"])


@pytest.mark.parametrize("extra", [{"item_input": "random"}, {"dual_view": True},
                                   {"item_input": "random", "dual_view": True}])
def test_save_load_identical(extra, blocks, tmp_path):
    m = Sequential({**SMALL, "epochs": 2, **extra})
    m.train(blocks)
    m.save(tmp_path / "m")
    back = Sequential.load(tmp_path / "m")
    assert isinstance(back, Sequential)
    q = [Query(u, blocks.history(u)) for u in (0, 25)]
    np.testing.assert_allclose(back.score_many(q), m.score_many(q), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- dual view
def test_dual_view_gate_by_hand():
    """Semantic weight pivot / (pivot + count); an item nobody used is its text view alone."""
    rng = np.random.default_rng(0)
    seqs = [[0, 1, 2, 3]] * 6 + [[1, 2, 3]] * 2  # item 4 never used
    vec = rng.normal(size=(5, 8)).astype(np.float32)
    data = _dataset(seqs, 5, vec)
    m = Sequential({**SMALL, "epochs": 3, "dual_view": True, "dual_pivot": 4.0})
    m.train(data)
    st = m._require_trained()
    counts = np.asarray(data.item_popularity, dtype=np.float64)
    np.testing.assert_allclose(st["w_gate"], 4.0 / (4.0 + counts), rtol=1e-6)
    assert st["w_gate"][_index(data, [4])[0]] == 1.0
    sem = st["text"] @ st["w_text_proj__weight"].T + st["w_text_proj__bias"]
    col = st["w_ids__weight"]

    def unit(x: np.ndarray) -> np.ndarray:
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    g = st["w_gate"][:, None]
    np.testing.assert_allclose(st["item_factors"], unit(g * unit(sem) + (1 - g) * unit(col)),
                               atol=1e-5)
    cold = _index(data, [4])[0]
    np.testing.assert_allclose(st["item_factors"][cold], unit(sem)[cold], atol=1e-5)


# --------------------------------------------------------------------------- known answers
def _chain_data(vectors: np.ndarray) -> Dataset:
    rng = np.random.default_rng(0)
    seqs = []
    for _ in range(60):
        start = int(rng.integers(0, 12))
        seqs.append(list(range(start, start + 8)))
    return _dataset(seqs, 20, vectors)


@pytest.mark.parametrize("item_input", ["text", "random"])
def test_both_inputs_learn_what_comes_next(item_input):
    """Users walk a chain i -> i+1 (random start); text vectors are noise here, so the order
    alone is the signal, and the text and the random-input models both learn it."""
    vec = np.random.default_rng(1).normal(size=(20, 8)).astype(np.float32)
    data = _chain_data(vec)
    m = Sequential({"dim": 32, "epochs": 40, "lr": 0.01, "dropout": 0.0,
                    "item_input": item_input})
    m.train(data)
    hits = 0
    for start in range(3, 10):
        hist = _index(data, list(range(start - 3, start + 1)))
        s = m.score(Query(None, hist))
        s[hist] = -np.inf
        hits += int(np.argmax(s) == _index(data, [start + 1])[0])
    assert hits >= 5  # of 7; chance would give about 7 / 16


def _planted_text(seed: int = 0) -> tuple[Dataset, list[np.ndarray], np.ndarray]:
    """Eight taste clusters of 4 head items (used a lot) and 5 tail items (used once each);
    each user's sequence stays in one cluster, and an item's text is its cluster's direction
    plus a little noise.  The tail item that follows a cluster's head items shares their
    text; only that text says where a tail item belongs."""
    rng = np.random.default_rng(seed)
    n_clusters, n_head, n_tail = 8, 4, 5
    per = n_head + n_tail
    n_items = n_clusters * per
    cluster = np.repeat(np.arange(n_clusters), per)
    is_tail = np.tile(np.r_[np.zeros(n_head, bool), np.ones(n_tail, bool)], n_clusters)
    vec = np.zeros((n_items, 16), dtype=np.float32)
    vec[np.arange(n_items), cluster] = 1.0
    vec += rng.normal(scale=0.15, size=vec.shape).astype(np.float32)
    seqs = []
    for u in range(240):
        c = u % n_clusters
        heads = list(c * per + rng.permutation(n_head))
        seqs.append([int(i) for i in heads + list(c * per + rng.permutation(n_head))[:2]])
    for c in range(n_clusters):  # each tail item seen once, after one of its cluster's heads
        for t in range(n_tail):
            seqs[c + n_clusters * t].append(int(c * per + n_head + t))
    data = _dataset(seqs, n_items, vec)
    heads_of = [_index(data, [c * per + h for h in range(n_head)]) for c in range(n_clusters)]
    tail = _index(data, [i for i in range(n_items) if is_tail[i]])
    return data, heads_of, tail


def _tail_recall(m: Sequential, data: Dataset, heads_of: list[np.ndarray],
                 tail: np.ndarray, k: int = 5) -> float:
    """Mean recall@k of each cluster's tail items, ranking only the catalog's tail items after
    a history of the cluster's head items."""
    per = len(tail) // len(heads_of)
    out = []
    for c, hist in enumerate(heads_of):
        s = m.score(Query(None, hist))[tail]
        rec = tail[np.argsort(-s, kind="stable")[:k]]
        out.append(recall(rec, tail[c * per : (c + 1) * per], k))
    return float(np.mean(out))


def test_only_the_text_input_places_tail_items():
    data, heads_of, tail = _planted_text()
    assert data.item_popularity[tail].max() == 1
    base = {**SMALL, "epochs": 20, "lr": 0.01, "batch_size": 256, "seed": 0}
    variants: dict[str, dict[str, Any]] = {
        "text": {}, "random": {"item_input": "random"}, "dual": {"dual_view": True}}
    got = {}
    for name, extra in variants.items():
        m = Sequential({**base, **extra})
        m.train(data)
        got[name] = _tail_recall(m, data, heads_of, tail)
    # chance is 5 / 40 = 0.125: the random input knows a tail item from one interaction only
    assert got["random"] < 0.35
    assert got["text"] > got["random"] + 0.3
    # the dual view leans on the text for these once-seen items, so it reaches them too
    assert got["dual"] > got["random"] + 0.3
