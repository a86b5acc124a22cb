"""Self-tuning: fit the models, the blend and the presets to the catalog at hand.

``tune(data)`` carves a validation split out of ``data`` by the protocol the data supports
(a global time cut when its timestamps can be trusted, else a per-user random holdout) and
chooses, on that validation split only:

1. each model's hyperparameters (EASE lambda, ALS factors/regularisation/alpha, KNN
   neighbours, recency half-lives, transition window...), by the model's own NDCG@K;
2. the ``accurate`` blend weights, by coordinate ascent on NDCG@K over the members' cached
   per-user z-scores (a blend is linear in them, so no model is re-scored);
3. the operating points of ``balanced`` and ``discovery``: for several multi-objective
   re-ranking configurations the discovery knob is swept, tracing a frontier; ``balanced`` is
   the point with the most discovery (mean of tail share, coverage and scaled novelty) whose
   NDCG stays >= ``balanced_floor`` x accurate's and whose most-shown tail item is in at most
   ``hub_cap`` of the lists; ``discovery`` the same with ``discovery_floor``;
4. the knob's scale: for each re-ranking preset, knob value ``x`` maps to the internal
   discovery value at which the preset has given up ``x * knob_span`` of accurate's
   validation NDCG (``knob_span`` = 0.2: knob 0.5 costs about 10%, knob 1 about 20%), so
   equal knob steps cost equal accuracy, on every catalog.

The test part of a benchmark is never seen: the caller passes only training data.  The result
holds the tuned ``FitConfig`` (to fit on all the data), the presets, and every validation
figure; ``TuneResult.write`` saves them as TOML (figures in comments) and JSON.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import tomli_w
from pydantic import BaseModel, ConfigDict, Field
from tqdm.auto import tqdm

from serendip.data.dataset import Dataset
from serendip.errors import ConfigError
from serendip.eval.metrics import compute_metrics
from serendip.eval.runner import truth_of
from serendip.models import SCORERS, BatchScorer
from serendip.pipeline import (
    ORDER_MODELS,
    FitConfig,
    Pipeline,
    Preset,
    Recommender,
    negative_mask,
    preset_toml,
)
from serendip.rerank import RERANKERS
from serendip.types import ItemList, Query

__all__ = ["TuneConfig", "TuneResult", "tune", "discovery_score"]

log = logging.getLogger(__name__)

#: Knob values at which each re-ranking configuration is measured.
KNOB_GRID = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
#: Relative weights tried for each blend member in the coordinate ascent.
BLEND_STEPS = (0.0, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5)


class TuneConfig(BaseModel):
    """What ``tune`` searches and under which limits."""

    model_config = ConfigDict(extra="forbid")
    protocol: str | None = Field(
        None, description="validation protocol: time, random, temporal or loo; "
                          "None: time when timestamps can be trusted, else random")
    cut: float = Field(0.8, gt=0, lt=1, description="time protocol: quantile of event time")
    k: int = Field(10, ge=1, le=1000, description="list length the presets are tuned for")
    budget_seconds: float = Field(600.0, gt=0, le=7 * 24 * 3600.0,
                                  description="time budget; the search stops early past it")
    max_users: int = Field(4000, ge=10, le=10**7,
                           description="validation users sampled for the model and blend search")
    rerank_users: int = Field(1500, ge=10, le=10**7,
                              description="validation users sampled for the re-ranking search")
    rerank_trials: int = Field(10, ge=1, le=1000, description="re-ranking configurations tried")
    balanced_floor: float = Field(0.97, gt=0, le=1, description="balanced NDCG >= this x accurate")
    discovery_floor: float = Field(0.90, gt=0, le=1,
                                   description="discovery NDCG >= this x accurate")
    hub_cap: float = Field(0.10, gt=0, le=1,
                           description="largest share of lists one tail item may appear in")
    significance: float = Field(
        1.0, ge=0, le=10, description="a blend change is kept only when it raises validation "
        "NDCG by this many standard errors of the paired per-user difference")
    knob_span: float = Field(0.2, gt=0, le=1,
                             description="share of accurate's NDCG that knob 1 gives up")
    seed: int = Field(0, ge=0)
    deep: bool | None = Field(
        None, description="also train the deep models over the text vectors (two-tower; the "
                          "sequential Transformer on ordered data) and let the blend weigh "
                          "them; None: when a CUDA GPU is present (on CPUs they train for "
                          "minutes on catalogs of this size)")


@dataclass
class TuneResult:
    """The tuned fit config and presets, with the validation figures behind them."""

    fit_config: FitConfig
    presets: dict[str, Preset]
    protocol: str
    validation: dict[str, dict[str, float]]  # preset name -> validation metrics
    models: dict[str, dict[str, Any]]  # model name -> {"params": ..., "ndcg": ...}
    frontier: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """What ``fit --tune`` records in the model directory."""
        return {
            "protocol": self.protocol, "seconds": round(self.seconds, 1),
            "validation": {k: {m: round(v, 5) for m, v in ms.items()}
                           for k, ms in self.validation.items()},
            "models": self.models, "notes": self.notes,
        }

    def write(self, directory: str | Path) -> list[Path]:
        """``fit.toml``, ``presets/<name>.toml`` (figures in comments) and ``tuning.json``."""
        out = Path(directory)
        (out / "presets").mkdir(parents=True, exist_ok=True)
        written = []
        cfg = self.fit_config.model_dump(exclude_none=True)
        header = (f"# Chosen by serendip tune on a {self.protocol} validation split carved "
                  "from the training data.\n")
        (out / "fit.toml").write_text(header + tomli_w.dumps(cfg))
        written.append(out / "fit.toml")
        for name, preset in self.presets.items():
            path = out / "presets" / f"{name}.toml"
            path.write_text(preset_toml(preset, preset_header(name, self)))
            written.append(path)
        (out / "tuning.json").write_text(json.dumps(
            {**self.summary(), "frontier": self.frontier}, indent=2))
        written.append(out / "tuning.json")
        return written


def preset_header(name: str, result: TuneResult) -> list[str]:
    m = result.validation.get(name, {})
    acc = result.validation.get("accurate", {}).get("ndcg", float("nan"))
    lines = [f"{name}: tuned by serendip tune on a {result.protocol} validation split carved "
             "from the training data (never the test part)."]
    if m:
        lines.append(
            f"Validation: NDCG@K {m['ndcg']:.4f} ({m['ndcg'] / acc:.3f} x accurate), "
            f"tail share {m['tail_share']:.3f}, coverage {m['coverage']:.3f}, "
            f"novelty {m['novelty']:.2f} bits, most-shown tail item in "
            f"{m['max_list_share_tail']:.1%} of lists."
        )
    return lines


def discovery_score(m: Mapping[str, float], n_users: int) -> float:
    """One number for "how much discovery": mean of tail share, coverage and novelty scaled
    by its largest possible value (log2 of the number of users)."""
    top = float(np.log2(max(n_users, 2)))
    return float((m["tail_share"] + m["coverage"] + m["novelty"] / top) / 3.0)


class _Clock:
    def __init__(self, budget: float):
        self.t0 = time.perf_counter()
        self.budget = budget

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def left(self, share: float) -> bool:
        """Whether less than ``share`` of the budget has been spent."""
        return self.elapsed() < share * self.budget


class _Validation:
    """A validation split reduced to what fast scoring needs: queries, truth, history masks."""

    def __init__(self, train: Dataset, profile: Dataset, test_users: np.ndarray,
                 truth: dict[int, np.ndarray], new_items: np.ndarray | None, k: int):
        self.train = train
        self.profile = profile  # ``train`` less negative feedback: what models learn from
        self.users = test_users
        self.truth = {int(u): truth[int(u)] for u in test_users}
        self.new_items = new_items
        self.k = k
        self.queries = [Query(int(u), profile.history(int(u))) for u in test_users]
        n = train.n_items
        rows = np.repeat(np.arange(len(test_users)), [len(self.truth[int(u)]) for u in test_users])
        cols = np.concatenate([self.truth[int(u)] for u in test_users])
        self.relevant = sp.csr_matrix((np.ones(rows.size, bool), (rows, cols)),
                                      shape=(len(test_users), n))
        self.n_rel = np.asarray(self.relevant.sum(axis=1)).ravel()
        self.seen = train.matrix[test_users].tocsr()

    def topk(self, scores: np.ndarray) -> np.ndarray:
        s = np.array(scores, dtype=np.float32)
        r, c = self.seen.nonzero()
        s[r, c] = -np.inf
        s[~np.isfinite(s)] = -np.inf
        k = min(self.k, s.shape[1])
        part = np.argpartition(-s, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(s, part, axis=1), axis=1, kind="stable")
        return np.take_along_axis(part, order, axis=1)

    def ndcg_rows(self, recs: np.ndarray) -> np.ndarray:
        """NDCG@k of each list (one row per validation user), computed in bulk."""
        hits = np.asarray(self.relevant[np.arange(recs.shape[0])[:, None], recs].todense())
        disc = 1.0 / np.log2(np.arange(2, recs.shape[1] + 2))
        ideal = np.cumsum(1.0 / np.log2(np.arange(2, self.k + 2)))
        return np.asarray((hits * disc).sum(axis=1) / ideal[np.minimum(self.n_rel, self.k) - 1])

    def ndcg(self, recs: np.ndarray) -> float:
        return float(np.mean(self.ndcg_rows(recs)))

    def metrics(self, recs: np.ndarray) -> dict[str, float]:
        return compute_metrics(recs, self.users, self.truth, self.train, self.k,
                               new_items=self.new_items)

    def subset(self, n: int, rng: np.random.Generator) -> _Validation:
        if len(self.users) <= n:
            return self
        pick = np.sort(rng.choice(len(self.users), size=n, replace=False))
        return _Validation(self.train, self.profile, self.users[pick], self.truth,
                           self.new_items, self.k)


def _has_cuda() -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return False
    return bool(torch.cuda.is_available())


def _score(scorer: BatchScorer, queries: list[Query], chunk: int = 1024) -> np.ndarray:
    parts = [scorer.score_many(queries[i:i + chunk]) for i in range(0, len(queries), chunk)]
    return np.vstack(parts).astype(np.float32)


def _candidates(name: str, base: dict[str, Any], best: dict[str, dict[str, Any]],
                ordered: bool) -> Iterator[list[dict[str, Any]]]:
    """Stages of hyperparameter settings to try for one model; each stage may use the best
    setting found so far (``best``), so later stages refine earlier ones."""
    kind = base.get("type", name)
    hl = [None, 5.0, 20.0, 80.0] if ordered else [None]
    if kind == "ease":
        if "half_life" in base and name != "ease" and "ease" in best:
            yield [{**best["ease"], "half_life": h} for h in hl if h is not None]
        else:
            yield [{"l2": v} for v in (20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0)]
    elif kind == "als":
        yield [{"factors": f, "regularization": r}
               for f in (32, 64, 128) for r in (0.01, 0.1, 1.0)]
        yield [{**best[name], "alpha": a} for a in (0.5, 2.0, 8.0)]
    elif kind == "knn":
        yield [{"neighbors": n} for n in (20, 50, 100, 200, 400)]
        yield [{**best[name], "half_life": h} for h in hl]
    elif kind == "textcf":
        yield [{"l2": v} for v in (10.0, 30.0, 100.0, 300.0, 1000.0)]
    elif kind == "transition":
        yield [{"window": w, "recent": r} for w in (1, 3, 5, 10) for r in (1, 3, 5)]
    elif kind == "semantic":
        yield [{"half_life": h} for h in hl]


def tune(data: Dataset, config: TuneConfig | None = None, *, fit_config: FitConfig | None = None,
         progress: bool = True) -> TuneResult:
    """Choose models, blend and presets for ``data`` on a validation split carved from it.

    ``data`` must carry item vectors (``Dataset.with_item_vectors``).  ``fit_config`` gives
    the models to tune (default: the default fit for this catalog).
    """
    from serendip.data.splits import validation_split

    cfg = config or TuneConfig()
    if data.item_vectors is None:
        raise ConfigError("tune needs item vectors: encode the catalog first "
                          "(Dataset.with_item_vectors)")
    clock = _Clock(cfg.budget_seconds)
    rng = np.random.default_rng(cfg.seed)
    quality = data.time_quality
    ordered = bool(quality.ordered)
    protocol = cfg.protocol or ("time" if ordered else "random")
    notes: list[str] = []
    if not ordered:
        notes.append("timestamps missing or heavily tied: order-reading models left out, "
                     f"validation by a per-user {protocol} split")
    base_cfg = (fit_config or FitConfig()).for_data(data)
    if cfg.deep or (cfg.deep is None and fit_config is None and _has_cuda()):
        deep: dict[str, dict[str, Any]] = {"two_tower": {}, **({"sequential": {}} if ordered else {})}
        base_cfg = base_cfg.model_copy(update={"models": {**base_cfg.models, **deep}})
    if not ordered:
        base_cfg = base_cfg.model_copy(update={"models": {
            k: v for k, v in base_cfg.models.items() if k not in ORDER_MODELS}})
    kwargs: dict[str, Any] = {"cut": cfg.cut} if protocol == "time" else {}
    split = validation_split(data, protocol, **kwargs)
    truth = truth_of(split)
    if not truth:
        raise ConfigError(f"the {protocol} validation split holds no user to evaluate; "
                          "the data is too small to tune on")
    users = np.fromiter(truth.keys(), dtype=np.int64)
    neg = negative_mask(split.train, base_cfg)
    profile = split.train.with_interactions(split.train.interactions[~neg]) if neg.any() \
        else split.train
    negatives = split.train.interactions.loc[neg, ["user", "item"]].reset_index(drop=True)
    full = _Validation(split.train, profile, users, truth, split.new_items, cfg.k)
    val = full.subset(cfg.max_users, rng)
    log.info("tune: %s validation split, %d users (%d used for the search)", protocol,
             len(users), len(val.users))

    # 1. model hyperparameters ------------------------------------------------------------
    trained: dict[str, BatchScorer] = {}
    chosen: dict[str, dict[str, Any]] = {}
    model_report: dict[str, dict[str, Any]] = {}
    names = list(base_cfg.models)
    # EASE before its recency-weighted variant, which starts from EASE's lambda
    names.sort(key=lambda n: (base_cfg.models[n].get("type", n) == "ease" and n != "ease"))
    bar = tqdm(total=len(names), desc="tune models", disable=not progress)
    for name in names:
        base = dict(base_cfg.models[name])
        kind = base.get("type", name)
        fixed = {k: v for k, v in base.items() if k != "type"}
        best: tuple[float, dict[str, Any], BatchScorer | None] = (-1.0, fixed, None)

        def trial(params: dict[str, Any], kind: str = kind) -> tuple[float, BatchScorer]:
            scorer = SCORERS[kind](params)
            scorer.train(profile)
            return val.ndcg(val.topk(_score(scorer, val.queries))), scorer

        best_so_far: dict[str, dict[str, Any]] = dict(chosen)
        tried = 0
        for stage in _candidates(name, base, best_so_far, ordered):
            for params in stage:
                if best[2] is not None and not clock.left(0.45):
                    break  # past the models' share of the budget: keep the best so far
                p = {**fixed, **{k: v for k, v in params.items() if k != "type"}}
                if "half_life" in p and p["half_life"] is None:
                    p.pop("half_life")
                nd, scorer = trial(p)
                tried += 1
                if nd > best[0]:
                    best = (nd, p, scorer)
            best_so_far[name] = best[1]
        if best[2] is None:  # no grid for this model: train it as configured
            nd, scorer = trial(fixed)
            tried += 1
            best = (nd, fixed, scorer)
        assert best[2] is not None
        trained[name] = best[2]
        chosen[name] = best[1]
        model_report[name] = {"params": best[1], "ndcg": round(best[0], 5), "tried": tried}
        bar.set_postfix_str(f"{name} {best[0]:.4f}")
        bar.update()
    bar.close()
    models_cfg = {n: ({"type": base_cfg.models[n]["type"]} if "type" in base_cfg.models[n]
                      else {}) | chosen[n] for n in base_cfg.models}
    tuned_cfg = base_cfg.model_copy(update={"models": models_cfg})
    rec = Recommender(profile, trained, tuned_cfg, negatives=negatives)

    # 2. the accurate blend -----------------------------------------------------------------
    z = {n: _member_scores(rec, n, val.queries) for n in trained}
    ranked = sorted(model_report, key=lambda n: -model_report[n]["ndcg"])
    weights = {n: 0.0 for n in trained}
    weights[ranked[0]] = 1.0

    def blend_rows(w: Mapping[str, float]) -> np.ndarray:
        total = sum(v * z[n] for n, v in w.items() if v > 0)
        return val.ndcg_rows(val.topk(np.asarray(total)))

    def better(new: np.ndarray, cur: np.ndarray) -> bool:
        """A significant gain: the paired per-user difference's mean exceeds
        ``significance`` standard errors (a small validation set moves only on clear gains)."""
        d = new - cur
        if d.mean() <= 1e-9:
            return False
        se = float(d.std(ddof=1) / np.sqrt(d.size)) if d.size > 1 else 0.0
        return bool(d.mean() > cfg.significance * se)

    best_rows = blend_rows(weights)
    for _ in range(2):
        improved = False
        for n in ranked[1:] + ranked[:1]:
            if not clock.left(0.6):
                break
            for step in BLEND_STEPS:
                if step == weights[n] or (n == ranked[0] and step == 0.0):
                    continue
                w = {**weights, n: step}
                rows = blend_rows(w)
                if better(rows, best_rows):
                    best_rows, weights, improved = rows, w, True
        if not improved:
            break
    best_nd = float(best_rows.mean())
    blend = {n: float(v) for n, v in weights.items() if v > 0}
    accurate = Preset(name="accurate", description="Highest accuracy: relevance blend tuned "
                      "for this catalog, no re-ranking", candidates=cfg.k, discovery=0.0,
                      blend=blend)
    log.info("tune: accurate blend %s, validation NDCG %.4f", blend, best_nd)

    # 3. operating points along the frontier -------------------------------------------------
    small = full.subset(cfg.rerank_users, np.random.default_rng(cfg.seed + 1))
    pool_scores = sum(v * _member_scores(rec, n, small.queries) for n, v in blend.items())
    frontier, presets_found = _search_operating_points(
        rec, small, np.asarray(pool_scores), accurate, cfg, clock, rng, progress)
    presets: dict[str, Preset] = {"accurate": accurate}
    validation: dict[str, dict[str, float]] = {}
    acc_small = small.metrics(small.topk(np.asarray(pool_scores)))
    validation["accurate"] = acc_small
    for label, found in presets_found.items():
        if found is None:
            notes.append(f"{label}: no re-ranking setting kept NDCG within the floor; "
                         "the shipped preset stays")
            continue
        preset, m = found
        presets[label] = preset
        validation[label] = m
    return TuneResult(tuned_cfg, presets, protocol, validation, model_report, frontier,
                      clock.elapsed(), notes)


def _member_scores(rec: Recommender, name: str, queries: list[Query]) -> np.ndarray:
    """A blend member's contribution at weight 1, exactly as the pipeline blends it."""
    pipe = Pipeline(rec, Preset(name=name, blend={name: 1.0}))
    parts = [pipe.hybrid.score_many(queries[i:i + 1024]) for i in range(0, len(queries), 1024)]
    out = np.vstack(parts).astype(np.float32)
    out[~np.isfinite(out)] = -1e9  # unscorable: last, without poisoning the sums
    return out


def _rerank_trials(rng: np.random.Generator, n: int) -> list[dict[str, Any]]:
    """Multi-objective configurations to sweep: a fixed spread, then random ones.  Most
    spread exposure (a tail item shown to everybody is a hub, not a discovery) and some push
    new items (``fresh``)."""
    fixed = [
        {"novelty": 1.0, "diversity": 1.0, "calibration": 0.25, "exposure": 1.0},
        {"novelty": 1.0, "tail": 1.0, "diversity": 0.5, "exposure": 1.0},
        {"novelty": 0.5, "exposure": 2.0},
        {"novelty": 1.0, "tail": 0.5, "diversity": 0.5, "unexpectedness": 0.5,
         "exposure": 0.5, "fresh": 0.05},
    ]
    objectives = ("novelty", "tail", "diversity", "unexpectedness", "calibration")
    out = []
    for i in range(n):
        if i < len(fixed):
            w = dict(fixed[i])
        else:
            w = {o: float(rng.choice([0.0, 0.25, 0.5, 1.0])) for o in objectives}
            if sum(w.values()) == 0:
                w["novelty"] = 1.0
            w["exposure"] = float(rng.choice([0.0, 0.5, 1.0, 2.0]))
            w["fresh"] = float(rng.choice([0.0, 0.0, 0.05, 0.1]))
        w = {**dict.fromkeys((*objectives, "fresh", "exposure"), 0.0), **w}
        out.append({"weights": w, "candidates": int([100, 200, 400][i % 3])})
    return out


def _reranked(rec: Recommender, val: _Validation, pool: np.ndarray, pool_scores: np.ndarray,
              stage: dict[str, Any], knob: float) -> np.ndarray:
    """Re-rank each user's candidate pool with one multi-objective stage at one knob value."""
    rr = RERANKERS["multi_objective"]({"strength": 1.0, "weights": stage["weights"]})
    rr.train(rec.data)
    n = stage["candidates"]
    recs = np.full((len(val.users), val.k), -1, dtype=np.int64)
    for r, q in enumerate(val.queries):
        lst = ItemList(pool[r, :n], pool_scores[r, :n])
        out = rr(Query(q.user, q.history, discovery=knob), lst, val.k)
        recs[r, :len(out)] = out.items
    return recs


def _search_operating_points(
    rec: Recommender, val: _Validation, blend_scores: np.ndarray, accurate: Preset,
    cfg: TuneConfig, clock: _Clock, rng: np.random.Generator, progress: bool,
) -> tuple[list[dict[str, Any]], dict[str, tuple[Preset, dict[str, float]] | None]]:
    s = np.array(blend_scores, dtype=np.float32)
    r, c = val.seen.nonzero()
    s[r, c] = -np.inf
    pool = np.argsort(-s, axis=1, kind="stable")[:, :400]
    pool_scores = np.take_along_axis(s, pool, axis=1).astype(np.float64)
    acc = val.metrics(val.topk(blend_scores))
    n_users = rec.data.n_users
    frontier: list[dict[str, Any]] = []
    best: dict[str, tuple[float, Preset, dict[str, float]] | None] = {
        "balanced": None, "discovery": None}
    floors = {"balanced": cfg.balanced_floor, "discovery": cfg.discovery_floor}
    descriptions = {
        "balanced": "Default: near-accurate relevance with long-tail, novel picks (tuned)",
        "discovery": "Discovery first: the long tail and the unexpected, kept relevant (tuned)",
    }
    trials = _rerank_trials(rng, cfg.rerank_trials)
    bar = tqdm(trials, desc="tune presets", disable=not progress)
    for i, stage in enumerate(bar):
        if i > 0 and not clock.left(1.0):
            break
        curve = [(0.0, acc)]
        for knob in KNOB_GRID[1:]:
            m = val.metrics(_reranked(rec, val, pool, pool_scores, stage, knob))
            curve.append((knob, m))
            frontier.append({"trial": i, "knob": knob, **stage,
                             **{k: m[k] for k in ("ndcg", "tail_share", "coverage", "novelty",
                                                  "max_list_share_tail") if k in m}})
            if m["ndcg"] < (1.0 - cfg.knob_span) * acc["ndcg"]:
                break  # past knob 1: larger values only cost more
        for label, floor in floors.items():
            for knob, m in curve[1:]:
                ok = (m["ndcg"] >= floor * acc["ndcg"]
                      and m.get("max_list_share_tail", 0.0) <= cfg.hub_cap)
                score = discovery_score(m, n_users)
                cur = best[label]
                if ok and (cur is None or score > cur[0]):
                    preset = Preset(
                        name=label, description=descriptions[label], blend=accurate.blend,
                        candidates=stage["candidates"], discovery=knob,
                        rerank=[{"name": "multi_objective", "strength": 1.0,
                                 "weights": stage["weights"]}],
                    )
                    knob_map = _knob_map(curve, cfg.knob_span)
                    best[label] = (score, preset.model_copy(update={"knob": knob_map}), m)
        bar.set_postfix_str(" ".join(f"{k} {v[0]:.3f}" for k, v in best.items() if v))
    bar.close()
    out: dict[str, tuple[Preset, dict[str, float]] | None] = {}
    for label, found in best.items():
        if found is None:
            out[label] = None
            continue
        _, preset, m = found
        # the preset's default knob value is its operating point, read on the calibrated scale
        assert preset.knob is not None
        pts = np.asarray(preset.knob)
        x = float(np.interp(preset.discovery, pts[:, 1], pts[:, 0]))
        out[label] = (preset.model_copy(update={"discovery": round(x, 3)}), m)
    return frontier, out


def _knob_map(curve: list[tuple[float, dict[str, float]]], span: float
              ) -> list[tuple[float, float]]:
    """Knob calibration from one configuration's sweep: knob ``x`` is the internal value at
    which NDCG has dropped by ``x * span`` of its value at 0, linear between measured points
    (so knob 1 falls between the last point below the span and the first past it); when the
    sweep never loses that much, its last point is knob 1."""
    ds = np.array([d for d, _ in curve])
    base = curve[0][1]["ndcg"]
    cost = np.array([base - m["ndcg"] for _, m in curve]) / max(span * base, 1e-12)
    x = np.maximum.accumulate(np.maximum(cost, 0.0))
    pts: list[tuple[float, float]] = [(0.0, 0.0)]
    for xi, di in zip(x[1:], ds[1:], strict=True):
        if xi >= 1.0:
            x0, d0 = pts[-1]
            d1 = d0 + (1.0 - x0) / (xi - x0) * (di - d0)
            pts.append((1.0, round(float(d1), 4)))
            break
        if xi > pts[-1][0] + 1e-4:
            pts.append((round(float(xi), 4), float(di)))
    if pts[-1][0] < 1.0:
        if len(pts) > 1 and pts[-1][1] >= ds[-1]:
            pts[-1] = (1.0, pts[-1][1])
        else:
            pts.append((1.0, float(ds[-1])))
    return pts
