"""On-disk embedding cache keyed by (model id, sha256 of the text).

Layout: ``<directory>/<model slug>/model.json`` names the model id; every ``put_many`` writes
one ``shard-*.npz`` (``keys``: sha256 hex digests, ``vectors``: float32) to a temporary file and
``os.replace``s it into place, so concurrent writers never clobber each other and readers never
see half a file.  Shards are merged once there are many.  Nothing is pickled.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from serendip.errors import DataError, ModelFormatError

__all__ = ["EmbeddingCache", "text_key"]

log = logging.getLogger(__name__)

#: Merge a model's shards into one when there are more than this many.
MAX_SHARDS = 32


def text_key(text: str) -> str:
    """sha256 hex digest of the UTF-8 text."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _slug(model_id: str) -> str:
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", model_id)[-48:].strip("_.")
    return f"{readable}-{hashlib.sha256(model_id.encode('utf-8')).hexdigest()[:16]}"


def _atomic_savez(path: Path, keys: np.ndarray, vectors: np.ndarray) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, keys=keys, vectors=vectors)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class _ModelStore:
    """In-memory view of one model's shards: key -> row of ``vectors``."""

    def __init__(self, directory: Path, model_id: str):
        self.directory = directory
        self.model_id = model_id
        self.index: dict[str, int] = {}
        self.vectors = np.zeros((0, 0), dtype=np.float32)
        self.seen: set[str] = set()

    def refresh(self) -> None:
        """Read shards written since the last refresh (by this or another process)."""
        new_keys: list[np.ndarray] = []
        new_vecs: list[np.ndarray] = []
        for shard in sorted(self.directory.glob("shard-*.npz")):
            if shard.name in self.seen:
                continue
            try:
                with np.load(shard, allow_pickle=False) as z:
                    keys, vecs = z["keys"], z["vectors"]
            except FileNotFoundError:  # merged away by another process meanwhile
                continue
            except (OSError, ValueError, KeyError) as e:
                raise ModelFormatError(
                    f"unreadable embedding cache shard {str(shard)!r}: {e}"
                ) from e
            if vecs.ndim != 2 or len(keys) != len(vecs):
                raise ModelFormatError(
                    f"embedding cache shard {str(shard)!r} has {len(keys)} keys for vectors of "
                    f"shape {vecs.shape}"
                )
            self.seen.add(shard.name)
            new_keys.append(keys)
            new_vecs.append(vecs.astype(np.float32, copy=False))
        if not new_vecs:
            return
        dims = {v.shape[1] for v in new_vecs} | ({self.vectors.shape[1]} if self.index else set())
        if len(dims) > 1:
            raise ModelFormatError(
                f"embedding cache {str(self.directory)!r} mixes vector sizes {sorted(dims)} "
                f"for model {self.model_id!r}; delete the directory to rebuild it"
            )
        base = self.vectors if self.index else np.zeros((0, new_vecs[0].shape[1]), np.float32)
        start = len(base)
        self.vectors = np.concatenate([base, *new_vecs])
        for row, k in enumerate(np.concatenate(new_keys).tolist(), start=start):
            self.index.setdefault(k, row)


class EmbeddingCache:
    """Embedding vectors on disk, keyed by (model id, sha256 of the text)."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self._stores: dict[str, _ModelStore] = {}

    def _store(self, model_id: str, create: bool = False) -> _ModelStore | None:
        if not isinstance(model_id, str) or not model_id:
            raise DataError(f"model_id must be a non-empty string, got {model_id!r}")
        store = self._stores.get(model_id)
        if store is None:
            d = self.directory / _slug(model_id)
            if not d.is_dir():
                if not create:
                    return None
                d.mkdir(parents=True, exist_ok=True)
            meta = d / "model.json"
            if meta.exists():
                found = json.loads(meta.read_text()).get("model_id")
                if found != model_id:
                    raise ModelFormatError(
                        f"embedding cache {str(d)!r} belongs to model {found!r}, not {model_id!r}"
                    )
            else:
                meta.write_text(json.dumps({"model_id": model_id}))
            store = self._stores[model_id] = _ModelStore(d, model_id)
        store.refresh()
        return store

    def get_many(self, model_id: str, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Cached vectors of ``texts``: ``(hits, missing)``.

        ``missing`` is a bool mask over ``texts``; ``hits`` holds the vectors of the other
        texts, in order, shape ``(n_hits, d)`` (``d`` is 0 when the model has no entries yet).
        """
        keys = [text_key(t) for t in texts]
        store = self._store(model_id)
        if store is None or not store.index:
            return np.zeros((0, 0), dtype=np.float32), np.ones(len(keys), dtype=bool)
        rows = np.array([store.index.get(k, -1) for k in keys], dtype=np.int64)
        missing = rows < 0
        return store.vectors[rows[~missing]], missing

    def put_many(self, model_id: str, texts: Sequence[str], vectors: np.ndarray) -> int:
        """Store vectors for texts not cached yet; returns how many were written."""
        vecs = np.asarray(vectors, dtype=np.float32)
        if vecs.ndim != 2 or vecs.shape[0] != len(texts):
            raise DataError(
                f"put_many needs one vector per text: {len(texts)} texts, vectors of shape "
                f"{vecs.shape}"
            )
        if not np.isfinite(vecs).all():
            raise DataError("put_many got non-finite vectors (NaN or inf); refusing to cache them")
        store = self._store(model_id, create=True)
        assert store is not None
        if store.index and store.vectors.shape[1] != vecs.shape[1]:
            raise DataError(
                f"model {model_id!r} has cached vectors of size {store.vectors.shape[1]}, "
                f"got {vecs.shape[1]}"
            )
        fresh: dict[str, int] = {}
        for i, t in enumerate(texts):
            k = text_key(t)
            if k not in store.index and k not in fresh:
                fresh[k] = i
        if not fresh:
            return 0
        shard = store.directory / f"shard-{uuid.uuid4().hex}.npz"
        keys = np.array(list(fresh), dtype="<U64")
        _atomic_savez(shard, keys=keys, vectors=vecs[list(fresh.values())])
        store.refresh()
        if len(store.seen) > MAX_SHARDS:
            self._merge(store)
        return len(fresh)

    def _merge(self, store: _ModelStore) -> None:
        """Write all of a model's entries as one shard, then drop the shards it replaces."""
        old = [store.directory / name for name in store.seen]
        keys = np.array(list(store.index), dtype="<U64")
        rows = np.fromiter(store.index.values(), dtype=np.int64, count=len(store.index))
        merged = store.directory / f"shard-{uuid.uuid4().hex}.npz"
        _atomic_savez(merged, keys=keys, vectors=store.vectors[rows])
        for p in old:
            p.unlink(missing_ok=True)
        store.seen = {merged.name}
        store.vectors = store.vectors[rows]
        store.index = {k: i for i, k in enumerate(keys.tolist())}
        log.info("merged %d embedding cache shards for %s", len(old), store.model_id)

    def __len__(self) -> int:
        return sum(len(s.index) for s in self._stores.values())

    def __repr__(self) -> str:
        return f"EmbeddingCache({str(self.directory)!r})"
