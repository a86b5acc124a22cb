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

__all__ = ["TwoTower", "TwoTowerConfig"]

log = logging.getLogger(__name__)


class TwoTowerConfig(NeuralConfig):
    dim: int = Field(64, ge=2, le=1024, description="output dimension of both towers")
    hidden: int = Field(256, ge=4, le=8192, description="hidden units of each tower's MLP")
    id_dim: int = Field(32, ge=0, le=1024, description="learned item id embedding (0: text only)")
    epochs: int = Field(20, ge=1, le=1000)
    batch_size: int = Field(512, ge=2, le=65536)
    max_history: int = Field(50, ge=1, le=10_000, description="history items a context keeps")
    half_life: float | None = Field(20.0, gt=0, le=1e6, description="recency weighting of history")


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
                loss = torch.nn.functional.cross_entropy(
                    logits, torch.arange(len(tgt), device=device))
                opt.zero_grad()
                loss.backward()
                opt.step()
                steps += 1
        towers.eval()
        with torch.no_grad():
            factors = towers.item(torch.arange(n_items, device=device), text).cpu().numpy()
        self._set_state(item_factors=factors.astype(np.float32),
                        text=normalized_vectors(data, self.name), **weights_to_state(towers))
        log.info("TwoTower: %d steps on %s in %.1fs", steps, device, time.perf_counter() - t0)

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
