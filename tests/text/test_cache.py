from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from serendip.errors import DataError
from serendip.text import EmbeddingCache
from serendip.text.cache import MAX_SHARDS


def test_round_trip_and_misses(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path)
    hits, missing = cache.get_many("m", ["a", "b"])
    assert hits.shape[0] == 0 and missing.tolist() == [True, True]
    vecs = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert cache.put_many("m", ["a", "b"], vecs) == 2
    assert cache.put_many("m", ["a"], vecs[:1]) == 0  # already there

    fresh = EmbeddingCache(tmp_path)  # a new process sees the shard on disk
    hits, missing = fresh.get_many("m", ["b", "zz", "a"])
    assert missing.tolist() == [False, True, False]
    np.testing.assert_array_equal(hits, vecs[[1, 0]])
    # other model id: nothing shared
    assert fresh.get_many("other", ["a"])[1].tolist() == [True]


def test_files_are_plain_arrays(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path)
    cache.put_many("m", ["a"], np.ones((1, 4)))
    shards = list(tmp_path.rglob("shard-*.npz"))
    assert len(shards) == 1
    with np.load(shards[0], allow_pickle=False) as z:
        assert z["keys"].dtype.kind == "U"
        assert z["vectors"].dtype == np.float32
    assert not list(tmp_path.rglob(".tmp-*"))


def test_shards_merge(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path)
    for i in range(MAX_SHARDS + 3):
        cache.put_many("m", [f"t{i}"], np.full((1, 2), i, dtype=np.float32))
    assert len(list(tmp_path.rglob("shard-*.npz"))) <= MAX_SHARDS
    hits, missing = EmbeddingCache(tmp_path).get_many("m", [f"t{i}" for i in range(MAX_SHARDS + 3)])
    assert not missing.any()
    np.testing.assert_array_equal(hits[:, 0], np.arange(MAX_SHARDS + 3))


def test_bad_input(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path)
    with pytest.raises(DataError, match="one vector per text"):
        cache.put_many("m", ["a", "b"], np.ones((1, 3)))
    with pytest.raises(DataError, match="non-finite"):
        cache.put_many("m", ["a"], np.full((1, 3), np.nan))
    cache.put_many("m", ["a"], np.ones((1, 3)))
    with pytest.raises(DataError, match="size 3"):
        cache.put_many("m", ["b"], np.ones((1, 4)))
