"""Peer recommenders run on the same splits as serendip: implicit, Cornac and LensKit.

Each function trains a peer on ``split.train`` and returns a (n_users x n_items) score
matrix for the given user indices, in serendip's item index space, so that every model is
ranked and measured by the same code.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import pandas as pd

from serendip.data.splits import Split

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def implicit_als(split: Split, users: np.ndarray, factors: int = 64, regularization: float = 0.05,
                 alpha: float = 2.0, iterations: int = 15) -> np.ndarray:
    """``implicit``'s AlternatingLeastSquares with the same hyperparameters serendip uses."""
    import implicit
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, "blas"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="OpenBLAS")
        model = implicit.als.AlternatingLeastSquares(
            factors=factors, regularization=regularization, alpha=alpha,
            iterations=iterations, random_state=42,
        )
        model.fit(split.train.matrix.tocsr(), show_progress=False)
    return np.asarray(model.user_factors[users] @ model.item_factors.T, dtype=np.float64)


def cornac_ease(split: Split, users: np.ndarray, lamb: float = 500.0) -> np.ndarray:
    """Cornac's EASE (posB=False: the plain closed form of Steck 2019)."""
    import cornac

    tr = split.train
    inter = tr.interactions
    triples = list(zip(inter["user"].astype(str), inter["item"].astype(str),
                       np.ones(len(inter)), strict=True))
    ds = cornac.data.Dataset.from_uir(triples, seed=42)
    model = cornac.models.EASE(lamb=lamb, posB=False, verbose=False)
    model.fit(ds)
    out = np.full((len(users), tr.n_items), -np.inf)
    cols = np.array([int(i) for i in ds.iid_map.keys()])
    pos = np.array(list(ds.iid_map.values()))
    for r, u in enumerate(users):
        uidx = ds.uid_map.get(str(int(u)))
        if uidx is None:
            continue
        s = np.asarray(model.score(uidx)).ravel()
        out[r, cols] = s[pos]
    return out


def _lenskit_scores(scorer, split: Split, users: np.ndarray) -> np.ndarray:  # type: ignore[no-untyped-def]
    from lenskit.data import ItemList, RecQuery, from_interactions_df

    tr = split.train
    inter = tr.interactions
    df = pd.DataFrame({
        "user_id": tr.user_ids[inter["user"].to_numpy()].astype(str),
        "item_id": tr.item_ids[inter["item"].to_numpy()].astype(str),
    })
    all_items = tr.item_ids.astype(str)
    ds = from_interactions_df(df, items=all_items)
    scorer.train(ds)
    cand = ItemList(item_ids=all_items)
    out = np.full((len(users), tr.n_items), -np.inf)
    for r, u in enumerate(users):
        hist = tr.item_ids[tr.history(int(u))].astype(str)
        q = RecQuery(user_id=str(tr.user_ids[u]), user_items=ItemList(item_ids=hist))
        s = scorer(query=q, items=cand).scores()
        out[r] = np.where(np.isfinite(s), s, -np.inf) if s is not None else -np.inf
    return out


def lenskit_itemknn(split: Split, users: np.ndarray, k: int = 20) -> np.ndarray:
    from lenskit.knn import ItemKNNScorer

    return _lenskit_scores(ItemKNNScorer(max_nbrs=k, feedback="implicit"), split, users)


def lenskit_implicit_mf(split: Split, users: np.ndarray) -> np.ndarray:
    from lenskit.als import ImplicitMFScorer

    return _lenskit_scores(ImplicitMFScorer(embedding_size=64, epochs=15), split, users)


PEERS = {
    "implicit-ALS": implicit_als,
    "cornac-EASE(500)": cornac_ease,
    "lenskit-ItemKNN": lenskit_itemknn,
    "lenskit-ImplicitMF": lenskit_implicit_mf,
}
