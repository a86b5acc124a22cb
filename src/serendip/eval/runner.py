"""Experiment runner: models x presets x discovery values on one split, with progress.

Lists rank every item the user has not used, except on the cold-item protocol, where only
the held-out cold items are candidates.  On a time split that full catalog includes the items
first seen after the cut, so the new-item metrics show whether a mixed list ever shows them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from serendip.data.dataset import Dataset
from serendip.data.splits import Split, make_split
from serendip.errors import ConfigError
from serendip.eval.metrics import compute_metrics
from serendip.models import SCORERS
from serendip.pipeline import FitConfig, Pipeline, Preset, Recommender, _top_allowed
from serendip.types import ItemList, Query

__all__ = [
    "evaluate_pipeline", "run_experiment", "sweep_knob", "truth_of", "DEFAULT_SWEEP",
    "DENSE_SWEEP",
]

log = logging.getLogger(__name__)

#: knob values each re-ranking preset is evaluated at: steps of 0.1, dense enough that a
#: sudden drop of accuracy (a cliff) shows between two neighbouring points
DEFAULT_SWEEP = tuple(round(0.1 * i, 1) for i in range(11))
#: steps of 0.05, for the protocol a decision is read from
DENSE_SWEEP = tuple(round(0.05 * i, 2) for i in range(21))


def truth_of(split: Split) -> dict[int, np.ndarray]:
    """Held-out items per test user."""
    t = split.test.sort_values("user", kind="stable")
    users, starts = np.unique(t["user"].to_numpy(), return_index=True)
    items = np.split(t["item"].to_numpy(), starts[1:])
    return {int(u): it for u, it in zip(users, items, strict=True)}


def _queries(rec: Recommender, truth: dict[int, np.ndarray]) -> tuple[np.ndarray, list[Query]]:
    users = np.fromiter(truth.keys(), dtype=np.int64)
    # the profile is what the model trained on (negative feedback left out); the model
    # shares the split's vocabularies, so indices agree
    return users, [Query(int(u), rec.data.history(int(u))) for u in users]


def _metrics(lists: Sequence[ItemList], users: np.ndarray, truth: dict[int, np.ndarray],
             split: Split, k: int) -> dict[str, float]:
    recs = np.full((len(users), k), -1, dtype=np.int64)
    for r, lst in enumerate(lists):
        recs[r, : len(lst)] = lst.items
    return compute_metrics(recs, users, truth, split.train, k, new_items=split.new_items)


def evaluate_pipeline(
    pipe: Pipeline, split: Split, k: int = 10, discovery: float | None = None,
    truth: dict[int, np.ndarray] | None = None,
) -> dict[str, float]:
    """Recommend for every test user of ``split`` and compute every metric."""
    truth = truth if truth is not None else truth_of(split)
    users, queries = _queries(pipe.rec, truth)
    t0 = time.perf_counter()
    lists = pipe.recommend_many(queries, k, discovery, candidates=split.cold_items)
    seconds = time.perf_counter() - t0
    m = _metrics(lists, users, truth, split, k)
    m["recommend_seconds"] = seconds
    return m


def sweep_knob(
    rec: Recommender, preset: Preset, split: Split, values: Sequence[float], k: int = 10,
    truth: dict[int, np.ndarray] | None = None,
) -> list[dict[str, float]]:
    """Every metric of ``preset`` at each discovery-knob value of ``values``, in order.

    The lists are those of ``evaluate_pipeline`` on a fresh ``Pipeline`` per value (fresh
    reranker memory), computed faster: the blend's scores and candidate pools do not depend
    on the knob, so they are made once and only the re-ranking runs per value.  A preset
    that retrieves from an index or lets a bandit choose is evaluated value by value.
    ``recommend_seconds`` of a value counts the shared scoring too.
    """
    values = [float(v) for v in values]
    bad = [v for v in values if not 0.0 <= v <= 1.0]
    if bad:
        raise ConfigError(f"knob values must be between 0 and 1, got {bad}")
    truth = truth if truth is not None else truth_of(split)
    base = Pipeline(rec, preset)
    if rec.retriever() is not None or base.bandit is not None:
        return [evaluate_pipeline(Pipeline(rec, preset), split, k, v, truth) for v in values]
    if not isinstance(k, int | np.integer) or k < 1:
        raise ConfigError(f"k must be a positive integer, got {k!r}")
    users, queries = _queries(rec, truth)
    eps = base.explorer.config.epsilon
    n_rank, n_cand = base._pool_sizes(k, eps)
    allowed = None
    if split.cold_items is not None:
        allowed = np.zeros(rec.data.n_items, dtype=bool)
        allowed[split.cold_items] = True
    t0 = time.perf_counter()
    pools: list[ItemList] = []
    for start in range(0, len(queries), 256):
        batch = queries[start : start + 256]
        for row, q in zip(base.hybrid.score_many(batch), batch, strict=True):
            pools.append(_top_allowed(row, q, base._allowed_for(q, allowed), n_cand))
    shared = time.perf_counter() - t0
    out = []
    for v in values:
        pipe = Pipeline(rec, preset)
        d = preset.internal_discovery(v)
        t0 = time.perf_counter()
        lists = [
            pipe._finish(replace(q, discovery=d), pool, k, eps, n_rank)
            for q, pool in zip(queries, pools, strict=True)
        ]
        seconds = time.perf_counter() - t0
        m = _metrics(lists, users, truth, split, k)
        m["recommend_seconds"] = shared + seconds
        out.append(m)
    return out


def experiment_config(data: Dataset, models: Sequence[str],
                      fit_config: FitConfig | None) -> FitConfig:
    """The fit config of an experiment: ``fit_config`` (or the default) for ``data``, with
    every model measured on its own added to what it fits; unknown names are refused."""
    cfg = (fit_config or FitConfig()).for_data(data)
    bad = [m for m in models if m not in SCORERS and m not in cfg.models]
    if bad:
        raise ConfigError(
            f"unknown model(s) {bad}; valid: {sorted(set(SCORERS) | set(cfg.models))}"
        )
    needed = dict(cfg.models)
    for m in models:
        needed.setdefault(m, {})
    return cfg.model_copy(update={"models": needed})


def experiment_jobs(rec: Recommender, models: Sequence[str], presets: Sequence[str | Preset]
                    ) -> list[tuple[str, str, Preset]]:
    """What an experiment lists: ("model", name, its own preset) for each model, then
    ("preset", name, preset) and, when it re-ranks, ("sweep", name, preset) for each preset."""
    # a name means what it means for this model: its tuned preset, else the shipped one
    # adapted to the models it has, else a preset file
    preset_objs = [p if isinstance(p, Preset) else rec.preset(p) for p in presets]
    # a model measured as itself: no cold fill borrowed from the text model
    jobs = [("model", m, Preset(name=m, blend={m: 1.0}, cold_fill=False)) for m in models]
    for p in preset_objs:
        jobs.append(("preset", p.name, p))
        if p.rerank:
            jobs.append(("sweep", p.name, p))
    return jobs


def run_experiment(
    data: Dataset,
    protocol: str,
    models: Sequence[str] = ("popularity", "ease", "als"),
    presets: Sequence[str | Preset] = ("accurate", "balanced", "discovery"),
    *,
    k: int = 10,
    sweep: Sequence[float] = DEFAULT_SWEEP,
    fit_config: FitConfig | None = None,
    split: Split | None = None,
    split_kwargs: dict[str, Any] | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """One row per (model or preset, discovery value) with every metric.

    ``data`` should already carry item vectors (encode once, outside the loop); they are
    derived from item text only, so sharing them between train and test leaks nothing.
    ``protocol`` names the split (see ``serendip.data.PROTOCOLS``) and ``split_kwargs`` are
    passed to it, e.g. ``{"cut": "2020-06-01"}`` for ``time``; or pass a ready ``split``.
    """
    cfg = experiment_config(data, models, fit_config)
    if split is not None and split_kwargs:
        raise ConfigError(
            f"split_kwargs {sorted(split_kwargs)} only apply when the runner makes the split; "
            f"a ready split ({split.name!r}) was given"
        )
    split = split or make_split(data, protocol, **(split_kwargs or {}))
    t0 = time.perf_counter()
    rec = Recommender.fit(split.train, cfg, progress=progress)
    fit_seconds = time.perf_counter() - t0
    truth = truth_of(split)
    jobs = experiment_jobs(rec, models, presets)
    rows = []
    bar = tqdm(total=sum(len(sweep) if kind == "sweep" else 1 for kind, _, _ in jobs),
               desc=f"evaluate {protocol}", disable=not progress)
    for kind, name, preset in jobs:
        if kind == "sweep":
            found = sweep_knob(rec, preset, split, sweep, k, truth)
            points = list(zip([float(v) for v in sweep], found, strict=True))
        else:
            points = [(preset.discovery, evaluate_pipeline(Pipeline(rec, preset), split, k,
                                                           None, truth))]
        for d, metrics in points:
            rows.append({
                "protocol": protocol, "split": split.name, "kind": kind, "name": name,
                "discovery": d, "k": k, "fit_seconds": fit_seconds, **metrics,
            })
        bar.update(len(points))
    bar.close()
    return pd.DataFrame(rows)
