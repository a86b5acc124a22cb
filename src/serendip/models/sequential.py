"""Sequential model: a small causal Transformer over the history's language-model vectors.

Like SASRec (Kang & McAuley 2018), the user is the Transformer's state after reading their
items in order, and the score of an item is the dot product of that state with the item's
vector; unlike SASRec's id-only embeddings, an item enters as its text vector (projected) plus
a learned id embedding, so items with few or no interactions still have a meaningful input and
output vector.  Trained on next-item prediction at every position with a sampled softmax over
the batch's targets and the logQ popularity correction (as the two-tower model).

Item vectors are stored as factors (so it is a linear scorer, and candidate retrieval works);
the user state needs the network, run with PyTorch on the CPU at recommend time (about a
millisecond per short history) and on a GPU, when present, for training.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

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
from serendip.models.base import BatchScorer
from serendip.models.semantic import normalized_vectors
from serendip.types import Query

__all__ = ["Sequential", "SequentialConfig"]

log = logging.getLogger(__name__)


class SequentialConfig(NeuralConfig):
    dim: int = Field(64, ge=4, le=1024, description="model width (a multiple of heads)")
    heads: int = Field(2, ge=1, le=16)
    layers: int = Field(1, ge=1, le=8)
    max_len: int = Field(50, ge=2, le=1000, description="most recent items read")
    dropout: float = Field(0.1, ge=0, lt=1)
    epochs: int = Field(30, ge=1, le=1000)
    batch_size: int = Field(128, ge=2, le=65536, description="sequences per step")

    def model_post_init(self, __context: Any) -> None:
        if self.dim % self.heads:
            raise ValueError(f"dim must be a multiple of heads, got dim={self.dim}, heads={self.heads}")


class Sequential(BatchScorer):
    """score(u, j) = transformer(history of u) . item(j); see the module docstring."""

    name = "sequential"
    config_class = SequentialConfig
    config: SequentialConfig

    def train(self, data: Dataset) -> None:
        import torch

        c = self.config
        t0 = time.perf_counter()
        torch.manual_seed(c.seed)
        rng = np.random.default_rng(c.seed)
        device = pick_device(c.device)
        text_np = normalized_vectors(data, self.name)
        text = torch.tensor(text_np, device=device)
        net = _network(text_np.shape[1], data.n_items, c).to(device)
        opt = torch.optim.AdamW(net.parameters(), lr=c.lr, weight_decay=c.weight_decay)
        seqs = [h for h in (data.history(u) for u in range(data.n_users)) if h.size >= 2]
        log_q = log_popularity(data, device)
        steps = 0
        net.train()
        for _ in range(c.epochs):
            order = rng.permutation(len(seqs))
            for a in range(0, len(seqs), c.batch_size):
                idx = order[a : a + c.batch_size]
                inp, tgt = _windows([seqs[i] for i in idx], c.max_len, rng)
                inp_t = torch.tensor(inp, device=device)
                tgt_t = torch.tensor(tgt, device=device)
                hidden = net.encode(inp_t, text)  # B x L x dim, unit rows
                mask = tgt_t >= 0
                h = hidden[mask]
                targets = tgt_t[mask]
                cand, pos = torch.unique(targets, return_inverse=True)
                v = net.item(cand, text)
                logits = (h @ v.T) / c.temperature - log_q[cand][None, :]
                loss = torch.nn.functional.cross_entropy(logits, pos)
                opt.zero_grad()
                loss.backward()
                opt.step()
                steps += 1
        net.eval()
        with torch.no_grad():
            factors = net.item(torch.arange(data.n_items, device=device), text).cpu().numpy()
        self._set_state(item_factors=factors.astype(np.float32), text=text_np,
                        **weights_to_state(net))
        log.info("Sequential: %d steps on %s in %.1fs", steps, device, time.perf_counter() - t0)

    def _after_load(self) -> None:
        import torch

        st = self._state
        assert st is not None
        text = st["text"]
        self._net = _network(text.shape[1], text.shape[0], self.config)
        self._net.load_state_dict({k: torch.tensor(v) for k, v in state_to_weights(st).items()})
        self._net.eval()
        self._text = torch.tensor(text)

    def _user_vectors(self, queries: Sequence[Query]) -> np.ndarray:
        import torch

        self._require_trained()
        c = self.config
        out = np.zeros((len(queries), c.dim), dtype=np.float32)
        rows = [(n, q.history[-c.max_len:]) for n, q in enumerate(queries) if q.history.size]
        if not rows:
            return out  # no history: every item scores 0
        width = max(h.size for _, h in rows)
        inp = np.full((len(rows), width), -1, dtype=np.int64)
        for r, (_, h) in enumerate(rows):
            inp[r, width - h.size :] = h  # left padding: the last position is the newest item
        with torch.no_grad():
            hidden = self._net.encode(torch.tensor(inp), self._text)[:, -1, :].numpy()
        out[[n for n, _ in rows]] = hidden
        return out

    def factor_space(self) -> tuple[str | None, np.ndarray]:
        return None, self._require_trained()["item_factors"]

    def query_factors(self, queries: Sequence[Query]) -> tuple[np.ndarray, np.ndarray]:
        return self._user_vectors(queries).astype(np.float64), np.zeros(len(queries))

    def score_many(self, queries: Sequence[Query]) -> np.ndarray:
        f = self._require_trained()["item_factors"]
        return np.asarray(self._user_vectors(queries) @ f.T, dtype=np.float64)


def _windows(seqs: list[np.ndarray], max_len: int, rng: np.random.Generator
             ) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded (-1) input windows and next-item targets: a random stretch of at most
    ``max_len + 1`` items of each sequence, inputs all but the last, targets all but the first."""
    width = min(max_len, max(s.size for s in seqs) - 1)
    inp = np.full((len(seqs), width), -1, dtype=np.int64)
    tgt = np.full((len(seqs), width), -1, dtype=np.int64)
    for r, s in enumerate(seqs):
        n = min(s.size, width + 1)
        start = int(rng.integers(0, s.size - n + 1))
        w = s[start : start + n]
        inp[r, width - (n - 1) :] = w[:-1]
        tgt[r, width - (n - 1) :] = w[1:]
    return inp, tgt


def _network(d_text: int, n_items: int, c: SequentialConfig):  # type: ignore[no-untyped-def]
    """The item encoder and the causal Transformer as one torch module (torch imported here)."""
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.text_proj = nn.Linear(d_text, c.dim)
            self.ids = nn.Embedding(n_items, c.dim)
            nn.init.normal_(self.ids.weight, std=0.01)
            self.pos = nn.Embedding(c.max_len, c.dim)
            layer = nn.TransformerEncoderLayer(c.dim, c.heads, 2 * c.dim, c.dropout,
                                               batch_first=True, norm_first=True)
            self.encoder = nn.TransformerEncoder(layer, c.layers, enable_nested_tensor=False)
            self.norm = nn.LayerNorm(c.dim)

        def _embed(self, items: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
            return self.text_proj(text[items]) + self.ids(items)

        def item(self, items: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
            return nn.functional.normalize(self._embed(items, text), dim=-1)

        def encode(self, inp: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
            pad = inp < 0
            length = inp.shape[1]
            x = self._embed(inp.clamp(min=0), text)
            x = x + self.pos(torch.arange(length, device=inp.device))[None, :, :]
            x = x.masked_fill(pad.unsqueeze(-1), 0.0)
            # position i reads the real items at positions <= i, and always itself (so a
            # padding position, which is never used, has something to attend to)
            ar = torch.arange(length, device=inp.device)
            causal = ar[None, :] <= ar[:, None]
            allowed = causal[None, :, :] & (~pad[:, None, :] | torch.eye(
                length, dtype=torch.bool, device=inp.device)[None, :, :])
            blocked = (~allowed).repeat_interleave(c.heads, dim=0)
            h = self.encoder(x, mask=blocked)
            return nn.functional.normalize(self.norm(h), dim=-1)

    return Net()
