"""Multi-objective greedy re-ranking: one weighted mix of relevance and beyond-accuracy goals.

At each step every remaining item gets ``(1 - lam) * rel + lam * sum_o w_o * obj_o / sum_o w_o``
over the objectives available for the query: relevance, novelty (self-information
``-log2(pop / n_users)`` scaled to [0, 1]), tail (outside the head), diversity (1 - max cosine
to the picks so far), unexpectedness (1 - mean cosine to the history), calibration (the
decrease of Steck's KL when the item joins the list, over ``log(1 / alpha)``) and fresh
(``1 / (1 + pop)``: 1 for an item nobody has used yet).  An objective without its data (no
vectors, no categories, no history) drops out of the weight sum.  Exposure is a penalty outside
that sum, ``- lam * w_exposure * share``, with ``share`` the item's share of the recent lists
this reranker produced: almost every item has a share near 0, so as a term of the mix it would
only dilute the other objectives.  This is the reranker the presets use.

Novelty and tail read training popularity, which says nothing yet about an item nobody has
used: they would rate every new item as the rarest there is and, once the blend gives new
items real scores, flood the lists with them.  So a never-seen candidate gets the mean novelty
(and tail value) of the seen candidates of the same call, and how far new items are pushed is
the ``fresh`` weight's decision alone.

Exposure makes a batch of lists (or a service over time) spread its slots: without it a tail
item that suits everybody goes into nearly every list.  The reranker remembers the items of
its last ``exposure_window`` lists; the ``exposure`` weight penalises an item by its share of
them, and ``exposure_cap`` bounds that share outright (an item may always appear once; when the
cap leaves fewer than ``k`` candidates the least shown of the others fill the list).  At
discovery 0 the list is the blend's top-k, as for every reranker, but it is still remembered.
The memory is per instance, guarded by a lock, and read once per call, so one call on a given
state is deterministic; ``record=False`` reranks without remembering.
"""

from __future__ import annotations

import logging
import threading
from collections import deque

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from serendip.data.dataset import Dataset
from serendip.rerank.base import (
    Candidates,
    GreedyReranker,
    RerankConfig,
    Selection,
    csr_state,
    dots_with_row,
    genre_shares,
    head_mask,
    maybe_unit_vectors,
    names_state,
    people,
    relevance_reason,
    rows_state,
    take_rows,
)
from serendip.rerank.calibration import (
    CalibrationState,
    genre_rows,
    history_count,
    history_mix,
    interest_reason,
)
from serendip.rerank.mmr import variety_reason
from serendip.rerank.serendipity import history_similarity, unexpected_reason
from serendip.rerank.tail import tail_reason
from serendip.types import ItemList, Query

__all__ = [
    "MultiObjective", "MultiObjectiveConfig", "ObjectiveWeights", "OBJECTIVES",
    "fresh_reason", "exposure_reason", "novelty_reason",
]

log = logging.getLogger(__name__)

#: Calibration reads at most this many of the user's genres (the largest shares of p(g|u)).
MAX_CALIBRATION_GENRES = 24

#: The objectives, in the order used internally (ties in "largest contribution" go left).
OBJECTIVES = ("relevance", "novelty", "tail", "diversity", "unexpectedness", "calibration",
              "fresh", "exposure")
_NOV, _TAIL, _DIV, _UNEXP, _CAL, _FRESH, _EXPO = range(1, len(OBJECTIVES))


def fresh_reason(popularity: float) -> str:
    """Why a new or barely used item was picked."""
    if int(popularity) == 0:
        return "new in the catalog: nobody has chosen it yet"
    return f"new here: {people(popularity)} chosen it so far"


def novelty_reason(popularity: float, tail: bool) -> str:
    """Why an item picked for novelty was picked: rare when it is in the long tail, else
    less known than the other candidates."""
    if tail:
        return f"a rare find: {people(popularity)} chosen it"
    return "less well known than the usual picks"


def at_least_median(values: np.ndarray, pool: np.ndarray) -> np.ndarray:
    """Per row ``r``: ``values[r] >= np.median(pool[r])``, without sorting.  The count of the
    row's entries at or below the value decides; for an even count with exactly half below,
    the two middle entries are the largest at or below the value and the smallest above it,
    and their mean is compared as ``np.median`` computes it."""
    n = pool.shape[1]
    below = pool <= values[:, None]
    count = below.sum(axis=1)
    half = n // 2
    out = count >= half + 1
    if n % 2 == 0:
        tie = count == half
        if tie.any():
            lo = np.where(below, pool, -np.inf).max(axis=1)
            hi = np.where(below, np.inf, pool).min(axis=1)
            out |= tie & (values >= (lo + hi) / 2)
    return np.asarray(out)


def exposure_reason(share: float) -> str:
    """Why an item few recent lists showed was picked (``share`` of those lists)."""
    if share <= 0:
        return "given a turn: not recommended to anyone lately"
    return f"given a turn: rarely recommended lately (in {share:.0%} of recent lists)"


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
    fresh: float = Field(
        default=0.0, ge=0, le=100,
        description="1 / (1 + training popularity): 1 for items nobody has used yet",
    )
    exposure: float = Field(
        default=0.0, ge=0, le=100,
        description="penalty on the item's share of this reranker's recent lists (outside "
                    "the weight sum; spreads slots)",
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
    exposure_window: int = Field(
        1000, ge=1, le=1_000_000,
        description="recent lists remembered for the exposure objective and cap",
    )
    exposure_cap: float | None = Field(
        None, gt=0, le=1,
        description="largest share of the recent lists one item may be in (None: no cap); "
                    "an item's first appearance is always allowed",
    )


class MultiObjective(GreedyReranker):
    """Greedy weighted sum of relevance, novelty, tail, diversity, unexpectedness,
    calibration, freshness and exposure."""

    name = "multi_objective"
    config_class = MultiObjectiveConfig
    config: MultiObjectiveConfig
    _lock: threading.Lock
    _window: deque[np.ndarray]  # the items of each remembered list, oldest first
    _shown: np.ndarray  # per item: how many remembered lists hold it

    def train(self, data: Dataset) -> None:
        pop = data.item_popularity.astype(np.float64)
        info = -np.log2(np.maximum(pop, 1.0) / max(data.n_users, 1))
        top = info.max() if info.size else 0.0
        novelty = info / top if top > 0 else np.zeros_like(info)
        vectors = maybe_unit_vectors(data, self.name, sparse=True)
        if vectors is None:
            log.warning("%s: no item vectors or categories; diversity and unexpectedness "
                        "are left out", self.name)
            vectors = np.zeros((data.n_items, 0), np.float32)
        genres, names = genre_shares(data, self.name)
        self._set_state(
            n_items=np.asarray(data.n_items, dtype=np.int64),
            popularity=pop,
            novelty=novelty,
            head=head_mask(pop, self.config.head_share),
            **rows_state("vectors", vectors),
            **csr_state("genres", genres),
            **names_state("category", names),
        )

    # ------------------------------------------------------------------ exposure memory
    def _after_load(self) -> None:
        super()._after_load()
        self._lock = threading.Lock()
        self.reset_exposure()

    @property
    def tracks_exposure(self) -> bool:
        """Whether this reranker remembers its lists (an exposure weight or cap is set)."""
        return self.config.weights.exposure > 0 or self.config.exposure_cap is not None

    def reset_exposure(self) -> None:
        """Forget the remembered lists."""
        n = int(self._require_trained()["n_items"])
        with self._lock:
            self._window = deque(maxlen=self.config.exposure_window)
            self._shown = np.zeros(n, dtype=np.int64)

    def exposure_shares(self) -> np.ndarray:
        """Each item's share of the remembered lists (all zeros before the first list)."""
        self._require_trained()
        with self._lock:
            n = len(self._window)
            return self._shown / n if n else np.zeros(self._shown.size)

    def _remember(self, items: np.ndarray) -> None:
        if len(self._window) == self._window.maxlen:
            self._shown[self._window[0]] -= 1  # deque drops it on append
        kept = np.unique(np.asarray(items, dtype=np.int64))
        self._window.append(kept)
        self._shown[kept] += 1

    def __call__(self, query: Query, items: ItemList, k: int, *, record: bool = True
                 ) -> ItemList:
        """The reranked list; with exposure tracking on it also joins the remembered lists,
        unless ``record`` is False (e.g. when computing a policy's distribution off-line)."""
        self._require_trained()
        if not self.tracks_exposure:
            return super().__call__(query, items, k)
        with self._lock:
            out = super().__call__(query, items, k)
            if record:
                self._remember(out.items)
        return out

    def _exposure(self, items: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """For candidates: share of the remembered lists, and (with a cap) which may not be
        picked now.  Called under the lock."""
        n = len(self._window)
        counts = self._shown[items]
        share = counts / n if n else np.zeros(items.size)
        cap = self.config.exposure_cap
        if cap is None:
            return share, None
        # the cap holds over the lists remembered after this one: the oldest may drop out
        if n == self._window.maxlen:
            counts = counts - np.isin(items, self._window[0])
        n_after = min(n + 1, self.config.exposure_window)
        limit = max(1, int(np.floor(cap * n_after + 1e-9)))
        return share, counts + 1 > limit

    # ------------------------------------------------------------------ selection
    def select(self, query: Query, cand: Candidates, k: int, lam: float) -> Selection:
        st = self._require_trained()
        w = self.config.weights
        n = cand.items.size
        vectors = self._rows("vectors")
        has_vec = vectors.shape[1] > 0
        mix = history_mix(self._rows("genres"), cand.history)
        weight = np.array([
            w.relevance, w.novelty, w.tail,
            w.diversity if has_vec else 0.0,
            w.unexpectedness if has_vec and cand.history.size else 0.0,
            w.calibration if mix is not None else 0.0,
            w.fresh,
            0.0,  # exposure is a penalty outside the mix, below
        ])
        total = weight.sum()
        if total <= 0 and not self.tracks_exposure:
            return Selection(np.arange(k), cand.rel[:k], [relevance_reason(i, n) for i in range(k)])
        weight = lam * weight / total if total > 0 else weight
        weight[_EXPO] = lam * w.exposure
        pop = st["popularity"][cand.items]
        # static objectives, one row each (dynamic rows are filled per step)
        obj = np.zeros((len(OBJECTIVES), n))
        obj[0] = cand.rel
        obj[_NOV] = st["novelty"][cand.items]
        obj[_TAIL] = ~st["head"][cand.items]
        new = pop == 0
        if new.any():  # popularity says nothing of new items: neutral, see the module doc
            seen = ~new
            obj[_NOV, new] = obj[_NOV, seen].mean() if seen.any() else 0.0
            obj[_TAIL, new] = obj[_TAIL, seen].mean() if seen.any() else 0.0
        obj[_FRESH] = 1.0 / (1.0 + pop)
        capped = None
        share = np.zeros(n)
        if self.tracks_exposure:
            share, capped = self._exposure(cand.items)
            obj[_EXPO] = -share
        sim_hist = np.zeros(n)
        if weight[_UNEXP] > 0:
            sim_hist = history_similarity(vectors, cand.items, cand.history)
            obj[_UNEXP] = np.clip(1.0 - sim_hist, 0.0, 1.0)
        vecs = take_rows(vectors, cand.items) if weight[_DIV] > 0 else None
        cal = None
        cols = np.zeros(0, dtype=np.int64)  # the calibrated genres (columns of the genre matrix)
        p = np.zeros(0)  # their shares of the history
        if mix is not None and weight[_CAL] > 0:
            # the user's main genres only: with free-form tags (a thousand on a book catalog)
            # the rest carry little of p(g|u) and cost most of the time
            cols, p = mix
            if cols.size > MAX_CALIBRATION_GENRES:
                main = np.sort(np.argsort(-p, kind="stable")[:MAX_CALIBRATION_GENRES])
                cols, p = cols[main], p[main]
            rows, mass = genre_rows(self._rows("genres"), cand.items, cols)
            cal = CalibrationState(p / p.sum(), rows, self.config.alpha, row_mass=mass)
            kl_scale = np.log(1.0 / self.config.alpha)
        max_sim = np.zeros(n)
        obj[_DIV] = 1.0
        static_rows = [0, _NOV, _TAIL, _UNEXP, _FRESH, _EXPO]
        static = (1.0 - lam) * cand.rel + np.einsum("i,ij->j", weight[static_rows],
                                                    obj[static_rows])  # as row_dots
        # for the reason, exposure counts by how much less shown the item is than the most shown
        expo_gain = share.max() - share if n else share
        avail = np.ones(n, dtype=bool)
        allowed = avail if capped is None else ~capped
        picks: list[int] = []
        values: list[float] = []
        reasons: list[str] = []
        names = self._category_names
        for _ in range(k):
            kl_new = None
            if cal is not None:
                kl_new = cal.kl_if_added()
                obj[_CAL] = (cal.kl - kl_new) / kl_scale
            val = static + weight[_DIV] * obj[_DIV] + weight[_CAL] * obj[_CAL]
            open_ = avail & allowed
            if open_.any():
                j = int(np.argmax(np.where(open_, val, -np.inf)))
            else:  # the cap leaves too few: the least shown of the rest, best value first
                rest = np.flatnonzero(avail)
                j = int(rest[np.lexsort((-val[rest], share[rest]))[0]])
            contrib = weight[1:] * obj[1:, j]
            contrib[_EXPO - 1] = weight[_EXPO] * expo_gain[j]
            # a reason must be true of the item: an objective names it only where the item is
            # above the candidates' median on it (Titanic is never "less well known")
            pool = obj[1:, open_ if open_.any() else avail]
            above = at_least_median(obj[1:, j], pool) & (obj[1:, j] > pool.min(axis=1))
            above[_EXPO - 1] = (self.tracks_exposure  # else every gain is 0: never above
                                and bool(at_least_median(expo_gain[j:j + 1], expo_gain[None])[0])
                                and expo_gain[j] > expo_gain.min())
            contrib = np.where(above, contrib, 0.0)
            o = int(np.argmax(contrib)) + 1
            name = OBJECTIVES[o] if contrib[o - 1] > 1e-9 else "relevance"
            genre = cal.missing_genre(j) if cal is not None and name == "calibration" else None
            if name == "fresh" or (name in ("novelty", "tail") and new[j]):
                reasons.append(fresh_reason(pop[j]))
            elif name == "novelty":
                reasons.append(novelty_reason(pop[j], not bool(st["head"][cand.items[j]])))
            elif name == "tail":
                reasons.append(tail_reason(pop[j]))
            elif name == "diversity" and len(picks) > 0:
                reasons.append(variety_reason(float(max_sim[j])))
            elif name == "unexpectedness":
                reasons.append(unexpected_reason(float(sim_hist[j])))
            elif name == "exposure":
                reasons.append(exposure_reason(float(share[j])))
            elif genre is not None:
                reasons.append(interest_reason(names[int(cols[genre])], *history_count(
                    self._rows("genres"), cand.history, int(cols[genre]))))
            else:
                reasons.append(relevance_reason(j, n))
            picks.append(j)
            values.append(val[j])
            avail[j] = False
            if vecs is not None:
                sim = dots_with_row(vecs, j).astype(np.float64)
                max_sim = sim if len(picks) == 1 else np.maximum(max_sim, sim)
                obj[_DIV] = np.clip(1.0 - max_sim, 0.0, 1.0)
            if cal is not None and kl_new is not None:
                cal.add(j, float(kl_new[j]))
        return Selection(np.asarray(picks), np.asarray(values), reasons)
