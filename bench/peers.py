"""Peer recommenders, each with a small hyperparameter grid tuned on a validation split.

Every peer trains on ``split.train`` and returns a (len(users) x n_items) score matrix in
serendip's item index space, so that every system is ranked by the same ``top_k`` and measured
by the same ``compute_metrics`` on the same split.  Peers:

- ``implicit-ALS``: implicit's AlternatingLeastSquares;
- ``cornac-EASE``: Cornac's EASE (the closed form of Steck 2019);
- ``lenskit-ItemKNN`` and ``lenskit-ImplicitMF``: LensKit's item k-NN and implicit-feedback MF;
- ``transition``: a plain first-order transition baseline written here (order-aware);
- ``cornac-SASRec``: Cornac's self-attentive sequential model (order-aware).

``tune_peer`` picks a peer's hyperparameters by NDCG@K on a validation split that the caller
carves from the training part (``serendip.data.validation_split``); the test part is never
seen.  Order-aware peers read each user's training events in timestamp order, so they only
run on data whose timestamps are an order (``Peer.needs_order``).
"""

from __future__ import annotations

import os
import time
import warnings
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from serendip.data.dataset import Dataset
from serendip.data.splits import Split
from serendip.eval.metrics import compute_metrics
from serendip.eval.runner import truth_of

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

__all__ = [
    "Peer",
    "PEERS",
    "PeerSearch",
    "top_k",
    "eval_users",
    "search_peer",
    "tune_peer",
    "transition_scores",
]

Params = dict[str, Any]
ScoreFn = Callable[..., np.ndarray]


# --------------------------------------------------------------------------- ranking
def top_k(scores: np.ndarray, users: np.ndarray, split: Split, k: int, *, seed: int = 0,
          chunk: int = 2048) -> np.ndarray:
    """Top-``k`` item indices per row of ``scores`` (row ``r`` belongs to ``users[r]``).

    Items in the user's training history are never returned; on a cold-item split only the
    cold items are ranked.  Items a peer cannot score (non-finite) rank after every scored
    item, and ties are broken at random (seeded), never by catalog order.  Rows run out of
    items are padded with ``-1``.
    """
    users = np.asarray(users, dtype=np.int64)
    n_items = scores.shape[1]
    k_eff = min(k, n_items)
    out = np.full((len(users), k), -1, dtype=np.int64)
    allowed = None
    if split.cold_items is not None:
        allowed = np.zeros(n_items, dtype=bool)
        allowed[split.cold_items] = True
    seen_all = split.train.matrix
    rng = np.random.default_rng(seed)
    for s in range(0, len(users), chunk):
        rows = slice(s, s + chunk)
        sc = np.array(scores[rows], dtype=np.float64)
        finite = np.isfinite(sc)
        lo = np.where(finite, sc, np.inf).min(axis=1)
        lo = np.where(np.isfinite(lo), lo, 0.0)
        sc = np.where(finite, sc, (lo - 1.0)[:, None])
        r, c = seen_all[users[rows]].nonzero()
        sc[r, c] = -np.inf
        if allowed is not None:
            sc[:, ~allowed] = -np.inf
        tie = rng.random(sc.shape)
        order = np.lexsort((tie, -sc), axis=-1)[:, :k_eff]
        picked = np.take_along_axis(sc, order, axis=1)
        out[rows, :k_eff] = np.where(np.isneginf(picked), -1, order)
    return out


def eval_users(split: Split, max_users: int | None = None, seed: int = 0) -> np.ndarray:
    """The users of ``split`` with held-out items, at most ``max_users`` of them (seeded)."""
    users = np.unique(split.test["user"].to_numpy(np.int64))
    if max_users is not None and len(users) > max_users:
        users = np.sort(np.random.default_rng(seed).choice(users, max_users, replace=False))
    return users


# --------------------------------------------------------------------------- helpers
def _binary_interactions(train: Dataset) -> pd.DataFrame:
    """One row per (user, item) pair of the training part, oldest first per user."""
    inter = train.interactions.sort_values(["user", "timestamp"], kind="stable")
    return inter.drop_duplicates(["user", "item"], keep="last")


_CACHE: weakref.WeakKeyDictionary[Dataset, dict[str, Any]] = weakref.WeakKeyDictionary()


def _cached(train: Dataset, key: str, build: Callable[[], Any]) -> Any:
    """Per-training-Dataset cache for inputs the grid shares (library data sets)."""
    slot = _CACHE.setdefault(train, {})
    if key not in slot:
        slot[key] = build()
    return slot[key]


# --------------------------------------------------------------------------- implicit
def implicit_als(split: Split, users: np.ndarray, factors: int = 64,
                 regularization: float = 0.05, alpha: float = 2.0,
                 iterations: int = 15) -> np.ndarray:
    """``implicit``'s AlternatingLeastSquares (conjugate-gradient solver, one BLAS thread)."""
    import implicit
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, "blas"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="OpenBLAS")
        model = implicit.als.AlternatingLeastSquares(
            factors=factors, regularization=regularization, alpha=alpha,
            iterations=iterations, random_state=42, use_gpu=False,
        )
        model.fit(split.train.matrix.tocsr(), show_progress=False)
    return np.asarray(model.user_factors[users] @ model.item_factors.T, dtype=np.float32)


# --------------------------------------------------------------------------- Cornac
def _cornac_uir(train: Dataset) -> Any:
    import cornac

    inter = _binary_interactions(train)
    triples = list(zip(inter["user"].astype(str), inter["item"].astype(str),
                       np.ones(len(inter)), strict=True))
    return cornac.data.Dataset.from_uir(triples, seed=42)


def _cornac_columns(iid_map: Mapping[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """(serendip item index, Cornac item index) for every item Cornac knows."""
    ours = np.fromiter((int(i) for i in iid_map.keys()), dtype=np.int64, count=len(iid_map))
    theirs = np.fromiter(iid_map.values(), dtype=np.int64, count=len(iid_map))
    return ours, theirs


def cornac_ease(split: Split, users: np.ndarray, lamb: float = 500.0) -> np.ndarray:
    """Cornac's EASE (posB=False: the plain closed form).

    Scores are Cornac's own ``score`` (user row of its training matrix times its learned
    item-item matrix ``B``), computed for all requested users in one product.
    """
    import cornac

    tr = split.train
    ds = _cached(tr, "cornac_uir", lambda: _cornac_uir(tr))
    model = cornac.models.EASE(lamb=lamb, posB=False, verbose=False)
    model.fit(ds)
    out = np.full((len(users), tr.n_items), -np.inf, dtype=np.float32)
    ours, theirs = _cornac_columns(ds.iid_map)
    rows = [(r, ds.uid_map.get(str(int(u)))) for r, u in enumerate(users)]
    known = np.array([r for r, x in rows if x is not None], dtype=np.int64)
    uidx = np.array([x for _, x in rows if x is not None], dtype=np.int64)
    if known.size:
        s = np.asarray(sp.csr_matrix(model.U)[uidx] @ model.B, dtype=np.float32)
        block = np.full((known.size, tr.n_items), -np.inf, dtype=np.float32)
        block[:, ours] = s[:, theirs]
        out[known] = block
    return out


def _cornac_sequences(train: Dataset) -> Any:
    """Cornac SequentialDataset: one session per user, events in timestamp order."""
    import cornac

    inter = _binary_interactions(train)
    rows = list(zip(inter["user"].astype(str), inter["user"].astype(str),
                    inter["item"].astype(str),
                    inter["timestamp"].rank(method="first").astype(np.int64), strict=True))
    return cornac.data.SequentialDataset.build(rows, fmt="USIT", seed=42)


def sasrec_max_len(train: Dataset) -> int:
    """Input length for SASRec: the 95th percentile of training history lengths, in [10, 50]."""
    act = train.user_activity
    act = act[act > 0]
    return int(np.clip(np.percentile(act, 95), 10, 50)) if act.size else 10


class _TorchThreads:
    """One torch thread while a SASRec trains (as ALS runs one BLAS thread): on a shared
    machine, two threads that wait on each other slow training down many times over."""

    def __init__(self, n: int = 1):
        self.n = n
        self.before = 0

    def __enter__(self) -> None:
        import torch

        self.before = torch.get_num_threads()
        torch.set_num_threads(self.n)

    def __exit__(self, *exc: object) -> None:
        import torch

        torch.set_num_threads(self.before)


def _sasrec_model(epochs: int, params: Mapping[str, Any], max_len: int, **extra: Any) -> Any:
    import cornac

    return cornac.models.SASRec(
        embedding_dim=params.get("embedding_dim", 64), n_epochs=epochs, max_len=max_len,
        num_blocks=params.get("num_blocks", 2), dropout=params.get("dropout", 0.2),
        learning_rate=params.get("learning_rate", 1e-3),
        batch_size=params.get("batch_size", 256), n_sample=params.get("n_sample", 1024),
        loss="ce", device="cpu", seed=42, verbose=False, **extra,
    )


def _sasrec_scores(model: Any, ds: Any, train: Dataset, users: np.ndarray,
                   max_len: int) -> np.ndarray:
    """Cornac's SASRec forward pass for a batch of users at a time (``SASRec.score`` does the
    same for one user): input = the user's last ``max_len`` training events."""
    import torch

    ours, theirs = _cornac_columns(ds.iid_map)
    iid = ds.iid_map
    out = np.full((len(users), train.n_items), -np.inf, dtype=np.float32)
    pad = model.pad_idx
    seqs = np.full((len(users), max_len), pad, dtype=np.int64)
    has = np.zeros(len(users), dtype=bool)
    for r, u in enumerate(users):
        hist = [iid[str(int(i))] for i in train.history(int(u))[-max_len:] if str(int(i)) in iid]
        if hist:
            seqs[r, max_len - len(hist):] = hist
            has[r] = True
    was_training = model.model.training
    model.model.eval()
    with torch.no_grad():
        for s in range(0, len(users), 512):
            sl = slice(s, s + 512)
            if not has[sl].any():
                continue
            pred = model.model.predict(None, torch.as_tensor(seqs[sl]))
            pred = np.asarray(pred, dtype=np.float32).reshape(len(seqs[sl]), -1)
            block = np.full((pred.shape[0], train.n_items), -np.inf, dtype=np.float32)
            block[:, ours] = pred[:, theirs]
            block[~has[sl]] = -np.inf
            out[sl] = block
    model.model.train(was_training)
    return out


def cornac_sasrec(split: Split, users: np.ndarray, embedding_dim: int = 64,
                  n_epochs: int = 10, max_len: int | None = None, **params: Any) -> np.ndarray:
    """Cornac's SASRec (Kang & McAuley 2018) trained on each user's training sequence.

    ``max_len`` None: ``sasrec_max_len`` of the training part.  Other keywords (num_blocks,
    dropout, learning_rate, batch_size, n_sample) go to Cornac's SASRec.
    """
    tr = split.train
    ds = _cached(tr, "cornac_seq", lambda: _cornac_sequences(tr))
    ml = max_len or sasrec_max_len(tr)
    model = _sasrec_model(n_epochs, {"embedding_dim": embedding_dim, **params}, ml)
    with _TorchThreads(1):
        model.fit(ds)
        return _sasrec_scores(model, ds, tr, users, ml)


class _NoValidationData:
    """Stands in for Cornac's validation set: the score comes from the search's own hook."""

    def reset(self) -> None:
        return None


class _StopTraining(Exception):
    """Raised from the per-epoch hook to end a SASRec training run early."""


def sasrec_epochs_search(split: Split, users: np.ndarray, k: int, params: Params, *,
                         max_epochs: int = 20, patience: int = 3,
                         budget_seconds: float | None = 240.0,
                         on_trial: Callable[[Params, float, float], None] | None = None,
                         ) -> list[tuple[Params, float, float]]:
    """SASRec's epochs, chosen in one training run with early stopping on validation NDCG.

    Cornac's SASRec scores a validation set after every epoch when ``model_selection`` is
    "best"; here that score is NDCG@``k`` on the validation split (Cornac's own validation
    score is swapped for it during the run).  Training stops after ``max_epochs``, after
    ``patience`` epochs without a new best, or once ``budget_seconds`` have passed.

    Returns one trial per epoch: (params with ``n_epochs`` = that epoch, NDCG, seconds since
    the start).
    """
    import cornac.models.sasrec.recom_sasrec as sasrec_module

    tr = split.train
    truth_all = truth_of(split)
    truth = {int(u): truth_all[int(u)] for u in users}
    ds = _cached(tr, "cornac_seq", lambda: _cornac_sequences(tr))
    ml = params.get("max_len") or sasrec_max_len(tr)
    t0 = time.perf_counter()
    trials: list[tuple[Params, float, float]] = []

    def hook(model: Any, *_: Any, **__: Any) -> float:
        scores = _sasrec_scores(model, ds, tr, users, ml)
        nd = compute_metrics(top_k(scores, users, split, k), users, truth, tr, k)["ndcg"]
        trials.append(({**params, "n_epochs": len(trials) + 1}, nd,
                       time.perf_counter() - t0))
        if on_trial is not None:
            on_trial(*trials[-1])
        best = int(np.argmax([t[1] for t in trials]))
        if len(trials) - 1 - best >= patience:
            raise _StopTraining
        if budget_seconds is not None and time.perf_counter() - t0 > budget_seconds:
            raise _StopTraining
        return nd

    model = _sasrec_model(max_epochs, params, ml, model_selection="best", val_eval_every=1)
    original = sasrec_module.val_score
    sasrec_module.val_score = hook
    try:
        with _TorchThreads(1):
            model.fit(ds, val_set=_NoValidationData())
    except _StopTraining:
        pass
    finally:
        sasrec_module.val_score = original
    return trials


# --------------------------------------------------------------------------- LensKit
def _lenskit_dataset(train: Dataset) -> Any:
    from lenskit.data import from_interactions_df

    inter = _binary_interactions(train)
    df = pd.DataFrame({
        "user_id": train.user_ids[inter["user"].to_numpy()].astype(str),
        "item_id": train.item_ids[inter["item"].to_numpy()].astype(str),
    })
    return from_interactions_df(df, items=train.item_ids.astype(str))


def _lenskit_scores(scorer: Any, split: Split, users: np.ndarray) -> np.ndarray:
    from lenskit.data import ItemList, RecQuery
    from lenskit.training import TrainingOptions

    tr = split.train
    scorer.train(_cached(tr, "lenskit", lambda: _lenskit_dataset(tr)), TrainingOptions(rng=42))
    all_items = tr.item_ids.astype(str)
    cand = ItemList(item_ids=all_items)
    out = np.full((len(users), tr.n_items), -np.inf, dtype=np.float32)
    for r, u in enumerate(users):
        hist = tr.item_ids[tr.history(int(u))].astype(str)
        q = RecQuery(user_id=str(tr.user_ids[u]), user_items=ItemList(item_ids=hist))
        s = scorer(query=q, items=cand).scores()
        if s is not None:
            out[r] = np.where(np.isfinite(s), s, -np.inf)
    return out


def lenskit_itemknn(split: Split, users: np.ndarray, max_nbrs: int = 20) -> np.ndarray:
    from lenskit.knn import ItemKNNScorer

    return _lenskit_scores(ItemKNNScorer(max_nbrs=max_nbrs, feedback="implicit"), split, users)


def lenskit_implicit_mf(split: Split, users: np.ndarray, embedding_size: int = 64,
                        epochs: int = 15) -> np.ndarray:
    from lenskit.als import ImplicitMFScorer

    return _lenskit_scores(ImplicitMFScorer(embedding_size=embedding_size, epochs=epochs),
                           split, users)


# --------------------------------------------------------------------------- transitions
def transition_matrix(train: Dataset, normalize: bool = True) -> sp.csr_matrix:
    """Item x item counts of "j came right after i" in each user's time-ordered events.

    ``normalize``: rows divided by their sums, i.e. the first-order Markov chain
    P(next = j | last = i); otherwise raw counts.
    """
    inter = train.interactions.sort_values(["user", "timestamp"], kind="stable")
    u = inter["user"].to_numpy(np.int64)
    it = inter["item"].to_numpy(np.int64)
    same = u[1:] == u[:-1]
    src, dst = it[:-1][same], it[1:][same]
    n = train.n_items
    t = sp.csr_matrix((np.ones(src.size), (src, dst)), shape=(n, n))
    t.sum_duplicates()
    if normalize and t.nnz:
        out_deg = np.asarray(t.sum(axis=1)).ravel()
        t = sp.csr_matrix(sp.diags(1.0 / np.maximum(out_deg, 1.0)) @ t)
    return t


def transition_scores(split: Split, users: np.ndarray, window: int = 3,
                      normalize: bool = True) -> np.ndarray:
    """First-order transition baseline: sum of the transition rows of the last ``window`` items.

    For each user, score(j) = sum over the user's last ``window`` training events i of
    T[i, j] (``transition_matrix``).  Training popularity, scaled far below any transition
    score, breaks ties and fills lists when the last items have no recorded successor.
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    tr = split.train
    t = transition_matrix(tr, normalize)
    rows, cols = [], []
    for r, u in enumerate(users):
        last = np.unique(tr.history(int(u))[-window:])
        rows.append(np.full(last.size, r))
        cols.append(last)
    r_idx = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    c_idx = np.concatenate(cols) if cols else np.zeros(0, np.int64)
    recent = sp.csr_matrix((np.ones(r_idx.size), (r_idx, c_idx)),
                           shape=(len(users), tr.n_items))
    scores = np.asarray((recent @ t).todense(), dtype=np.float64)
    pop = tr.item_popularity.astype(np.float64)
    smallest = float(t.data.min()) if t.nnz else 1.0
    scores += 1e-3 * smallest * pop / max(float(pop.max()), 1.0)
    return scores


# --------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class Peer:
    """A peer recommender: its score function, defaults and hyperparameter grid.

    ``axes`` maps each tuned hyperparameter to the values tried; the grid is their product.
    """

    name: str
    fit_score: ScoreFn
    axes: Mapping[str, Sequence[Any]]
    defaults: Params = field(default_factory=dict)
    needs_order: bool = False
    #: validation users at most for tuning (peers that score one user at a time)
    max_tune_users: int | None = None
    about: str = ""
    #: a search run once per grid entry in place of one fit per entry (SASRec: one training
    #: run scored at several epochs); called as
    #: search(split, users, k, params, on_trial=callback, **options)
    search: Callable[..., list[tuple[Params, float, float]]] | None = None
    options: Params = field(default_factory=dict)

    @property
    def grid(self) -> tuple[Params, ...]:
        combos: list[Params] = [{}]
        for key, values in self.axes.items():
            combos = [{**c, key: v} for c in combos for v in values]
        return tuple(combos)


PEERS: dict[str, Peer] = {
    p.name: p
    for p in (
        Peer("implicit-ALS", implicit_als,
             {"factors": (32, 64, 128), "regularization": (0.01, 0.1, 1.0),
              "alpha": (1.0, 5.0, 20.0)},
             {"factors": 64, "regularization": 0.05, "alpha": 2.0},
             about="implicit's ALS (Hu, Koren & Volinsky 2008)"),
        Peer("cornac-EASE", cornac_ease,
             {"lamb": (10.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0)}, {"lamb": 500.0},
             about="Cornac's EASE (Steck 2019)"),
        Peer("lenskit-ItemKNN", lenskit_itemknn, {"max_nbrs": (10, 20, 50, 100)},
             {"max_nbrs": 20}, max_tune_users=2000, about="LensKit's item k-NN"),
        Peer("lenskit-ImplicitMF", lenskit_implicit_mf, {"embedding_size": (32, 64, 128)},
             {"embedding_size": 64}, max_tune_users=2000, about="LensKit's implicit MF"),
        Peer("transition", transition_scores,
             {"window": (1, 3, 5, 10), "normalize": (True, False)},
             {"window": 3, "normalize": True}, needs_order=True,
             about="first-order item-to-item transitions over the last W events"),
        Peer("cornac-SASRec", cornac_sasrec, {"embedding_dim": (64,)},
             {"embedding_dim": 64, "n_epochs": 10}, needs_order=True, max_tune_users=2000,
             about="Cornac's SASRec (Kang & McAuley 2018)", search=sasrec_epochs_search,
             options={"max_epochs": 20, "patience": 3, "budget_seconds": 240.0}),
    )
}


def _beyond(values: Sequence[Any], best: Any) -> Any | None:
    """The next value past the end of a numeric axis that ``best`` sits on, else None.

    One geometric step further (the ratio of the two end values); integers stay integers
    and at least 1.
    """
    if isinstance(best, bool) or not isinstance(best, int | float):
        return None
    vals = sorted({v for v in values if isinstance(v, int | float) and not isinstance(v, bool)})
    if len(vals) < 2 or vals[0] <= 0 or best not in (vals[0], vals[-1]):
        return None
    nxt = vals[-1] * vals[-1] / vals[-2] if best == vals[-1] else vals[0] * vals[0] / vals[1]
    if isinstance(best, int):
        nxt = int(round(nxt))
        if nxt < 1 or nxt in vals:
            return None
    return nxt


# --------------------------------------------------------------------------- tuning
@dataclass
class PeerSearch:
    """The outcome of a grid search: best parameters and every trial's validation figure."""

    name: str
    params: Params
    ndcg: float
    trials: list[tuple[Params, float, float]]  # (params, validation NDCG, seconds)
    seconds: float


def _peer(name: str | Peer) -> Peer:
    if isinstance(name, Peer):
        return name
    if name not in PEERS:
        raise KeyError(f"unknown peer {name!r}; valid: {', '.join(PEERS)}")
    return PEERS[name]


def search_peer(name: str | Peer, val_split: Split, users: np.ndarray | None = None, *,
                k: int = 10, grid: Sequence[Params] | None = None,
                budget_seconds: float | None = None, extend: int = 2,
                on_trial: Callable[[Params, float, float], None] | None = None) -> PeerSearch:
    """Grid search for one peer on a validation split (NDCG@``k`` by ``compute_metrics``).

    ``users`` are the validation users to rank for (default: every one with held-out items,
    capped at the peer's ``max_tune_users``).  Ties go to the earlier grid entry.  When the
    best setting sits at the end of a numeric axis of the peer's own grid, that axis is
    extended one step further, up to ``extend`` times, so a grid edge is not mistaken for an
    optimum.  With ``budget_seconds`` the search stops after the trial that passes it (at
    least one trial always runs).
    """
    peer = _peer(name)
    if users is None:
        users = eval_users(val_split, peer.max_tune_users)
    users = np.asarray(users, dtype=np.int64)
    truth_all = truth_of(val_split)
    missing = [int(u) for u in users if int(u) not in truth_all]
    if missing:
        raise ValueError(f"users without held-out items in the validation split: {missing[:5]}")
    truth = {int(u): truth_all[int(u)] for u in users}
    t_start = time.perf_counter()
    trials: list[tuple[Params, float, float]] = []
    best: tuple[float, Params] = (-1.0, dict(peer.defaults))
    axes = {key: list(values) for key, values in peer.axes.items()}
    queue = list(grid if grid is not None else peer.grid)
    extended = 0
    while queue:
        params = queue.pop(0)
        t0 = time.perf_counter()
        p = {**peer.defaults, **params}
        if peer.search is not None:
            found = peer.search(val_split, users, k, p, on_trial=on_trial, **peer.options)
            for tp, nd, _ in found:
                if nd > best[0]:
                    best = (nd, tp)
            trials += found
        else:
            scores = peer.fit_score(val_split, users, **p)
            recs = top_k(scores, users, val_split, k)
            nd = compute_metrics(recs, users, truth, val_split.train, k)["ndcg"]
            secs = time.perf_counter() - t0
            trials.append((p, nd, secs))
            if on_trial is not None:
                on_trial(p, nd, secs)
            if nd > best[0]:
                best = (nd, p)
        if budget_seconds is not None and time.perf_counter() - t_start > budget_seconds:
            break
        if not queue and grid is None and peer.search is None and extended < extend:
            extended += 1
            for key, values in axes.items():
                nxt = _beyond(values, best[1].get(key))
                if nxt is not None:
                    values.append(nxt)
                    queue.append({**best[1], key: nxt})
    return PeerSearch(peer.name, best[1], best[0], trials, time.perf_counter() - t_start)


def tune_peer(name: str | Peer, val_split: Split, users: np.ndarray | None = None, *,
              k: int = 10, grid: Sequence[Params] | None = None) -> Params:
    """The peer's parameters with the best validation NDCG@``k`` (see ``search_peer``)."""
    return search_peer(name, val_split, users, k=k, grid=grid).params
