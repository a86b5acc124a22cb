"""Experiment runner: models x presets x discovery values on one split, with progress.

Lists rank every item the user has not used, except on the cold-item protocol, where only
the held-out cold items are candidates.  On a time split that full catalog includes the items
first seen after the cut, so the new-item metrics show whether a mixed list ever shows them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from serendip.data.dataset import Dataset
from serendip.data.splits import Split, make_split
from serendip.errors import ConfigError
from serendip.eval.metrics import compute_metrics
from serendip.models import SCORERS
from serendip.pipeline import FitConfig, Pipeline, Preset, Recommender
from serendip.types import Query

__all__ = ["evaluate_pipeline", "run_experiment", "truth_of", "DEFAULT_SWEEP"]

log = logging.getLogger(__name__)

DEFAULT_SWEEP = (0.0, 0.25, 0.5, 0.75, 1.0)


def truth_of(split: Split) -> dict[int, np.ndarray]:
    """Held-out items per test user."""
    t = split.test.sort_values("user", kind="stable")
    users, starts = np.unique(t["user"].to_numpy(), return_index=True)
    items = np.split(t["item"].to_numpy(), starts[1:])
    return {int(u): it for u, it in zip(users, items, strict=True)}


def evaluate_pipeline(
    pipe: Pipeline, split: Split, k: int = 10, discovery: float | None = None,
    truth: dict[int, np.ndarray] | None = None,
) -> dict[str, float]:
    """Recommend for every test user of ``split`` and compute every metric."""
    truth = truth if truth is not None else truth_of(split)
    users = np.fromiter(truth.keys(), dtype=np.int64)
    # the profile is what the model trained on (negative feedback left out); the model
    # shares the split's vocabularies, so indices agree
    queries = [Query(int(u), pipe.rec.data.history(int(u))) for u in users]
    t0 = time.perf_counter()
    lists = pipe.recommend_many(queries, k, discovery, candidates=split.cold_items)
    seconds = time.perf_counter() - t0
    recs = np.full((len(users), k), -1, dtype=np.int64)
    for r, lst in enumerate(lists):
        recs[r, : len(lst)] = lst.items
    m = compute_metrics(recs, users, truth, split.train, k, new_items=split.new_items)
    m["recommend_seconds"] = seconds
    return m


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
    cfg = (fit_config or FitConfig()).for_data(data)
    bad = [m for m in models if m not in SCORERS and m not in cfg.models]
    if bad:
        raise ConfigError(
            f"unknown model(s) {bad}; valid: {sorted(set(SCORERS) | set(cfg.models))}"
        )
    if split is not None and split_kwargs:
        raise ConfigError(
            f"split_kwargs {sorted(split_kwargs)} only apply when the runner makes the split; "
            f"a ready split ({split.name!r}) was given"
        )
    split = split or make_split(data, protocol, **(split_kwargs or {}))
    needed = dict(cfg.models)
    for m in models:
        needed.setdefault(m, {})
    cfg = cfg.model_copy(update={"models": needed})
    t0 = time.perf_counter()
    rec = Recommender.fit(split.train, cfg, progress=progress)
    fit_seconds = time.perf_counter() - t0
    truth = truth_of(split)
    # a name means what it means for this model: its tuned preset, else the shipped one
    # adapted to the models it has, else a preset file
    preset_objs = [p if isinstance(p, Preset) else rec.preset(p) for p in presets]
    jobs: list[tuple[str, str, Preset, float | None]] = []
    for model in models:
        jobs.append(("model", model, Preset(name=model, blend={model: 1.0}), None))
    for p in preset_objs:
        jobs.append(("preset", p.name, p, None))
        if p.rerank:
            for value in sweep:
                jobs.append(("sweep", p.name, p, float(value)))
    rows = []
    for kind, name, preset, d in tqdm(jobs, desc=f"evaluate {protocol}", disable=not progress):
        pipe = Pipeline(rec, preset)
        metrics = evaluate_pipeline(pipe, split, k, d, truth)
        rows.append({
            "protocol": protocol, "split": split.name, "kind": kind, "name": name,
            "discovery": preset.discovery if d is None else d,
            "fit_seconds": fit_seconds, **metrics,
        })
    return pd.DataFrame(rows)
