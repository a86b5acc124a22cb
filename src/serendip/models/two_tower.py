"""Two-tower model over the language-model vectors (a neural dual encoder, cf. Yi et al. 2019).

The item tower maps an item's text vector (plus a learned id embedding, zero for items never
seen in training) through a small MLP to a unit vector; the user tower maps the recency-weighted
mean of the history's text vectors (and of their id embeddings) the same way.  The score is the
dot product, trained with a sampled softmax over the other items of the batch, corrected for
how often each item appears as a negative (the logQ correction of Yi et al. 2019, so popular
items are not pushed down just for being frequent in-batch negatives).

Training needs PyTorch and uses a GPU when one is present; scoring does not: the item tower's
outputs are stored as factors (so the model is linear in them, which candidate retrieval uses),
and the user tower is a few matrix products in NumPy.  Because the user tower reads only the
history, anonymous sessions and new users take the same path; because the item tower reads
text, items nobody has used still get a meaningful vector.

Training for surprise (``surprise > 0``).  Each positive's softmax term is weighted by
``exp(surprise * u)``, where ``u`` in [0, 1] is how unexpected that interaction was for its
user.  Why this weight: the minimiser of a weighted softmax loss is the weighted distribution
``q(j | user) ~ w(user, j) p(j | user)``, and with ``w = exp(surprise * u)`` that is the
exponential tilt of ``p``: of all distributions with a given expected unexpectedness, the one
closest to the user's real choices (least Kullback-Leibler divergence), so the towers learn
"what this user would choose, shifted towards the unexpected" -- Ge et al. (2010)'s "relevant
and unexpected" -- in the representation itself, instead of a re-ranker bolting it onto a
finished list.  In score terms the model learns ``log p + surprise * u``: a serendipity bonus
it must predict from the towers' features, so it generalises to items and users whose
unexpectedness it never saw.  The linear weight ``1 + surprise * u`` tilts by at most the
ratio of two ``u`` values however large ``surprise`` gets (small where most interactions'
``u`` lie in a narrow band, as on MovieLens-100K); the exponential has no such ceiling and
equals it to first order for small ``surprise``.  ``surprise = 0`` is plain maximum likelihood and runs exactly
the code path of the unweighted model.  The batch loss divides by the batch's total weight,
so the step size does not grow with ``surprise``.

``u`` is fixed per interaction and computed once before training (no per-step cost):

* content: ``1 - max cosine`` between the item's text vector and the ``max_history`` items the
  user chose just *before* it (on data without a trustworthy order: the neighbouring items of
  the history list, a fixed subset).  The maximum, not the mean: an item close to any one
  thing the user chose was predictable from that thing (the mean calls everything a broad
  user chose "unexpected").  Earlier items only, because surprise is a property of the moment
  of choice: what the user had seen so far.  A user's first item has no profile to be
  unexpected against and gets ``u = 0``.
  Clipped to [0, 1]: the scale of the serendipity re-ranker and of the ``unexpectedness``
  metric, so the two knobs speak of the same quantity.
* popularity (``surprise_popularity`` > 0): the item's self-information divided by its
  largest value, ``log(n_users / users of the item) / log(n_users)`` in [0, 1], since an item
  everybody knows is no surprise however far its text lies from the profile (the "primitive
  recommender" of Ge et al. 2010 is a popularity list).  The mixture is ``(1 -
  surprise_popularity) * content + surprise_popularity * popularity``.
* Raw distances, not their ranks: ranking would stretch the tiny differences among expected
  items (near-duplicates of the profile) over the whole weight range.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import numpy as np
from pydantic import Field

from serendip.data.dataset import Dataset
from serendip.models._torch import (
    NeuralConfig,
    log_popularity,
    pick_device,
    state_to_weights,
    weights_to_state,
)
from serendip.models._util import history_weights
from serendip.models.base import BatchScorer
from serendip.models.semantic import normalized_vectors
from serendip.types import Query

__all__ = ["TwoTower", "TwoTowerConfig", "unexpectedness"]

log = logging.getLogger(__name__)


class TwoTowerConfig(NeuralConfig):
    dim: int = Field(64, ge=2, le=1024, description="output dimension of both towers")
    hidden: int = Field(256, ge=4, le=8192, description="hidden units of each tower's MLP")
    id_dim: int = Field(32, ge=0, le=1024, description="learned item id embedding (0: text only)")
    epochs: int = Field(20, ge=1, le=1000)
    batch_size: int = Field(512, ge=2, le=65536)
    max_history: int = Field(50, ge=1, le=10_000, description="history items a context keeps")
    half_life: float | None = Field(20.0, gt=0, le=1e6, description="recency weighting of history")
    surprise: float = Field(
        0.0, ge=0, le=50,
        description="weight each positive by exp(surprise * unexpectedness) (0: plain training)")
    surprise_popularity: float = Field(
        0.0, ge=0, le=1,
        description="share of the unexpectedness taken from the item's unpopularity rather "
                    "than its text distance to the user's earlier items")


class TwoTower(BatchScorer):
    """score(u, j) = user_tower(history of u) . item_tower(j); see the module docstring."""

    name = "two_tower"
    config_class = TwoTowerConfig
    config: TwoTowerConfig

    def train(self, data: Dataset) -> None:
        import torch

        c = self.config
        t0 = time.perf_counter()
        torch.manual_seed(c.seed)
        rng = np.random.default_rng(c.seed)
        device = pick_device(c.device)
        text = torch.tensor(normalized_vectors(data, self.name), device=device)
        n_items, d_text = text.shape
        towers = _Towers(d_text, n_items, c).to(device)
        opt = torch.optim.AdamW(towers.parameters(), lr=c.lr, weight_decay=c.weight_decay)
        # training examples: every interaction is a target, the user's other items its context
        histories = [data.history(u) for u in range(data.n_users)]
        users = np.repeat(np.arange(data.n_users), [len(h) for h in histories])
        targets_all = (np.concatenate(histories) if len(users) else np.zeros(0, np.int64))
        full = _padded(histories)
        log_q = log_popularity(data, device)
        # per-interaction weights of the surprise term (None: the plain, unweighted loss);
        # scaled so the largest is 1 (the loss divides by the batch's total weight anyway)
        weights = None
        if c.surprise > 0:
            u = unexpectedness(data, histories, c.max_history, c.surprise_popularity)
            weights = torch.tensor(np.exp(c.surprise * (u - u.max(initial=0.0))),
                                   dtype=torch.float32, device=device)
        steps = 0
        for _ in range(c.epochs):
            order = rng.permutation(len(users))
            for a in range(0, len(order), c.batch_size):
                batch = order[a : a + c.batch_size]
                if batch.size < 2:
                    continue
                ctx_items, ctx_w, targets = _contexts(full, users[batch], targets_all[batch],
                                                      c.max_history, c.half_life, rng)
                u = towers.user(torch.tensor(ctx_items, device=device),
                                torch.tensor(ctx_w, device=device), text)
                tgt = torch.tensor(targets, device=device)
                v = towers.item(tgt, text)
                logits = (u @ v.T) / c.temperature - log_q[tgt][None, :]
                # the same item twice in a batch is not a negative of itself
                same = tgt[None, :] == tgt[:, None]
                logits = logits.masked_fill(same & ~torch.eye(len(tgt), dtype=torch.bool,
                                                             device=device), float("-inf"))
                labels = torch.arange(len(tgt), device=device)
                if weights is None:
                    loss = torch.nn.functional.cross_entropy(logits, labels)
                else:
                    w = weights[torch.as_tensor(batch, device=device)]
                    per = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
                    loss = (w * per).sum() / w.sum()
                opt.zero_grad()
                loss.backward()
                opt.step()
                steps += 1
        towers.eval()
        with torch.no_grad():
            factors = towers.item(torch.arange(n_items, device=device), text).cpu().numpy()
        self._set_state(item_factors=factors.astype(np.float32),
                        text=normalized_vectors(data, self.name), **weights_to_state(towers))
        log.info("TwoTower: %d steps on %s in %.1fs (surprise %g)", steps, device,
                 time.perf_counter() - t0, c.surprise)

    # scoring (NumPy only) -------------------------------------------------------------------
    def _after_load(self) -> None:
        st = self._state
        assert st is not None
        self._w = state_to_weights(st)

    def _user_vectors(self, queries: Sequence[Query]) -> np.ndarray:
        st = self._require_trained()
        text = st["text"]
        w = self._w
        c = self.config
        out = np.zeros((len(queries), c.dim), dtype=np.float32)
        d_in = text.shape[1] + c.id_dim
        for n, q in enumerate(queries):
            h = q.history[-c.max_history:]
            if h.size == 0:  # as in training: an empty context, the tower's cold-start vector
                x = np.zeros(d_in, dtype=np.float32)
            else:
                hw = history_weights(len(h), c.half_life)
                hw = hw / hw.sum()
                x = hw @ text[h]
                if c.id_dim:
                    x = np.concatenate([x, hw @ w["item_ids.weight"][h]])
            z = _mlp_np(x, w, "user_mlp")
            out[n] = z / max(float(np.linalg.norm(z)), 1e-12)
        return out

    def factor_space(self) -> tuple[str | None, np.ndarray]:
        return None, self._require_trained()["item_factors"]

    def query_factors(self, queries: Sequence[Query]) -> tuple[np.ndarray, np.ndarray]:
        return self._user_vectors(queries).astype(np.float64), np.zeros(len(queries))

    def score_many(self, queries: Sequence[Query]) -> np.ndarray:
        f = self._require_trained()["item_factors"]
        return np.asarray(self._user_vectors(queries) @ f.T, dtype=np.float64)


def unexpectedness(data: Dataset, histories: Sequence[np.ndarray], max_history: int,
                   popularity_share: float = 0.0) -> np.ndarray:
    """How unexpected each interaction was for its user, in [0, 1], in the order of the
    concatenated ``histories`` (see the module docstring): ``1 - max cosine`` to the user's
    ``max_history`` earlier items (neighbouring ones on unordered data), clipped to [0, 1],
    mixed by ``popularity_share`` with the item's self-information over ``log(n_users)``."""
    n = int(sum(len(h) for h in histories))
    if n == 0:
        return np.zeros(0)
    text = normalized_vectors(data, "two_tower")
    # the window each interaction is compared with: earlier items, or neighbours in the list
    before, after = ((max_history, 0) if data.time_quality.ordered
                     else (max_history - max_history // 2, max_history // 2))
    far = np.full(n, np.nan)  # 1 - max cosine; NaN: no context to be unexpected against
    offset = 0
    block = 256  # rows at a time: memory stays O(block * (block + max_history))
    for h in histories:
        m = h.size
        v = text[h]
        for a in range(0, m if m > 1 else 0, block):
            b = min(a + block, m)
            lo, hi = max(0, a - before), min(m, b + after)
            pos = np.arange(a, b)[:, None]
            col = np.arange(lo, hi)[None, :]
            keep = (col != pos) & (col >= pos - before) & (col <= pos + after)
            best = np.where(keep, v[a:b] @ v[lo:hi].T, -np.inf).max(axis=1)
            far[offset + a: offset + b] = np.where(keep.any(axis=1), 1.0 - best, np.nan)
        offset += m
    u = np.clip(np.nan_to_num(far, nan=0.0), 0.0, 1.0)
    if popularity_share > 0:
        pop = np.clip(np.asarray(data.item_popularity, dtype=np.float64), 1.0, None)
        n_users = max(data.n_users, 2)
        info = np.clip(np.log(n_users / pop) / np.log(n_users), 0.0, 1.0)
        u = (1.0 - popularity_share) * u + popularity_share * info[np.concatenate(histories)]
    return u


def _padded(histories: list[np.ndarray]) -> np.ndarray:
    """Every user's history, oldest first, padded with -1 to the longest."""
    width = max((h.size for h in histories), default=0) or 1
    out = np.full((len(histories), width), -1, dtype=np.int64)
    for u, h in enumerate(histories):
        out[u, : h.size] = h
    return out


def _contexts(full: np.ndarray, users: np.ndarray, targets: np.ndarray, max_history: int,
              half_life: float | None, rng: np.random.Generator
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Context items (-1 = padding) with normalised recency weights for (user, target) pairs:
    a random window of ``max_history`` of the user's items, without the target itself, so the
    towers learn co-occurrence from every part of long histories."""
    lengths = (full[users] >= 0).sum(axis=1)
    start = (rng.random(users.size) * np.maximum(lengths - max_history + 1, 1)).astype(np.int64)
    cols = np.minimum(start[:, None] + np.arange(max_history)[None, :], full.shape[1] - 1)
    ctx = np.where(start[:, None] + np.arange(max_history)[None, :] < full.shape[1],
                   full[users[:, None], cols], -1)
    valid = (ctx >= 0) & (ctx != targets[:, None])
    # recency within the window: the last valid entry weighs 1
    rank = np.cumsum(valid[:, ::-1], axis=1)[:, ::-1] - 1
    w = (0.5 ** (rank / half_life) if half_life is not None else np.ones_like(rank, float)) * valid
    total = w.sum(axis=1, keepdims=True)
    w = np.divide(w, total, out=np.zeros_like(w, dtype=np.float64), where=total > 0)
    return ctx, w.astype(np.float32), targets


def _mlp_np(x: np.ndarray, w: dict[str, np.ndarray], prefix: str) -> np.ndarray:
    h = np.maximum(x @ w[f"{prefix}.0.weight"].T + w[f"{prefix}.0.bias"], 0.0)
    return h @ w[f"{prefix}.2.weight"].T + w[f"{prefix}.2.bias"]


def _Towers(d_text: int, n_items: int, c: TwoTowerConfig):  # type: ignore[no-untyped-def]  # noqa: N802
    """The two MLPs and the id embedding, as one torch module (built lazily: torch is only
    imported for training)."""
    import torch
    from torch import nn

    class Towers(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            d_in = d_text + c.id_dim
            if c.id_dim:
                self.item_ids = nn.Embedding(n_items, c.id_dim)
                nn.init.normal_(self.item_ids.weight, std=0.01)
            self.item_mlp = nn.Sequential(nn.Linear(d_in, c.hidden), nn.ReLU(),
                                          nn.Linear(c.hidden, c.dim))
            self.user_mlp = nn.Sequential(nn.Linear(d_in, c.hidden), nn.ReLU(),
                                          nn.Linear(c.hidden, c.dim))

        def _features(self, items: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
            x = text[items]
            return torch.cat([x, self.item_ids(items)], dim=-1) if c.id_dim else x

        def item(self, items: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
            return nn.functional.normalize(self.item_mlp(self._features(items, text)), dim=-1)

        def user(self, ctx: torch.Tensor, weights: torch.Tensor,
                 text: torch.Tensor) -> torch.Tensor:
            safe = ctx.clamp(min=0)  # padding has weight 0
            x = nn.functional.embedding_bag(safe, text, per_sample_weights=weights, mode="sum")
            if c.id_dim:
                ids = nn.functional.embedding_bag(safe, self.item_ids.weight,
                                                  per_sample_weights=weights, mode="sum")
                x = torch.cat([x, ids], dim=-1)
            return nn.functional.normalize(self.user_mlp(x), dim=-1)

    return Towers()
