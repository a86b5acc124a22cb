"""Candidate retrieval for large catalogs: the blend's best items without scoring every item.

Scoring a 100,000-item catalog for every request costs tens of milliseconds, almost all of it
spent on items that end up nowhere near the list.  For catalogs above
``RetrievalConfig.min_items`` the pipeline instead

1. asks each source for its best items: one search per *factor space* (scorers whose scores are
   linear in item factors, ``score = q . f_j + b``; scorers on the same text vectors share one
   space, and their query vectors are added with their blend weights), the nonzero entries of
   sparse scorers, and the top of any other scorer's dense scores;
2. scores the union of those items *exactly* with the blend.

Never-seen items (``Hybrid``'s ``cold_fill``) rank low in every member's own search, so the
Retriever, given them, keeps a ``SubSpace`` of their rows per unit-vector space: an exact scan
of a contiguous copy when they are few, an index of their own when many.

Step 2 needs each scorer's z-score statistics over the whole catalog, and for the linear
scorers they come in closed form: with item-factor mean ``m`` and covariance ``C``, the scores
``q . f_j + b`` have mean ``q . m + b`` and variance ``q' C q`` (O(d^2) per request instead of
O(n d)).  Sparse scores give theirs from the nonzeros.  So a retrieved item's blend score is
the same number the full-catalog path computes; only *which* items are considered can differ.

Spaces of unit vectors (text) with many items x dimensions are searched with an inverted-file
index (IVF: k-means lists, probe the lists whose centroids score best, Jegou et al. 2011).  By
default (``RetrievalConfig.index = "faiss"``) that is FAISS' ``IndexIVFScalarQuantizer`` with
8-bit codes whose best results are re-ranked exactly; without the ``faiss-cpu`` package it is
the built-in numpy ``IVFIndex`` (with a logged note), and ``"usearch"`` (an HNSW graph) is
there for comparison.  Every other space (ALS and other factors whose lengths carry
popularity, with the unused items at the origin) is scanned exactly in order of decreasing
length: ``bench/index.py`` found that scan exact and faster than any approximate index on such
spaces, and FAISS as accurate as the built-in IVF on text spaces, faster at 1,000,000 items,
with a quarter of the memory (docs/scale.md).

Building a FAISS index over a million text vectors takes tens of seconds, so ``Recommender.save``
writes the built ones beside the factors (``index/``: FAISS's own serialization, one ``.npy``
per space, each space's moments and row norms, and a manifest) and ``load`` reads them back
instead (``StoredIndexes``).  They are used only when they provably belong to the vectors they
describe: the manifest names the FAISS version and the index settings, the SHA-256 of the
vectors and of each index file; any difference (another FAISS, another ``RetrievalConfig``,
other vectors, a damaged file) rebuilds them, with a logged reason.  The built-in IVF and
usearch indexes are always rebuilt.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import math
import threading
import time
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp
from pydantic import Field

from serendip.component import ComponentConfig
from serendip.errors import ConfigError
from serendip.models._util import quadratic_form, row_dots
from serendip.models.base import TEXT_SPACE, BatchScorer

__all__ = [
    "IVFIndex", "FaissIndex", "USearchIndex", "RetrievalConfig", "Retriever", "FactorSpace",
    "LazyRetriever", "SubSpace", "retrieval_enabled", "make_index", "to_sphere", "IndexKind",
    "StoredIndexes", "INDEX_DIR", "fingerprint",
]

log = logging.getLogger(__name__)

#: search structures for the unit-vector spaces: the built-in numpy IVF, FAISS' IVF, usearch HNSW
IndexKind = Literal["ivf", "faiss", "usearch"]


class RetrievalConfig(ComponentConfig):
    """When and how candidates are retrieved instead of scoring the whole catalog."""

    mode: Literal["auto", "exact", "ann"] = Field(
        "auto", description="auto: retrieve above min_items; exact: always score every item"
    )
    min_items: int = Field(20_000, ge=0, le=10**9, description="catalog size where auto retrieves")
    per_source: int = Field(
        500, ge=1, le=1_000_000,
        description="items asked of each source (at least the pool the preset re-ranks)",
    )
    exact_flops: int = Field(
        8_000_000, ge=0, le=10**12,
        description="spaces with items x dims at most this are searched exactly, not by IVF",
    )
    n_lists: int | None = Field(None, ge=1, le=1_000_000, description="IVF lists (None: sqrt(n))")
    probe: float = Field(0.08, gt=0, le=1, description="share of IVF lists probed per search")
    iterations: int = Field(10, ge=1, le=100, description="k-means iterations for IVF lists")
    index: IndexKind = Field(
        "faiss",
        description="index over large unit-vector spaces: faiss (IndexIVFFlat; falls back to "
                    "ivf when faiss-cpu is not installed), ivf (built-in), usearch (HNSW)",
    )
    faiss_codes: Literal["sq8", "flat"] = Field(
        "sq8",
        description="faiss only: 8-bit codes re-ranked exactly (a quarter of the memory), or "
                    "float vectors",
    )
    ef_search: int = Field(
        800, ge=1, le=100_000,
        description="usearch only: candidate list of the graph search (at least per_source)",
    )
    seed: int = Field(0, ge=0)


class IVFIndex:
    """Inverted-file index for maximum inner-product search over fixed vectors.

    Items are clustered by k-means (on a sample, then every item assigned to its nearest
    centroid) and stored contiguously list by list; a search scores the centroids, then only
    the items of the ``n_probe`` best lists.  ``n_probe = n_lists`` is an exact search.

    Vectors of unequal length (ALS factors: popular items are longer) are first mapped to the
    unit sphere by appending ``sqrt(M^2 - |x|^2)`` and dividing by ``M``, the largest norm
    (Bachrach et al. 2014): inner products with ``[q, 0]`` keep their order, and k-means
    clusters by direction, which is what centroid probing needs.
    """

    def __init__(self, vectors: np.ndarray, n_lists: int | None = None, *, iterations: int = 10,
                 seed: int = 0, sample_per_list: int = 64) -> None:
        self.dim = _check_vectors(vectors, "IVFIndex")
        x = to_sphere(vectors)
        n = x.shape[0]
        k = _n_lists(n, n_lists)
        rng = np.random.default_rng(seed)
        train = x[np.sort(rng.choice(n, min(n, sample_per_list * k), replace=False))]
        centroids = train[rng.choice(train.shape[0], k, replace=False)].copy()
        for _ in range(iterations):
            assign = _nearest(train, centroids)
            onehot = sp.csr_matrix(
                (np.ones(assign.size, np.float32), (assign, np.arange(assign.size))),
                shape=(k, train.shape[0]),
            )
            counts = np.bincount(assign, minlength=k)
            sums = np.asarray(onehot @ train)
            empty = counts == 0
            centroids = np.where(
                empty[:, None], centroids, sums / np.maximum(counts, 1)[:, None]
            ).astype(np.float32)
            if empty.any():  # re-seed empty lists on random training points
                centroids[empty] = train[rng.choice(train.shape[0], int(empty.sum()))]
        assign = _nearest(x, centroids)
        order = np.argsort(assign, kind="stable")
        self.ids = order.astype(np.int64)
        self.vectors = np.ascontiguousarray(x[order])
        self.offsets = np.searchsorted(assign[order], np.arange(k + 1)).astype(np.int64)
        self.centroids = centroids
        self.n_lists = k

    def __len__(self) -> int:
        return int(self.ids.size)

    def search(self, query: np.ndarray, n: int, n_probe: int) -> np.ndarray:
        """Ids of (about) the ``n`` items with the largest ``item . query``, best first."""
        q = _query(query, self.dim, self.vectors.shape[1])
        n_probe = max(1, min(int(n_probe), self.n_lists))
        cs = row_dots(self.centroids, q)
        if n_probe < self.n_lists:
            lists = np.argpartition(-cs, n_probe - 1)[:n_probe]
        else:
            lists = np.arange(self.n_lists)
        starts, ends = self.offsets[lists], self.offsets[lists + 1]
        total = int((ends - starts).sum())
        scores = np.empty(total, dtype=np.float32)
        where = np.empty(total, dtype=np.int64)
        at = 0
        for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
            if b > a:
                scores[at : at + b - a] = row_dots(self.vectors[a:b], q)
                where[at : at + b - a] = np.arange(a, b)
                at += b - a
        return self.ids[where[_top(scores, n)]]


def _check_vectors(vectors: np.ndarray, who: str) -> int:
    """The dimension of a non-empty 2-D array of vectors (ValueError otherwise)."""
    shape = np.shape(vectors)
    if len(shape) != 2 or shape[0] == 0:
        raise ValueError(f"{who} needs a non-empty 2-D array, got shape {tuple(shape)}")
    return int(shape[1])


def _n_lists(n: int, n_lists: int | None) -> int:
    k = int(n_lists) if n_lists is not None else max(1, int(round(math.sqrt(n))))
    return max(1, min(k, n))


def _query(query: np.ndarray, dim: int, stored: int) -> np.ndarray:
    """The query as float32, with a zero appended when the items were mapped to the sphere."""
    q = np.asarray(query, dtype=np.float32).reshape(-1)
    if q.size != dim:
        raise ValueError(f"query has {q.size} dimensions, the index {dim}")
    if stored > dim:
        q = np.append(q, np.float32(0.0))
    return np.ascontiguousarray(q)


def to_sphere(vectors: np.ndarray, norms: np.ndarray | None = None) -> np.ndarray:
    """Vectors of unequal length mapped to the unit sphere, keeping the order of inner products.

    Appends ``sqrt(M^2 - |x|^2)`` and divides by ``M``, the largest norm (Bachrach et al.
    2014): ``[x, e] / M . [q, 0] = x . q / M``, so every query ranks the items as before, and
    clustering or graph building by direction sees what an inner-product search needs.
    Vectors of (nearly) equal length are returned as float32 unchanged.  ``norms``: their row
    norms (``_row_norms``), when already known.
    """
    x = np.asarray(vectors, dtype=np.float32)
    norms = _row_norms(x) if norms is None else norms
    big = float(norms.max()) if norms.size else 0.0
    if big > 0 and float(norms.min()) < big * (1 - 1e-4):
        extra = np.sqrt(np.maximum(big**2 - norms**2, 0.0))[:, None]
        x = (np.hstack([x.astype(np.float64), extra]) / big).astype(np.float32)
    return np.ascontiguousarray(x)


class FaissIndex:
    """FAISS inverted-file index (inner-product metric) over the sphere-mapped vectors.

    The same method as ``IVFIndex`` (spherical k-means lists, probe the lists whose centroids
    score best), in compiled code.  With ``codes="sq8"`` (the default) the lists hold 8-bit
    scalar-quantized vectors (``IndexIVFScalarQuantizer``): a quarter of the memory and a
    faster scan; the ``REFINE * n`` best by the quantized scores are then re-ranked exactly
    against the float vectors, so the ``n`` returned are ordered by true inner products.
    ``codes="flat"`` stores float vectors (``IndexIVFFlat``) and needs no re-ranking.

    A search passes its own ``nprobe`` (``SearchParametersIVF``) and changes nothing in the
    index, so concurrent searches from several threads are safe (FAISS documents concurrent
    searches on CPU indexes as thread-safe).
    """

    #: candidates fetched per wanted item before exact re-ranking of quantized results
    REFINE = 2

    def __init__(self, vectors: np.ndarray, n_lists: int | None = None, *, iterations: int = 10,
                 seed: int = 0, sample_per_list: int = 64,
                 codes: Literal["sq8", "flat"] = "sq8", built: Any = None,
                 norms: np.ndarray | None = None) -> None:
        """``built``: this index as built before over the same vectors and settings (read back
        by ``StoredIndexes``), used instead of training and adding again; ``norms``: the
        vectors' row norms, when already known."""
        import faiss  # optional dependency: callers check ``available("faiss")``

        self.dim = _check_vectors(vectors, "FaissIndex")
        x = to_sphere(vectors, norms)
        n, d = x.shape
        k = _n_lists(n, n_lists)
        index: faiss.IndexIVF
        if built is not None:
            if (built.ntotal, built.d, built.nlist) != (n, d, k):
                raise ConfigError(f"a stored FAISS index of {built.ntotal} x {built.d} in "
                                  f"{built.nlist} lists does not fit {n} x {d} in {k}")
            index = built
        else:
            quantizer = faiss.IndexFlatIP(d)
            if codes == "sq8":
                index = faiss.IndexIVFScalarQuantizer(
                    quantizer, d, k, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
            else:
                index = faiss.IndexIVFFlat(quantizer, d, k, faiss.METRIC_INNER_PRODUCT)
            index.cp.niter = int(iterations)
            index.cp.seed = int(seed)
            index.cp.spherical = True  # unit centroids: probing by inner product ranks directions
            index.cp.max_points_per_centroid = int(sample_per_list)
            rng = np.random.default_rng(seed)
            train = x[np.sort(rng.choice(n, min(n, sample_per_list * k), replace=False))]
            index.train(train)
            index.add(x)
        self._faiss = faiss
        self.index = index
        self.codes = codes
        self.vectors = x if codes == "sq8" else None  # for exact re-ranking
        self.n_lists = k
        self._n = n
        self._stored = d

    def __len__(self) -> int:
        return self._n

    def serialized(self) -> np.ndarray:
        """The index in FAISS's own format (bytes as uint8), for ``StoredIndexes``."""
        return np.asarray(self._faiss.serialize_index(self.index))

    def search(self, query: np.ndarray, n: int, n_probe: int) -> np.ndarray:
        """Ids of (about) the ``n`` items with the largest ``item . query``, best first."""
        q = _query(query, self.dim, self._stored)
        n = max(1, min(int(n), self._n))
        fetch = n if self.vectors is None else min(self.REFINE * n, self._n)
        params = self._faiss.SearchParametersIVF()
        params.nprobe = max(1, min(int(n_probe), self.n_lists))
        _, found = self.index.search(q[None, :], fetch, params=params)
        ids = found[0]
        ids = ids[ids >= 0].astype(np.int64)
        if self.vectors is not None:
            ids = ids[_top(row_dots(self.vectors[ids], q), n)]
        return ids


class USearchIndex:
    """usearch HNSW graph (inner-product metric) over the sphere-mapped vectors.

    ``ef_search`` (the graph search's candidate list) is fixed when the index is built, so
    searches change no shared state and may run concurrently.
    """

    def __init__(self, vectors: np.ndarray, *, ef_search: int = 800, connectivity: int = 16,
                 expansion_add: int = 128, threads: int = 0) -> None:
        from usearch.index import Index  # optional dependency

        self.dim = _check_vectors(vectors, "USearchIndex")
        x = to_sphere(vectors)
        self._n, self._stored = x.shape
        self.index = Index(ndim=self._stored, metric="ip", dtype="f32",
                           connectivity=connectivity, expansion_add=expansion_add,
                           expansion_search=int(ef_search))
        self.index.add(np.arange(self._n, dtype=np.uint64), x, threads=threads)
        self.n_lists = 1  # no lists: the probe share does not apply

    def __len__(self) -> int:
        return self._n

    def search(self, query: np.ndarray, n: int, n_probe: int = 1) -> np.ndarray:
        """Ids of (about) the ``n`` items with the largest ``item . query``, best first."""
        q = _query(query, self.dim, self._stored)
        found = self.index.search(q, max(1, min(int(n), self._n)), threads=1)
        return np.asarray(found.keys, dtype=np.int64)


def available(kind: str) -> bool:
    """Whether the library behind index ``kind`` can be imported (``ivf`` always can)."""
    module = {"faiss": "faiss", "usearch": "usearch.index"}.get(kind)
    if module is None:
        return True
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


_warned: set[str] = set()


def resolve_index(kind: str) -> str:
    """``kind``, or ``ivf`` (with a logged note, once) when its library is not installed."""
    if available(kind):
        return kind
    if kind not in _warned:
        _warned.add(kind)
        log.warning("retrieval: index %r needs the %s package, which is not installed; using "
                    "the built-in IVF index (pip install %s)", kind, kind,
                    "faiss-cpu" if kind == "faiss" else kind)
    return "ivf"


def make_index(vectors: np.ndarray, config: RetrievalConfig, built: Any = None,
               norms: np.ndarray | None = None) -> IVFIndex | FaissIndex | USearchIndex:
    """The search structure ``config.index`` names (built-in IVF if its library is missing);
    ``built``: a FAISS index read back by ``StoredIndexes`` for these vectors; ``norms``: their
    row norms, when known."""
    kind = resolve_index(config.index)
    if kind == "faiss":
        return FaissIndex(vectors, config.n_lists, iterations=config.iterations,
                          seed=config.seed, codes=config.faiss_codes, built=built, norms=norms)
    if kind == "usearch":
        return USearchIndex(vectors, ef_search=max(config.ef_search, config.per_source))
    return IVFIndex(vectors, config.n_lists, iterations=config.iterations, seed=config.seed)


def _nearest(x: np.ndarray, centroids: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """Index of the nearest centroid (squared L2) for every row of ``x``."""
    c2 = (centroids.astype(np.float64) ** 2).sum(axis=1).astype(np.float32)
    out = np.empty(x.shape[0], dtype=np.int64)
    for a in range(0, x.shape[0], chunk):
        d = c2[None, :] - 2.0 * (x[a : a + chunk] @ centroids.T)
        out[a : a + chunk] = np.argmin(d, axis=1)
    return out


def _top(scores: np.ndarray, n: int) -> np.ndarray:
    """Positions of the ``n`` largest scores, best first (ties by position)."""
    n = min(int(n), scores.size)
    if n <= 0:
        return np.zeros(0, dtype=np.int64)
    if n < scores.size:
        part = np.argpartition(-scores, n - 1)[:n]
    else:
        part = np.arange(scores.size)
    return part[np.lexsort((part, -scores[part]))]


def _row_norms(x: np.ndarray, block: int = 65_536) -> np.ndarray:
    """Euclidean norms of the rows of ``x``, summed in float64 a block of rows at a time."""
    x = np.atleast_2d(x)
    out = np.empty(x.shape[0])
    for a in range(0, x.shape[0], block):
        b = x[a : a + block].astype(np.float64)
        out[a : a + block] = np.sqrt(np.einsum("ij,ij->i", b, b))
    return out


def _moments(f: np.ndarray, block: int = 65_536) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, population covariance (ddof 0) and row norms of ``f``, in float64, a block of
    rows at a time (two passes: the mean, then the centred products), so that a million
    vectors never need a float64 copy of the whole matrix."""
    n, d = f.shape
    total = np.zeros(d)
    for a in range(0, n, block):
        total += f[a : a + block].sum(axis=0, dtype=np.float64)
    mean = total / max(n, 1)
    cov = np.zeros((d, d))
    for a in range(0, n, block):
        c = f[a : a + block].astype(np.float64) - mean
        cov += c.T @ c
    return mean, cov / max(n, 1), _row_norms(f, block)


class FactorSpace:
    """Item factors shared by one or more linear scorers: moments and a search structure.

    Two searches: unit-length factors (text vectors) over ``exact_flops`` use an IVF index;
    everything else is scanned exactly in order of decreasing factor length, stopping once
    ``|q| |f_j|`` (an upper bound of ``q . f_j``, Cauchy-Schwarz) of the next block cannot beat
    the n-th best score so far.  ALS factors are long only for the items people use, so the
    scan usually ends after the first block.
    """

    BLOCK = 4096

    def __init__(self, items: np.ndarray, config: RetrievalConfig, *, moments: bool = True,
                 stored: StoredIndexes | None = None, key: str = "") -> None:
        """``moments`` False skips the mean and covariance (``stats``), for a space that is
        only searched (a ``SubSpace``); ``stored``: indexes saved with the model, this space's
        under ``key``."""
        f = np.asarray(items, dtype=np.float32)
        self.items = f
        self.mean: np.ndarray | None = None
        self.cov: np.ndarray | None = None
        got = stored.moments(key, f) if stored is not None else None
        if got is not None and moments and (got[0] is None or got[1] is None):
            got = None
        if got is not None:  # computed from these very vectors when the model was saved
            mean, cov, norms = got
            if moments:
                self.mean, self.cov = mean, cov
        elif moments:
            self.mean, self.cov, norms = _moments(f)
        else:
            norms = _row_norms(f)
        self.norms = norms
        self.config = config
        self.index: IVFIndex | FaissIndex | USearchIndex | None = None
        unit = norms.size > 0 and float(norms.max() - norms.min()) <= 1e-3 * max(norms.max(), 1e-12)
        self.unit = bool(unit)  # unit vectors (text): searched by an index when large
        if unit and f.shape[0] * f.shape[1] > config.exact_flops:
            built = stored.take(key, f, config) if stored is not None else None
            try:
                self.index = make_index(f, config, built, norms)
            except ConfigError as e:  # a stored index that does not fit: rebuilt
                if built is None:
                    raise
                log.warning("retrieval: the stored index of %s is not used (%s); rebuilding it",
                            key, e)
                self.index = make_index(f, config)
        else:
            order = np.argsort(-norms, kind="stable")
            self._order = order.astype(np.int64)
            self._sorted = np.ascontiguousarray(f[order])
            self._norms = norms[order]

    def stats(self, query: np.ndarray, offset: float) -> tuple[float, float]:
        """Mean and standard deviation of ``items @ query + offset`` over every item."""
        if self.mean is None or self.cov is None:
            raise ConfigError("this factor space was built without its moments (search only)")
        mu = float(row_dots(self.mean[None, :], query)[0]) + float(offset)
        var = quadratic_form(query, self.cov)
        return mu, math.sqrt(max(var, 0.0))

    def search(self, query: np.ndarray, n: int) -> np.ndarray:
        """About the ``n`` items with the largest ``items @ query``, best first (exact
        unless the space has an IVF index)."""
        q = np.asarray(query, dtype=np.float32)
        if self.index is not None:
            idx = self.index
            n_probe = max(math.ceil(self.config.probe * idx.n_lists),
                          math.ceil(4 * n * idx.n_lists / max(len(idx), 1)))
            return idx.search(q, n, n_probe)
        return self._order[self._scan(q, int(n))]

    def _scan(self, q: np.ndarray, n: int) -> np.ndarray:
        """Positions (in length order) of the ``n`` items with the largest ``row_dots``
        scores, best first, ties to the longer item: the same answer whatever the number of
        BLAS threads.

        Blocks are scored with BLAS (fast, but its last bits depend on the threads) and only
        a superset is kept: every item within ``margin`` of the ``n``-th best BLAS score,
        ``margin`` twice the largest possible gap between two float32 dot products of this
        length taken in any order (``2 d u / (1 - d u) |q| |f|``, ``u = 2^-24``, for either
        product, ``|f|`` the longest item).  The kept items are then scored by ``row_dots``
        and the top ``n`` taken.  The scan stops once no item further down can come within
        ``margin`` of the threshold (Cauchy-Schwarz on the next block's length, widened by
        the same error bound).
        """
        total = self._sorted.shape[0]
        if total == 0 or n <= 0:
            return np.zeros(0, dtype=np.int64)
        qn = float(np.linalg.norm(q.astype(np.float64)))
        if not qn > 0:  # a zero query scores every item 0: the first n, without a scan
            return np.arange(min(n, total), dtype=np.int64)
        d = self._sorted.shape[1]
        unit = d * 2.0**-24
        gamma = unit / max(1.0 - unit, 1e-9)  # relative error bound of one dot product
        margin = 4.0 * gamma * qn * float(self._norms[0]) + 1e-30
        block = max(self.BLOCK, 2 * n)
        kept_pos = np.zeros(0, dtype=np.int64)
        kept = np.zeros(0, dtype=np.float32)
        threshold = -np.inf
        for a in range(0, total, block):
            if kept.size >= n and threshold - margin > qn * float(self._norms[a]) * (1 + 2 * gamma):
                break  # nothing further down can come within the margin of the top n
            scores = np.concatenate([kept, self._sorted[a : a + block] @ q])
            pos = np.concatenate([kept_pos, np.arange(a, min(a + block, total))])
            if scores.size > n:
                threshold = float(np.partition(scores, scores.size - n)[scores.size - n])
                near = scores.astype(np.float64) >= threshold - margin  # not in float32
                kept, kept_pos = scores[near], pos[near]
            else:
                kept, kept_pos = scores, pos
        kept_pos = np.sort(kept_pos)
        exact = row_dots(self._sorted[kept_pos], q)
        return kept_pos[np.lexsort((kept_pos, -exact))[:n]]


class Retriever:
    """The factor spaces of a fitted model's scorers (built once, shared by every preset)."""

    def __init__(self, scorers: Mapping[str, BatchScorer], n_items: int,
                 config: RetrievalConfig | None = None, cold: np.ndarray | None = None,
                 stored: StoredIndexes | None = None) -> None:
        self.config = config or RetrievalConfig()
        self.n_items = n_items
        self.spaces: dict[str, FactorSpace] = {}
        self.space_of: dict[str, str] = {}  # scorer instance name -> space key
        #: the never-seen items (sorted ids) and, for the text space (what ``cold_fill``
        #: reads), a search
        #: structure over them alone (an index, or an exact scan of their own contiguous rows
        #: when they are few: ``exact_flops``)
        self.cold = np.zeros(0, np.int64) if cold is None else np.unique(np.asarray(cold, np.int64))
        self.cold_spaces: dict[str, SubSpace] = {}
        self._cold_checked: dict[int, tuple[np.ndarray, bool]] = {}
        t0 = time.perf_counter()
        for name, scorer in scorers.items():
            form = scorer.factor_space() if scorer.is_trained else None
            if form is None:
                continue
            shared, items = form
            key = shared if shared is not None else f"scorer:{name}"
            if items.shape[0] != n_items:
                continue  # not aligned with the catalog: leave it to full scoring
            if key not in self.spaces:
                self.spaces[key] = FactorSpace(items, self.config, stored=stored,
                                               key=f"space:{key}")
                if key == TEXT_SPACE and self.spaces[key].unit and self.cold.size:
                    self.cold_spaces[key] = SubSpace(items, self.cold, self.config,
                                                     stored=stored, key=f"cold:{key}")
            self.space_of[name] = key
        log.info("retrieval: %d factor spaces (%s)%s built in %.2fs", len(self.spaces),
                 ", ".join(self.spaces),
                 f" and an index of their {self.cold.size:,} never-seen items"
                 if self.cold_spaces else "", time.perf_counter() - t0)

    def save_indexes(self, directory: str | Path) -> int:
        """Write the FAISS indexes of every space, and every space's moments and row norms
        (``StoredIndexes`` reads them back); returns how many indexes.  Nothing is written
        when no space has a FAISS index."""
        spaces = [(f"space:{k}", v) for k, v in self.spaces.items()]
        spaces += [(f"cold:{k}", v.space) for k, v in self.cold_spaces.items()]
        if not any(isinstance(v.index, FaissIndex) for _, v in spaces):
            return 0
        import faiss

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        entries: dict[str, dict[str, object]] = {}
        for n, (key, space) in enumerate(spaces):
            entry: dict[str, object] = {"items": int(space.items.shape[0]),
                                        "dim": int(space.items.shape[1]),
                                        "sha256": fingerprint(space.items)}
            moments = {"norms": space.norms}
            if space.mean is not None and space.cov is not None:
                moments |= {"mean": space.mean, "cov": space.cov}
            entry["moments"] = f"m{n}.npz"
            np.savez(out / f"m{n}.npz", allow_pickle=False, **moments)
            if isinstance(space.index, FaissIndex):
                blob = space.index.serialized()
                entry["file"] = f"{n}.npy"
                np.save(out / f"{n}.npy", blob, allow_pickle=False)
                entry["index_sha256"] = hashlib.sha256(blob.data).hexdigest()
            entries[key] = entry
        manifest = {"faiss": faiss.__version__, "settings": _index_settings(self.config),
                    "spaces": entries}
        (out / _MANIFEST).write_text(json.dumps(manifest, indent=2))
        return sum("file" in e for e in entries.values())

    def cold_space(self, key: str, cold: np.ndarray) -> SubSpace | None:
        """The search structure over the never-seen items of space ``key``, when ``cold`` (the
        caller's never-seen items) is the set it was built for; None otherwise."""
        space = self.cold_spaces.get(key)
        if space is None or not self._same_cold(cold):
            return None
        return space

    def _same_cold(self, cold: np.ndarray) -> bool:
        """Whether ``cold`` holds this retriever's never-seen items; compared once per array
        (a pipeline passes the same one on every request), not once per request."""
        known = self._cold_checked.get(id(cold))
        if known is not None and known[0] is cold:
            return known[1]
        same = cold.size == self.cold.size and bool(np.array_equal(cold, self.cold))
        self._cold_checked[id(cold)] = (cold, same)  # holds the array: its id is not reused
        return same


class SubSpace:
    """Some items of a factor space (e.g. the never-seen ones), searchable on their own:
    ``search`` returns catalog ids, about the ``n`` best of these items by ``items @ query``."""

    def __init__(self, items: np.ndarray, ids: np.ndarray, config: RetrievalConfig, *,
                 stored: StoredIndexes | None = None, key: str = "") -> None:
        self.ids = np.asarray(ids, dtype=np.int64)
        self.space = FactorSpace(np.asarray(items)[self.ids], config, moments=False,
                                 stored=stored, key=key)

    def search(self, query: np.ndarray, n: int) -> np.ndarray:
        return self.ids[self.space.search(query, n)]


def retrieval_enabled(config: RetrievalConfig, n_items: int) -> bool:
    """Whether a catalog of ``n_items`` is served by retrieval under ``config``."""
    return config.mode == "ann" or (config.mode == "auto" and n_items >= config.min_items)


class LazyRetriever:
    """Builds the Retriever on first use, once, under a lock; None when retrieval is off."""

    def __init__(self, scorers: Mapping[str, BatchScorer], n_items: int,
                 config: RetrievalConfig, cold: np.ndarray | None = None,
                 stored: StoredIndexes | None = None) -> None:
        self._args = (scorers, n_items, config, cold)
        self._stored = stored
        self._lock = threading.Lock()
        self._value: Retriever | None = None

    def get(self) -> Retriever | None:
        scorers, n_items, config, cold = self._args
        if not retrieval_enabled(config, n_items):
            return None
        with self._lock:
            if self._value is None:
                self._value = Retriever(scorers, n_items, config, cold, self._stored)
                self._stored = None  # read once: its files are not held any longer
            return self._value


INDEX_DIR = "index"
_MANIFEST = "manifest.json"


def fingerprint(vectors: np.ndarray) -> str:
    """SHA-256 of float32 vectors (their shape, then their bytes in row order)."""
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    h = hashlib.sha256(repr(x.shape).encode())
    h.update(x.data.cast("B"))
    return h.hexdigest()


#: how ``FaissIndex`` builds (training sample, spherical k-means): a change there changes it
INDEX_FORMAT = 1


def _index_settings(config: RetrievalConfig) -> dict[str, object]:
    """What a FAISS index's contents depend on, besides its vectors."""
    return {"format": INDEX_FORMAT, "n_lists": config.n_lists, "iterations": config.iterations,
            "seed": config.seed, "faiss_codes": config.faiss_codes}


class StoredIndexes:
    """FAISS indexes saved with a model (``Retriever.save_indexes``), read back in place of a
    rebuild.  Opening maps every file at once, so a model directory replaced on disk
    afterwards (a new model saved over it) cannot mix its indexes with the loaded factors;
    ``take`` then hands each one out only for the vectors and settings it was built from."""

    def __init__(self, directory: str | Path) -> None:
        d = Path(directory)
        self._manifest: dict[str, Any] = json.loads((d / _MANIFEST).read_text())
        spaces = self._manifest.get("spaces", {})
        self._blobs = {key: np.load(d / e["file"], mmap_mode="r", allow_pickle=False)
                       for key, e in spaces.items() if "file" in e}
        self._moments = {}
        for key, e in spaces.items():
            if "moments" in e:
                with np.load(d / e["moments"], allow_pickle=False) as z:
                    self._moments[key] = {name: z[name] for name in z.files}
        self._checked: dict[str, bool] = {}

    @classmethod
    def open(cls, directory: str | Path) -> StoredIndexes | None:
        """The indexes saved in ``directory``, or None when there are none (or they cannot be
        read: the model then rebuilds them, as before they were stored)."""
        d = Path(directory)
        if not (d / _MANIFEST).is_file():
            return None
        try:
            return cls(d)
        except (OSError, ValueError, KeyError, TypeError, AttributeError,
                zipfile.BadZipFile) as e:
            log.warning("retrieval: the stored indexes in %s cannot be read (%s); they will be "
                        "rebuilt", d, e)
            return None

    def _same_vectors(self, key: str, vectors: np.ndarray) -> str | None:
        """Why space ``key``'s stored data does not belong to ``vectors`` (None: it does);
        hashed once per space."""
        entry = self._manifest.get("spaces", {}).get(key, {})
        if (entry.get("items"), entry.get("dim")) != tuple(vectors.shape):
            return f"built over {entry.get('items')} x {entry.get('dim')} vectors"
        if key not in self._checked:
            self._checked[key] = entry.get("sha256") == fingerprint(vectors)
        return None if self._checked[key] else "built over other vectors"

    def moments(self, key: str, vectors: np.ndarray
                ) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray] | None:
        """Space ``key``'s mean, covariance (None when it was saved without them) and row
        norms as computed from ``vectors`` when the model was saved; None when they were not
        saved, or were saved for other vectors."""
        got = self._moments.pop(key, None)
        if got is None:
            return None
        reason = self._same_vectors(key, vectors)
        norms = got.get("norms")
        if reason is None and (norms is None or norms.shape != (vectors.shape[0],)):
            reason = "its norms do not fit"
        if reason is not None or norms is None:
            log.warning("retrieval: the stored moments of %s are not used (%s); computing them",
                        key, reason)
            return None
        return got.get("mean"), got.get("cov"), norms

    def take(self, key: str, vectors: np.ndarray, config: RetrievalConfig) -> Any:
        """The FAISS index stored for space ``key`` if it was built from exactly ``vectors``
        with ``config``'s settings by this FAISS version; else None (with the reason logged)."""
        blob = self._blobs.pop(key, None)
        entry = self._manifest.get("spaces", {}).get(key)
        if blob is None or entry is None:
            return None
        reason = self._mismatch(key, vectors, config)
        index = None
        if reason is None:
            t0 = time.perf_counter()
            try:
                data = np.ascontiguousarray(blob)
                if hashlib.sha256(data.data).hexdigest() != entry.get("index_sha256"):
                    reason = "its file is not the one written"
                else:
                    import faiss

                    index = faiss.deserialize_index(data)
                    if index.ntotal != vectors.shape[0]:
                        reason, index = f"it holds {index.ntotal} items", None
            except Exception as e:  # noqa: BLE001 - derived data: anything wrong rebuilds it
                reason = f"it cannot be read: {e}"
        if index is None:
            log.warning("retrieval: the stored index of %s is not used (%s); rebuilding it",
                        key, reason)
            return None
        log.info("retrieval: read the stored index of %s (%d items) in %.2fs", key,
                 entry["items"], time.perf_counter() - t0)
        return index

    def _mismatch(self, key: str, vectors: np.ndarray, config: RetrievalConfig) -> str | None:
        if resolve_index(config.index) != "faiss":
            return f"the index is {config.index!r}, not faiss"
        import faiss

        if self._manifest.get("faiss") != faiss.__version__:
            return f"built by faiss {self._manifest.get('faiss')}, this is {faiss.__version__}"
        if self._manifest.get("settings") != _index_settings(config):
            return "built with other retrieval settings"
        return self._same_vectors(key, vectors)
