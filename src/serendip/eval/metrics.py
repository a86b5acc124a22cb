"""Top-N evaluation metrics: accuracy, beyond-accuracy, catalog-level, and an aggregator.

Conventions shared by every function here:

* ``rec`` is a 1-D array of item indices, best first.  The value ``-1`` is padding (short
  lists) and is dropped; any other negative index, or a repeated item, raises ``ValueError``.
* ``relevant`` is the set of held-out item indices; an empty one raises ``ValueError``.
* An empty ``rec`` scores 0 on every per-list metric (nothing was recommended).
* Definitions follow the project's metric definitions (docs/metrics.md); each docstring names
  the peer implementation whose definition it matches, or says there is none.

``compute_metrics`` evaluates a whole run (one row of ``k`` items per user) vectorised over
users and gives the same numbers as averaging the per-list functions.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp

if TYPE_CHECKING:
    from serendip.data.dataset import Dataset

__all__ = [
    "ndcg",
    "recall",
    "hit_rate",
    "mrr",
    "average_precision",
    "novelty",
    "arp",
    "tail_share",
    "head_by_item_share",
    "head_by_interaction_share",
    "popularity_groups",
    "ild_cosine",
    "ild_jaccard",
    "unexpectedness",
    "serendipity_ge",
    "primitive_list",
    "calibration_kl",
    "coverage",
    "gini",
    "max_list_share",
    "new_item_share",
    "compute_metrics",
    "ITEM_GROUP_BOUNDS",
]

#: Item-popularity groups for per-group accuracy: items ranked by training popularity (most
#: popular first, ties by lower index); head = first 20 % of the catalog, mid = next 30 %,
#: tail = the remaining 50 % (which includes every item nobody interacted with).
ITEM_GROUP_BOUNDS = (0.2, 0.5)


# --------------------------------------------------------------------------- validation
def _check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k <= 0:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return int(k)


def _as_items(values: np.ndarray | Iterable[int], name: str, *, unique: bool = True) -> np.ndarray:
    """1-D int64 array of item indices with ``-1`` padding removed."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of item indices, got shape {arr.shape}")
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if not np.issubdtype(arr.dtype, np.integer):
        if np.issubdtype(arr.dtype, np.floating) and np.all(np.isfinite(arr)) and np.all(
            arr == np.round(arr)
        ):
            arr = arr.astype(np.int64)
        else:
            raise ValueError(f"{name} must hold integer item indices, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    arr = arr[arr != -1]
    bad = arr[arr < 0]
    if bad.size:
        raise ValueError(f"{name} holds negative item index {int(bad[0])} (only -1 pads a list)")
    if unique and arr.size > 1:
        s = np.sort(arr)
        dup = s[1:][s[1:] == s[:-1]]
        if dup.size:
            raise ValueError(f"{name} repeats item {int(dup[0])}; a list holds each item once")
    return arr


def _relevant(relevant: np.ndarray | Iterable[int]) -> np.ndarray:
    rel = np.unique(_as_items(relevant, "relevant", unique=False))
    if rel.size == 0:
        raise ValueError("relevant must hold at least one item index, got an empty array")
    return rel


def _check_range(items: np.ndarray, n: int, name: str, what: str) -> None:
    if items.size and int(items.max()) >= n:
        raise ValueError(
            f"{name} holds item index {int(items.max())}, outside the {n} items of {what}"
        )


def _discounts(k: int) -> np.ndarray:
    """Log2 rank discounts 1/log2(rank + 1) for ranks 1..k."""
    return 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))


# --------------------------------------------------------------------------- accuracy
def _hits(rec: np.ndarray, relevant: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    k = _check_k(k)
    rel = _relevant(relevant)
    top = _as_items(rec, "rec")[:k]
    return np.isin(top, rel), rel


def ndcg(rec: np.ndarray, relevant: np.ndarray, k: int) -> float:
    """NDCG@k, binary gain, discount 1/log2(rank+1), ideal DCG over min(k, |relevant|).

    Matches RecBole's NDCG and ``lenskit.metrics.NDCG(n=k, weight=LogRankWeight(offset=1))``
    (LensKit's *default* weight clips rank 1 to log2(2), so ranks 1 and 2 weigh the same).
    """
    hits, rel = _hits(rec, relevant, k)
    disc = _discounts(k)
    dcg = float(disc[: hits.size][hits].sum())
    ideal = float(disc[: min(k, rel.size)].sum())
    return dcg / ideal


def recall(rec: np.ndarray, relevant: np.ndarray, k: int) -> float:
    """Recall@k = |top-k ∩ relevant| / |relevant| (RecBole's and Elliot's Recall).

    LensKit's ``Recall(n=k)`` divides by min(|relevant|, k) instead; the two agree whenever
    |relevant| <= k.
    """
    hits, rel = _hits(rec, relevant, k)
    return float(hits.sum()) / rel.size


def hit_rate(rec: np.ndarray, relevant: np.ndarray, k: int) -> float:
    """1 if any of the top k is relevant, else 0 (``lenskit.metrics.Hit``, RecBole's Hit)."""
    hits, _ = _hits(rec, relevant, k)
    return float(hits.any())


def mrr(rec: np.ndarray, relevant: np.ndarray, k: int) -> float:
    """Reciprocal rank of the first relevant item in the top k, 0 if none.

    Matches ``lenskit.metrics.RecipRank(n=k)`` and RecBole's MRR.
    """
    hits, _ = _hits(rec, relevant, k)
    pos = np.flatnonzero(hits)
    return 1.0 / (pos[0] + 1.0) if pos.size else 0.0


def average_precision(rec: np.ndarray, relevant: np.ndarray, k: int) -> float:
    """AP@k = sum of precision@rank at each hit / min(k, |relevant|) (RecBole's MAP).

    ``lenskit.metrics.AveragePrecision(n=k)`` divides by min(|relevant|, len(list)), which is
    the same whenever the list has at least k items.
    """
    hits, rel = _hits(rec, relevant, k)
    if not hits.any():
        return 0.0
    ranks = np.arange(1, hits.size + 1, dtype=np.float64)
    prec = np.cumsum(hits) / ranks
    return float(prec[hits].sum()) / min(k, rel.size)


# --------------------------------------------------------------------------- popularity
def _self_information(popularity: np.ndarray, n_users: int) -> np.ndarray:
    if isinstance(n_users, bool) or not isinstance(n_users, int | np.integer) or n_users <= 0:
        raise ValueError(f"n_users must be a positive integer, got {n_users!r}")
    pop = np.asarray(popularity, dtype=np.float64)
    if pop.size and (pop.min() < 0 or pop.max() > n_users):
        raise ValueError(
            f"popularity must lie in [0, n_users={n_users}], got values in "
            f"[{pop.min()}, {pop.max()}]"
        )
    return -np.log2(np.maximum(pop, 1.0) / n_users)


def novelty(rec: np.ndarray, popularity: np.ndarray, n_users: int) -> float:
    """Mean self-information -log2(users(i)/n_users) of the list (rectools MeanInvUserFreq).

    Items no training user touched count as 1 user, so novelty is capped at log2(n_users).
    """
    info = _self_information(popularity, n_users)
    items = _as_items(rec, "rec")
    _check_range(items, info.size, "rec", "popularity")
    return float(info[items].mean()) if items.size else 0.0


def arp(rec: np.ndarray, popularity: np.ndarray) -> float:
    """Average recommendation popularity: mean training popularity of the list (Elliot ARP)."""
    pop = np.asarray(popularity, dtype=np.float64)
    items = _as_items(rec, "rec")
    _check_range(items, pop.size, "rec", "popularity")
    return float(pop[items].mean()) if items.size else 0.0


def tail_share(rec: np.ndarray, head_mask: np.ndarray) -> float:
    """Fraction of list items outside the head (APLT, Abdollahpouri et al.; Elliot APLT)."""
    head = np.asarray(head_mask, dtype=bool)
    items = _as_items(rec, "rec")
    _check_range(items, head.size, "rec", "head_mask")
    return float((~head[items]).mean()) if items.size else 0.0


def _popularity_order(popularity: np.ndarray) -> np.ndarray:
    """Item indices by descending popularity, ties broken by lower index first."""
    pop = np.asarray(popularity, dtype=np.float64)
    return np.lexsort((np.arange(pop.size), -pop))


def _check_share(share: float, name: str = "share") -> float:
    if not (isinstance(share, float | int) and not isinstance(share, bool)) or not (
        0.0 < float(share) <= 1.0
    ):
        raise ValueError(f"{name} must be a number in (0, 1], got {share!r}")
    return float(share)


def head_by_item_share(popularity: np.ndarray, share: float = 0.2) -> np.ndarray:
    """Bool mask of the ceil(share * n_items) most popular items, ties by lower index.

    The "short head" of Abdollahpouri et al. (2019) as used for APLT.
    """
    share = _check_share(share)
    pop = np.asarray(popularity, dtype=np.float64)
    mask = np.zeros(pop.size, dtype=bool)
    n_head = math.ceil(share * pop.size - 1e-9)
    mask[_popularity_order(pop)[:n_head]] = True
    return mask


def head_by_interaction_share(popularity: np.ndarray, share: float = 0.8) -> np.ndarray:
    """Bool mask of the most popular items that together hold ``share`` of all interactions.

    Elliot's short head: the smallest popularity-ordered prefix whose cumulative interaction
    count reaches ``share`` of the total (ties by lower index).  All-zero popularity: no head.
    """
    share = _check_share(share)
    pop = np.asarray(popularity, dtype=np.float64)
    mask = np.zeros(pop.size, dtype=bool)
    total = float(pop.sum())
    if total <= 0:
        return mask
    order = _popularity_order(pop)
    cum = np.cumsum(pop[order])
    n_head = int(np.searchsorted(cum, share * total * (1 - 1e-12), side="left")) + 1
    mask[order[: min(n_head, pop.size)]] = True
    return mask


def popularity_groups(
    popularity: np.ndarray, bounds: tuple[float, float] = ITEM_GROUP_BOUNDS
) -> np.ndarray:
    """Group of each item: 0 head, 1 mid, 2 tail, by popularity rank (see ITEM_GROUP_BOUNDS).

    Head = first ceil(bounds[0] * n) items by popularity, mid = up to ceil(bounds[1] * n).
    """
    lo, hi = bounds
    if not (0.0 < lo <= hi <= 1.0):
        raise ValueError(f"bounds must satisfy 0 < head <= mid <= 1, got {bounds!r}")
    pop = np.asarray(popularity, dtype=np.float64)
    n = pop.size
    rank = np.empty(n, dtype=np.int64)
    rank[_popularity_order(pop)] = np.arange(n)
    groups = np.full(n, 2, dtype=np.int8)
    groups[rank < math.ceil(hi * n - 1e-9)] = 1
    groups[rank < math.ceil(lo * n - 1e-9)] = 0
    return groups


# --------------------------------------------------------------------------- diversity
def _normalise_rows(vectors: np.ndarray) -> np.ndarray:
    v = np.asarray(vectors, dtype=np.float64)
    if v.ndim != 2:
        raise ValueError(f"vectors must be a 2-D (n_items, d) array, got shape {v.shape}")
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return np.divide(v, norms, out=np.zeros_like(v), where=norms > 0)


def ild_cosine(rec: np.ndarray, vectors: np.ndarray) -> float:
    """Intra-list diversity: mean over item pairs of 1 - cosine (rectools IntraListDiversity).

    Range [0, 2] (0 for a list of identical directions).  Zero vectors have cosine 0 with
    everything.  Lists with fewer than 2 items score 0.
    """
    items = _as_items(rec, "rec")
    v = np.asarray(vectors)
    _check_range(items, v.shape[0] if v.ndim else 0, "rec", "vectors")
    if items.size < 2:
        return 0.0
    x = _normalise_rows(v[items])
    sim = x @ x.T
    iu = np.triu_indices(items.size, 1)
    return float(np.clip(np.mean(1.0 - sim[iu]), 0.0, 2.0))


def _category_rows(categories: sp.spmatrix | np.ndarray, items: np.ndarray) -> np.ndarray:
    if sp.issparse(categories):
        sub = sp.csr_matrix(categories)[items].toarray()
    else:
        sub = np.asarray(categories)[items]
    return (sub != 0).astype(np.float64)


def _n_rows(m: sp.spmatrix | np.ndarray) -> int:
    return int(m.shape[0])


def ild_jaccard(rec: np.ndarray, categories_csr: sp.spmatrix | np.ndarray) -> float:
    """Intra-list diversity over category sets: mean pairwise 1 - Jaccard (Elliot-style ILD).

    Two items that both have no category count as identical (distance 0), so missing
    metadata never inflates diversity.  Lists with fewer than 2 items score 0.
    """
    items = _as_items(rec, "rec")
    _check_range(items, _n_rows(categories_csr), "rec", "categories")
    if items.size < 2:
        return 0.0
    x = _category_rows(categories_csr, items)
    inter = x @ x.T
    size = x.sum(axis=1)
    union = size[:, None] + size[None, :] - inter
    jac = np.divide(inter, union, out=np.ones_like(inter), where=union > 0)
    iu = np.triu_indices(items.size, 1)
    return float(np.mean(1.0 - jac[iu]))


def unexpectedness(rec: np.ndarray, history: np.ndarray, vectors: np.ndarray) -> float:
    """1 - mean cosine between list items and history items (Kaminskas & Bridge 2016).

    The mean is over list items of the mean over history items.  An empty list scores 0; an
    empty history raises ValueError (the metric is undefined for a user with no profile).
    """
    items = _as_items(rec, "rec")
    hist = np.unique(_as_items(history, "history", unique=False))
    v = np.asarray(vectors)
    n = v.shape[0] if v.ndim else 0
    _check_range(items, n, "rec", "vectors")
    _check_range(hist, n, "history", "vectors")
    if hist.size == 0:
        raise ValueError("history must hold at least one item index, got an empty array")
    if items.size == 0:
        return 0.0
    x = _normalise_rows(v[items])
    h = _normalise_rows(v[hist])
    # clipped: rounding can put a cosine a hair past +-1
    return float(np.clip(1.0 - np.mean(x @ h.T), 0.0, 2.0))


def primitive_list(popularity: np.ndarray, size: int = 50) -> np.ndarray:
    """Ge et al.'s primitive recommender: the ``size`` most popular items, ties by index."""
    if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 0:
        raise ValueError(f"primitive size must be a non-negative integer, got {size!r}")
    return _popularity_order(popularity)[: int(size)].astype(np.int64)


def serendipity_ge(rec: np.ndarray, relevant: np.ndarray, primitive: np.ndarray, k: int) -> float:
    """|relevant ∩ (top-k \\ primitive)| / k (Ge, Delgado-Battenfeld & Jannach 2010).

    ``primitive`` is the list of an obvious recommender (here: the 50 most popular items).
    """
    hits, _ = _hits(rec, relevant, k)
    top = _as_items(rec, "rec")[:k]
    prim = _as_items(primitive, "primitive", unique=False)
    unexpected = ~np.isin(top, prim)
    return float((hits & unexpected).sum()) / k


def _genre_weights(categories: sp.spmatrix | np.ndarray) -> sp.csr_matrix:
    """Item x genre p(g|i): each of an item's genres gets 1/|genres(i)|; none -> zero row."""
    c = sp.csr_matrix(categories, dtype=np.float64)
    c.data = (c.data != 0).astype(np.float64)
    c.eliminate_zeros()
    counts = np.asarray(c.sum(axis=1)).ravel()
    inv = np.divide(1.0, counts, out=np.zeros_like(counts), where=counts > 0)
    return sp.csr_matrix(sp.diags(inv) @ c)


def _kl_calibration(p: np.ndarray, q: np.ndarray, alpha: float) -> np.ndarray:
    """Row-wise KL(p || (1-alpha) q + alpha p) for row-normalised p, q (natural log)."""
    qt = (1.0 - alpha) * q + alpha * p
    ratio = np.divide(p, qt, out=np.ones_like(p), where=p > 0)
    return np.sum(np.where(p > 0, p * np.log(ratio), 0.0), axis=1)


def _row_normalise(m: np.ndarray) -> np.ndarray:
    s = m.sum(axis=1, keepdims=True)
    return np.divide(m, s, out=np.zeros_like(m), where=s > 0)


def calibration_kl(
    history: np.ndarray,
    rec: np.ndarray,
    categories_csr: sp.spmatrix | np.ndarray,
    alpha: float = 0.01,
) -> float:
    """Miscalibration KL(p || q~), q~ = (1-alpha) q + alpha p, natural log (Steck 2018).

    p = genre distribution of the history, q = of the list; each item spreads weight 1 evenly
    over its genres, items without genres are ignored.  An uncategorised list gives q = 0 and
    KL = log(1/alpha).  A history with no categorised item raises ValueError.
    """
    if not (0.0 < float(alpha) <= 1.0):
        raise ValueError(f"alpha must be in (0, 1], got {alpha!r}")
    hist = np.unique(_as_items(history, "history", unique=False))
    items = _as_items(rec, "rec")
    n = _n_rows(categories_csr)
    _check_range(hist, n, "history", "categories")
    _check_range(items, n, "rec", "categories")
    w = _genre_weights(categories_csr)
    p = np.asarray(w[hist].sum(axis=0), dtype=np.float64).reshape(1, -1)
    if p.sum() <= 0:
        raise ValueError(
            f"history has no item with a category ({hist.size} item(s)); calibration is undefined"
        )
    q = np.asarray(w[items].sum(axis=0), dtype=np.float64).reshape(1, -1)
    return float(_kl_calibration(_row_normalise(p), _row_normalise(q), float(alpha))[0])


# --------------------------------------------------------------------------- catalog level
def _check_n_items(n_items: int) -> int:
    if isinstance(n_items, bool) or not isinstance(n_items, int | np.integer) or n_items <= 0:
        raise ValueError(f"n_items must be a positive integer, got {n_items!r}")
    return int(n_items)


def _flatten_lists(lists: np.ndarray | Iterable[np.ndarray], n_items: int) -> np.ndarray:
    if isinstance(lists, np.ndarray):
        flat = lists.reshape(-1)
    else:
        parts = [np.asarray(x).reshape(-1) for x in lists]
        flat = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    items = _as_items(flat, "lists", unique=False)
    _check_range(items, n_items, "lists", "the catalog")
    return items


def coverage(lists: np.ndarray | Iterable[np.ndarray], n_items: int) -> float:
    """Catalog coverage: |union of lists| / n_items (RecBole ItemCoverage)."""
    n_items = _check_n_items(n_items)
    items = _flatten_lists(lists, n_items)
    return float(np.unique(items).size) / n_items


def gini(lists: np.ndarray | Iterable[np.ndarray], n_items: int) -> float:
    """Gini index of per-item recommendation counts, unrecommended items as 0 (RecBole GiniIndex).

    sum_j (2j - n - 1) c_(j) / (n * sum c) over counts sorted ascending; 0 = every item
    recommended equally often, (n-1)/n = one item takes every slot.  No items at all: 0.
    """
    n_items = _check_n_items(n_items)
    items = _flatten_lists(lists, n_items)
    if items.size == 0:
        return 0.0
    counts = np.sort(np.bincount(items, minlength=n_items).astype(np.float64))
    j = np.arange(1, n_items + 1, dtype=np.float64)
    return float(np.sum((2 * j - n_items - 1) * counts) / (n_items * counts.sum()))


def _list_rows(lists: np.ndarray | Iterable[np.ndarray], n_items: int) -> list[np.ndarray]:
    """Each list as its own validated item array (a 2-D array gives one list per row)."""
    if isinstance(lists, np.ndarray) and lists.ndim != 2:
        raise ValueError(f"lists must be a 2-D array or a sequence of lists, got shape {lists.shape}")
    rows = [_as_items(np.asarray(x).reshape(-1), "lists") for x in lists]
    for r in rows:
        _check_range(r, n_items, "lists", "the catalog")
    return rows


def max_list_share(
    lists: np.ndarray | Iterable[np.ndarray], n_items: int, items_mask: np.ndarray | None = None
) -> float:
    """Largest share of the lists that one item appears in (over ``items_mask`` items if given).

    Gini summarises the whole exposure distribution; this names its worst case: 0.9 means
    some item is in nine lists out of ten.  No peer library reports it; it is the maximum of
    the per-item counts behind RecBole's GiniIndex, divided by the number of lists.  No lists,
    or no item of the mask recommended: 0.
    """
    n_items = _check_n_items(n_items)
    rows = _list_rows(lists, n_items)
    if not rows:
        return 0.0
    flat = np.concatenate(rows)
    counts = np.bincount(flat, minlength=n_items)
    if items_mask is not None:
        mask = np.asarray(items_mask, dtype=bool)
        if mask.shape != (n_items,):
            raise ValueError(f"items_mask must have shape ({n_items},), got {mask.shape}")
        counts = counts[mask]
    return float(counts.max()) / len(rows) if counts.size else 0.0


def new_item_share(lists: np.ndarray | Iterable[np.ndarray], new_items: np.ndarray) -> float:
    """Share of all list slots (padding excluded) that hold a new item.

    New items are those first seen after a time cut (``Split.new_items``); compare the share
    with their share of the test interactions to see whether lists give them their due.  No
    peer library reports it.  No slots at all: 0.
    """
    new = np.unique(_as_items(new_items, "new_items", unique=False))
    if isinstance(lists, np.ndarray):
        flat = lists.reshape(-1)
    else:
        parts = [np.asarray(x).reshape(-1) for x in lists]
        flat = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    items = _as_items(flat, "lists", unique=False)
    return float(np.isin(items, new).mean()) if items.size else 0.0


# --------------------------------------------------------------------------- aggregator
def _mean(x: np.ndarray | np.floating) -> float:
    """Mean over users; NaN when no user qualifies (e.g. an empty popularity group)."""
    arr = np.asarray(x, dtype=np.float64)
    return float(np.mean(arr)) if arr.size else float("nan")


def _pairwise_mean_distance(
    feats: np.ndarray, recs: np.ndarray, valid: np.ndarray, *, jaccard: bool
) -> np.ndarray:
    """Per row: mean over valid pairs of 1 - similarity; rows with < 2 items give 0."""
    n, k = recs.shape
    out = np.zeros(n)
    if k < 2:
        return out
    width = max(int(feats.shape[1]), 1)
    chunk = max(1, 4_000_000 // (k * width))
    eye = np.eye(k, dtype=bool)
    for s in range(0, n, chunk):
        r = recs[s : s + chunk]
        m = valid[s : s + chunk]
        x = feats[np.where(m, r, 0)] * m[..., None]
        inter = np.einsum("ukd,ujd->ukj", x, x)
        if jaccard:
            size = x.sum(axis=2)
            union = size[:, :, None] + size[:, None, :] - inter
            sim = np.divide(inter, union, out=np.ones_like(inter), where=union > 0)
        else:
            sim = inter
        pair = m[:, :, None] & m[:, None, :] & ~eye
        cnt = pair.sum(axis=(1, 2))
        tot = np.where(pair, 1.0 - sim, 0.0).sum(axis=(1, 2))
        out[s : s + chunk] = np.divide(tot, cnt, out=np.zeros_like(tot), where=cnt > 0)
    return out


def compute_metrics(
    recs: np.ndarray,
    users: np.ndarray,
    truth: Mapping[int, np.ndarray],
    train: Dataset,
    k: int,
    *,
    primitive_size: int = 50,
    head_share: float = 0.2,
    new_items: np.ndarray | None = None,
) -> dict[str, float]:
    """Mean of every per-list metric over users, plus coverage and Gini over all lists.

    ``recs[r]`` is the list for ``users[r]`` (best first; ``-1`` entries are dropped, then the
    first ``k`` items are evaluated), ``truth[u]`` its held-out items, ``train`` gives popularity, activity,
    histories, vectors and categories.  Keys: ndcg, recall, hit_rate, mrr, map, novelty, arp,
    tail_share (head = ``head_share`` of items), tail_share_elliot (80 %-of-interactions
    head), serendipity, coverage, gini, max_list_share and max_list_share_tail (the largest
    share of the lists one item, or one tail item, appears in), ndcg_/recall_ head/mid/tail
    (relevant set restricted to that popularity group, see ITEM_GROUP_BOUNDS; users with no
    relevant item in a group are skipped), ndcg_users_low/mid/high (evaluated users split into
    three equal-size groups by training activity, ties by user index); with vectors: ild,
    unexpectedness (users with an empty history skipped); with categories: ild_genre,
    calibration_kl (users without a categorised history item skipped); with ``new_items``
    (items first seen after a time cut): new_item_share (of all list slots), new_item_test_share
    (of the evaluated users' held-out pairs), ndcg_new and recall_new (relevant set restricted
    to new items; users with none skipped).  A group with no user gives NaN.
    """
    k = _check_k(k)
    head_share = _check_share(head_share, "head_share")
    n_items, n_users = train.n_items, train.n_users
    recs = np.asarray(recs)
    if recs.ndim != 2:
        raise ValueError(f"recs must be a 2-D (n_users, k) array, got shape {recs.shape}")
    if not np.issubdtype(recs.dtype, np.integer):
        raise ValueError(f"recs must hold integer item indices, got dtype {recs.dtype}")
    users = np.asarray(users, dtype=np.int64).reshape(-1)
    if users.size != recs.shape[0]:
        raise ValueError(
            f"recs has {recs.shape[0]} row(s) but users has {users.size} entr(ies); "
            "one list per user is needed"
        )
    if users.size == 0:
        raise ValueError("users is empty: at least one evaluated user is needed")
    if users.min() < 0 or users.max() >= n_users:
        bad = users[(users < 0) | (users >= n_users)][0]
        raise ValueError(f"users holds index {int(bad)}, outside the {n_users} training users")

    recs = recs.astype(np.int64)
    if recs.size and (recs.min() < -1 or recs.max() >= n_items):
        bad = recs[(recs < -1) | (recs >= n_items)][0]
        raise ValueError(
            f"recs holds item index {int(bad)}; valid are 0..{n_items - 1} and -1 for padding"
        )
    # Compact each row so padding sits at the end and valid entries keep their order.
    order = np.argsort(recs < 0, axis=1, kind="stable")
    recs = np.take_along_axis(recs, order, axis=1)
    valid = recs >= 0
    n_eval, width = recs.shape
    if width > 1:
        srt = np.sort(np.where(valid, recs, -1 - np.arange(width)[None, :]), axis=1)
        dup = (srt[:, 1:] == srt[:, :-1]) & (srt[:, 1:] >= 0)
        if dup.any():
            row = int(np.flatnonzero(dup.any(axis=1))[0])
            raise ValueError(
                f"the list of user {int(users[row])} repeats item "
                f"{int(srt[row, 1:][dup[row]][0])}; a list holds each item once"
            )
    recs, valid = recs[:, :k], valid[:, :k]
    n_eval, width = recs.shape
    safe = np.where(valid, recs, 0)

    # ---- truth as sorted (row, item) keys, for vectorised membership
    rel_rows: list[np.ndarray] = []
    n_rel = np.zeros(n_eval, dtype=np.int64)
    for r, u in enumerate(users.tolist()):
        if u not in truth:
            raise ValueError(f"truth has no entry for user {u}")
        rel = np.unique(_as_items(truth[u], f"truth[{u}]", unique=False))
        if rel.size == 0:
            raise ValueError(f"truth[{u}] is empty: every evaluated user needs a held-out item")
        _check_range(rel, n_items, f"truth[{u}]", "the catalog")
        rel_rows.append(rel)
        n_rel[r] = rel.size
    rel_row_idx = np.repeat(np.arange(n_eval, dtype=np.int64), n_rel)
    rel_items = np.concatenate(rel_rows)
    keys = rel_row_idx * n_items + rel_items
    hits = valid & np.isin(np.arange(n_eval)[:, None] * n_items + safe, keys)

    disc = _discounts(k)[:width]
    full_disc = _discounts(k)
    ideal_cum = np.cumsum(full_disc)
    ranks = np.arange(1, width + 1, dtype=np.float64)

    def _ndcg_rows(h: np.ndarray, nrel: np.ndarray) -> np.ndarray:
        dcg = (h * disc).sum(axis=1)
        ideal = ideal_cum[np.minimum(nrel, k) - 1]
        return dcg / ideal

    def _recall_rows(h: np.ndarray, nrel: np.ndarray) -> np.ndarray:
        return h.sum(axis=1) / nrel

    nd = _ndcg_rows(hits, n_rel)
    out: dict[str, float] = {}
    out["ndcg"] = _mean(nd)
    out["recall"] = _mean(_recall_rows(hits, n_rel))
    out["hit_rate"] = _mean(hits.any(axis=1).astype(np.float64))
    first = np.argmax(hits, axis=1)
    out["mrr"] = _mean(np.where(hits.any(axis=1), 1.0 / (first + 1.0), 0.0))
    prec = np.cumsum(hits, axis=1) / ranks
    out["map"] = _mean((prec * hits).sum(axis=1) / np.minimum(n_rel, k))

    # ---- popularity-based
    pop = train.item_popularity
    n_list = valid.sum(axis=1)

    def _list_mean(values: np.ndarray) -> np.ndarray:
        tot = np.where(valid, values[safe], 0.0).sum(axis=1)
        return np.divide(tot, n_list, out=np.zeros_like(tot), where=n_list > 0)

    out["novelty"] = _mean(_list_mean(_self_information(pop, n_users)))
    out["arp"] = _mean(_list_mean(pop))
    is_tail = ~head_by_item_share(pop, head_share)
    out["tail_share"] = _mean(_list_mean(is_tail.astype(float)))
    out["tail_share_elliot"] = _mean(
        _list_mean((~head_by_interaction_share(pop, 0.8)).astype(float))
    )
    prim = np.zeros(n_items, dtype=bool)
    prim[primitive_list(pop, primitive_size)] = True
    out["serendipity"] = _mean((hits & ~prim[safe]).sum(axis=1) / k)

    # ---- catalog level
    out["coverage"] = coverage(recs, n_items)
    out["gini"] = gini(recs, n_items)
    # rows are validated duplicate-free, so an item's slot count is its number of lists
    counts = np.bincount(recs[valid], minlength=n_items)
    out["max_list_share"] = float(counts.max()) / n_eval
    out["max_list_share_tail"] = float(counts[is_tail].max()) / n_eval if is_tail.any() else 0.0

    # ---- items first seen after a time cut
    if new_items is not None:
        new = _as_items(new_items, "new_items", unique=False)
        _check_range(new, n_items, "new_items", "the catalog")
        is_new = np.zeros(n_items, dtype=bool)
        is_new[new] = True
        n_slots = int(valid.sum())
        out["new_item_share"] = float((valid & is_new[safe]).sum()) / n_slots if n_slots else 0.0
        rel_new = is_new[rel_items]
        out["new_item_test_share"] = float(rel_new.mean())
        nrel_new = np.bincount(rel_row_idx[rel_new], minlength=n_eval)
        keep = nrel_new > 0
        h_new = hits & is_new[safe]
        out["ndcg_new"] = _mean(_ndcg_rows(h_new[keep], nrel_new[keep]))
        out["recall_new"] = _mean(_recall_rows(h_new[keep], nrel_new[keep]))

    # ---- accuracy by item-popularity group
    groups = popularity_groups(pop, (head_share, max(head_share, ITEM_GROUP_BOUNDS[1])))
    rec_group = groups[safe]
    rel_group = groups[rel_items]
    for g, name in enumerate(("head", "mid", "tail")):
        nrel_g = np.bincount(rel_row_idx[rel_group == g], minlength=n_eval)
        keep = nrel_g > 0
        h_g = hits & (rec_group == g)
        out[f"ndcg_{name}"] = _mean(_ndcg_rows(h_g[keep], nrel_g[keep]))
        out[f"recall_{name}"] = _mean(_recall_rows(h_g[keep], nrel_g[keep]))

    # ---- accuracy by user-activity group (terciles of the evaluated users)
    act = train.user_activity[users]
    by_act = np.lexsort((users, act))
    for part, name in zip(np.array_split(by_act, 3), ("low", "mid", "high"), strict=True):
        out[f"ndcg_users_{name}"] = _mean(nd[part])

    # ---- content-based
    matrix = train.matrix[users]
    hist_len = np.asarray(matrix.sum(axis=1)).ravel()
    if train.item_vectors is not None:
        vn = _normalise_rows(train.item_vectors)
        out["ild"] = _mean(_pairwise_mean_distance(vn, recs, valid, jaccard=False))
        hmean = np.asarray(matrix @ vn) / np.maximum(hist_len, 1)[:, None]
        lsum = np.einsum("ukd,uk->ud", vn[safe], valid.astype(np.float64))
        lmean = np.divide(lsum, n_list[:, None], out=np.zeros_like(lsum), where=n_list[:, None] > 0)
        unexp = np.where(n_list > 0, 1.0 - np.sum(lmean * hmean, axis=1), 0.0)
        out["unexpectedness"] = _mean(unexp[hist_len > 0])
    cats = train.item_categories
    if cats is not None:
        cdense_ok = cats.shape[1] * n_items <= 50_000_000
        if cdense_ok:
            feats = (cats.toarray() != 0).astype(np.float64)
            out["ild_genre"] = _mean(_pairwise_mean_distance(feats, recs, valid, jaccard=True))
        else:
            out["ild_genre"] = _mean(
                np.array([ild_jaccard(recs[r][valid[r]], cats) for r in range(n_eval)])
            )
        w = _genre_weights(cats)
        p = sp.csr_matrix(matrix @ w).toarray()
        sel = sp.csr_matrix(
            (np.ones(int(valid.sum())), (np.nonzero(valid)[0], recs[valid])),
            shape=(n_eval, n_items),
        )
        q = sp.csr_matrix(sel @ w).toarray()
        has_p = p.sum(axis=1) > 0
        kl = _kl_calibration(_row_normalise(p[has_p]), _row_normalise(q[has_p]), 0.01)
        out["calibration_kl"] = _mean(kl)
    return out
