"""Sequential model: a small causal Transformer over the history's language-model vectors.

Like SASRec (Kang & McAuley 2018), the user is the Transformer's state after reading their
items in order, and the score of an item is the dot product of that state with the item's
vector; unlike SASRec's id-only embeddings, an item enters as its text vector (projected) plus
a learned id embedding, so items with few or no interactions still have a meaningful input and
output vector.  Trained on next-item prediction at every position with a sampled softmax over
the batch's targets and the logQ popularity correction (as the two-tower model).

Two options exist to measure and use what the text contributes (docs/sequential.md):

- ``item_input="random"`` keeps the architecture and training exactly as they are but feeds
  fixed random unit vectors in place of the text vectors: the reference that shows how much
  of the model's accuracy, on the long tail especially, comes from the language model;
- ``dual_view=True`` gives each item two normalised views, the semantic one (its projected
  text) and the collaborative one (its id embedding), fused with a weight that depends on how
  often the item was seen in training: ``g = pivot / (pivot + count)`` on the semantic view,
  so an item seen a few times leans on its text and a well-known item on what people did.

Item vectors are stored as factors (so it is a linear scorer, and candidate retrieval works);
the user state needs the network, run with PyTorch on the CPU at recommend time (about a
millisecond per short history) and on a GPU, when present, for training.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any, Literal

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
    """Sizes and training of the sequential model.

    ``item_input="random"`` is the random-initialisation reference: the same network (the
    same projection layer, parameter count, optimiser, epochs and seed) reads fixed random
    vectors drawn from the seed instead of the text vectors, with the same shape and the same
    unit norm (a row that is zero in the text stays zero).  Only the information in the item
    inputs differs, so a gap between the two is what the language model brings; dropping the
    projection (id embedding only) would also change the capacity and the initial scale.
    The random vectors are kept in the state, so a saved model loads the same.
    """

    dim: int = Field(64, ge=4, le=1024, description="model width (a multiple of heads)")
    heads: int = Field(2, ge=1, le=16)
    layers: int = Field(1, ge=1, le=8)
    max_len: int = Field(50, ge=2, le=1000, description="most recent items read")
    dropout: float = Field(0.1, ge=0, lt=1)
    epochs: int = Field(30, ge=1, le=1000)
    batch_size: int = Field(128, ge=2, le=65536, description="sequences per step")
    item_input: Literal["text", "random"] = Field(
        "text", description="what an item's projected input is: its language-model vector "
        "(text) or a fixed random unit vector of the same shape (random; a reference)")
    dual_view: bool = Field(
        False, description="fuse a semantic and a collaborative view per item, weighted by "
        "the item's training count (few interactions: lean on the text)")
    dual_pivot: float = Field(
        10.0, gt=0, le=1e6, description="dual view: the training count at which both views "
        "weigh the same (semantic weight pivot / (pivot + count))")

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
        text_np = _item_inputs(data, c, self.name)
        text = torch.tensor(text_np, device=device)
        net = _network(text_np.shape[1], data.n_items, c,
                       counts=np.asarray(data.item_popularity, dtype=np.float64)).to(device)
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
        self._net = _network(text.shape[1], text.shape[0], self.config,
                             counts=np.zeros(text.shape[0]))  # the gate comes from the state
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


def _item_inputs(data: Dataset, c: SequentialConfig, who: str) -> np.ndarray:
    """The vectors projected into an item's input: its unit text vectors, or (``random``) fixed
    random unit vectors from the seed, of the same shape, zero where the text row is zero; a
    catalog without vectors gets ``dim`` random columns."""
    if c.item_input == "text":
        return normalized_vectors(data, who)
    width = c.dim if data.item_vectors is None else int(data.item_vectors.shape[1])
    rng = np.random.default_rng([c.seed, 7919])  # not the training stream
    v = rng.standard_normal((data.n_items, width)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    if data.item_vectors is not None:
        v[np.linalg.norm(data.item_vectors, axis=1) == 0] = 0.0
    return v


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


def _network(d_text: int, n_items: int, c: SequentialConfig,  # type: ignore[no-untyped-def]
             counts: np.ndarray):
    """The item encoder and the causal Transformer as one torch module (torch imported here).

    With the dual view the semantic weight of each item (from its training ``counts``) is a
    buffer of the module, so it is saved and loaded with the weights."""
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
            if c.dual_view:
                gate = c.dual_pivot / (c.dual_pivot + np.maximum(counts, 0.0))
                self.register_buffer("gate", torch.tensor(gate, dtype=torch.float32))

        def _embed(self, items: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
            semantic, collaborative = self.text_proj(text[items]), self.ids(items)
            if not c.dual_view:
                return semantic + collaborative
            gate: torch.Tensor = self.gate  # type: ignore[assignment]
            g = gate[items].unsqueeze(-1)
            unit = nn.functional.normalize
            return g * unit(semantic, dim=-1) + (1.0 - g) * unit(collaborative, dim=-1)

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
