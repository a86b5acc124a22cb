"""Multi-objective greedy re-ranking: one weighted mix of relevance and beyond-accuracy goals.

At each step every remaining item gets ``(1 - lam) * rel + lam * sum_o w_o * obj_o / sum_o w_o``
over the objectives available for the query: relevance, novelty (self-information
``-log2(pop / n_users)`` scaled to [0, 1]), tail (outside the head), diversity (1 - max cosine
to the picks so far), unexpectedness (1 - mean cosine to the history) and calibration (the
decrease of Steck's KL when the item joins the list, over ``log(1 / alpha)``).  An objective
without its data (no vectors, no categories, no history) drops out of the weight sum.  This is
the reranker the presets use.
"""

from __future__ import annotations

import logging

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from serendip.data.dataset import Dataset
from serendip.rerank.base import (
    Candidates,
    GreedyReranker,
    RerankConfig,
    Selection,
    genre_shares,
    head_mask,
    maybe_unit_vectors,
    people,
    relevance_reason,
)
from serendip.rerank.calibration import CalibrationState, history_mix, interest_reason
from serendip.rerank.mmr import variety_reason
from serendip.rerank.serendipity import history_similarity, unexpected_reason
from serendip.rerank.tail import tail_reason
from serendip.types import Query

__all__ = ["MultiObjective", "MultiObjectiveConfig", "ObjectiveWeights", "OBJECTIVES"]

log = logging.getLogger(__name__)

#: The objectives, in the order used internally (ties in "largest contribution" go left).
OBJECTIVES = ("relevance", "novelty", "tail", "diversity", "unexpectedness", "calibration")


class ObjectiveWeights(BaseModel):
    """Non-negative weight of each objective in the discovery part of the score."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    relevance: float = Field(default=0.0, ge=0, le=100, description="relevance itself")
    novelty: float = Field(default=1.0, ge=0, le=100, description="self-information of popularity")
    tail: float = Field(default=1.0, ge=0, le=100, description="1 for items outside the head")
    diversity: float = Field(default=1.0, ge=0, le=100, description="1 - max cosine to the picks")
    unexpectedness: float = Field(
        default=1.0, ge=0, le=100, description="1 - mean cosine to the history"
    )
    calibration: float = Field(
        default=0.5, ge=0, le=100, description="decrease of the genre-mix KL to the history"
    )

    @model_validator(mode="after")
    def _some_weight(self) -> ObjectiveWeights:
        if sum(getattr(self, o) for o in OBJECTIVES) <= 0:
            raise ValueError(f"at least one objective weight must be > 0, got {self!r}")
        return self


class MultiObjectiveConfig(RerankConfig):
    strength: float = Field(
        0.6, ge=0, le=1, description="weight of the discovery objectives at discovery = 1"
    )
    weights: ObjectiveWeights = Field(
        default_factory=lambda: ObjectiveWeights(), description="weight of each objective"
    )
    head_share: float = Field(
        0.2, gt=0, lt=1, description="fraction of the catalog (most popular first) in the head"
    )
    alpha: float = Field(
        0.01, gt=0, lt=1, description="calibration smoothing of the list's genre mix"
    )


class MultiObjective(GreedyReranker):
    """Greedy weighted sum of relevance, novelty, tail, diversity, unexpectedness, calibration."""

    name = "multi_objective"
    config_class = MultiObjectiveConfig
    config: MultiObjectiveConfig

    def train(self, data: Dataset) -> None:
        pop = data.item_popularity.astype(np.float64)
        info = -np.log2(np.maximum(pop, 1.0) / max(data.n_users, 1))
        top = info.max() if info.size else 0.0
        novelty = info / top if top > 0 else np.zeros_like(info)
        vectors = maybe_unit_vectors(data, self.name)
        if vectors is None:
            log.warning("%s: no item vectors or categories; diversity and unexpectedness "
                        "are left out", self.name)
            vectors = np.zeros((data.n_items, 0), np.float32)
        genres, names = genre_shares(data)
        self._set_state(
            n_items=np.asarray(data.n_items, dtype=np.int64),
            popularity=pop,
            novelty=novelty,
            head=head_mask(pop, self.config.head_share),
            vectors=vectors,
            genres=genres,
            category_names=names,
        )

    def select(self, query: Query, cand: Candidates, k: int, lam: float) -> Selection:
        st = self._require_trained()
        w = self.config.weights
        n = cand.items.size
        has_vec = st["vectors"].shape[1] > 0
        p = history_mix(st["genres"], cand.history)
        weight = np.array([
            w.relevance, w.novelty, w.tail,
            w.diversity if has_vec else 0.0,
            w.unexpectedness if has_vec and cand.history.size else 0.0,
            w.calibration if p is not None else 0.0,
        ])
        total = weight.sum()
        if total <= 0:
            return Selection(np.arange(k), cand.rel[:k], [relevance_reason(i, n) for i in range(k)])
        weight = lam * weight / total
        # static objectives, one row each (dynamic rows are filled per step)
        obj = np.zeros((len(OBJECTIVES), n))
        obj[0] = cand.rel
        obj[1] = st["novelty"][cand.items]
        obj[2] = ~st["head"][cand.items]
        sim_hist = np.zeros(n)
        if weight[4] > 0:
            sim_hist = history_similarity(st["vectors"], cand.items, cand.history)
            obj[4] = np.clip(1.0 - sim_hist, 0.0, 1.0)
        vecs = st["vectors"][cand.items] if weight[3] > 0 else None
        cal = None
        if p is not None and weight[5] > 0:
            cal = CalibrationState(p, st["genres"][cand.items].astype(np.float64), self.config.alpha)
            kl_scale = np.log(1.0 / self.config.alpha)
        max_sim = np.zeros(n)
        obj[3] = 1.0
        static = (1.0 - lam) * cand.rel + weight[:3] @ obj[:3] + weight[4] * obj[4]
        avail = np.ones(n, dtype=bool)
        picks: list[int] = []
        values: list[float] = []
        reasons: list[str] = []
        pop = st["popularity"][cand.items]
        names = st["category_names"]
        for _ in range(k):
            kl_new = None
            if cal is not None:
                kl_new = cal.kl_if_added()
                obj[5] = (cal.kl - kl_new) / kl_scale
            val = static + weight[3] * obj[3] + weight[5] * obj[5]
            val = np.where(avail, val, -np.inf)
            j = int(np.argmax(val))
            contrib = weight[1:] * obj[1:, j]
            o = int(np.argmax(contrib)) + 1
            name = OBJECTIVES[o] if contrib[o - 1] > 1e-9 else "relevance"
            genre = cal.missing_genre(j) if cal is not None and name == "calibration" else None
            if name == "novelty":
                reasons.append(f"a rare find: {people(pop[j])} seen it "
                               f"(novelty {obj[1, j]:.2f})")
            elif name == "tail":
                reasons.append(tail_reason(pop[j]))
            elif name == "diversity" and len(picks) > 0:
                reasons.append(variety_reason(float(max_sim[j])))
            elif name == "unexpectedness":
                reasons.append(unexpected_reason(float(sim_hist[j])))
            elif genre is not None and p is not None:
                reasons.append(interest_reason(str(names[genre]), float(p[genre])))
            else:
                reasons.append(relevance_reason(j, n))
            picks.append(j)
            values.append(val[j])
            avail[j] = False
            if vecs is not None:
                sim = (vecs @ vecs[j]).astype(np.float64)
                max_sim = sim if len(picks) == 1 else np.maximum(max_sim, sim)
                obj[3] = np.clip(1.0 - max_sim, 0.0, 1.0)
            if cal is not None and kl_new is not None:
                cal.add(j, float(kl_new[j]))
        return Selection(np.asarray(picks), np.asarray(values), reasons)
