"""Fitted models and the recommendation pipeline.

``Recommender.fit`` encodes the catalog and trains every base scorer once; a ``Pipeline``
is a preset applied to a fitted Recommender: a hybrid blend of those scorers, candidate
selection, then rerankers.  One fitted model directory serves every preset and every
``discovery`` value, because presets change only blending and re-ranking.
"""

from __future__ import annotations

import json
import logging
import os
import time
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from serendip import __version__
from serendip.component import Component, make_config
from serendip.data.dataset import Dataset
from serendip.errors import ConfigError, ModelFormatError
from serendip.explore.bandit import LinearTS, LinearTSConfig
from serendip.explore.policies import EpsilonSlate, EpsilonSlateConfig
from serendip.models import SCORERS, BatchScorer, Hybrid
from serendip.models._util import row_dots
from serendip.models.retrieval import (
    INDEX_DIR,
    LazyRetriever,
    RetrievalConfig,
    Retriever,
    StoredIndexes,
    resolve_index,
    retrieval_enabled,
)
from serendip.rerank import RERANKERS
from serendip.rerank.base import RELEVANCE_REASONS, row_columns
from serendip.rerank.mmr import VARIETY
from serendip.robust import ProfileDefense
from serendip.text import Encoder, EncoderConfig
from serendip.text.templates import natural_title
from serendip.types import ItemList, Query

__all__ = [
    "FitConfig", "Preset", "PRESETS", "load_preset", "load_fit_config", "preset_toml",
    "Recommender", "Pipeline",
]

log = logging.getLogger(__name__)

PRESETS = ("accurate", "balanced", "discovery", "adaptive")
FORMAT_VERSION = 1
#: Catalogs above this size get the large-catalog default models (no dense item x item ones).
LARGE_CATALOG = 40_000
#: On those catalogs the transition model keeps each item's strongest successors only
#: (``TransitionConfig.max_next``): a request then reads at most ``recent`` x this many
#: entries, where a popular item's full row can hold hundreds of thousands.
LARGE_CATALOG_NEXT = 1_000
#: A shipped preset run on a model without one of its blend members puts that member's weight
#: on the first of these that the model has (large-catalog models have ALS, not EASE).
SUBSTITUTES: dict[str, tuple[str, ...]] = {
    "ease_recent": ("ease", "als"), "ease": ("ease_recent", "als"), "knn": ("ease", "als"),
}
#: Scorers that read the order of each history as time; left out of the default fit when the
#: data has no trustworthy timestamps (see ``Dataset.time_quality``).
ORDER_MODELS = ("ease_recent", "transition")


def default_cache_dir() -> str:
    """Where embeddings are cached unless a fit config says otherwise."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return str(Path(base) / "serendip" / "embeddings")


def _validate(cls: type[BaseModel], values: dict[str, Any], where: str) -> Any:
    try:
        return cls.model_validate(values)
    except ValidationError as e:
        parts = [
            f"{where}.{'.'.join(str(x) for x in err['loc'])}: {err['msg']} (got {err.get('input')!r})"
            for err in e.errors()
        ]
        raise ConfigError("; ".join(parts)) from None


class FitConfig(BaseModel):
    """What ``fit`` trains: the encoder and the base scorers with their hyperparameters."""

    model_config = ConfigDict(extra="forbid")
    encoder: dict[str, Any] = Field(default_factory=lambda: {"cache_dir": default_cache_dir()})
    #: instance name -> hyperparameters; ``type`` names the scorer when the instance name
    #: is not itself a scorer name (e.g. two EASE instances with different recency weighting).
    models: dict[str, dict[str, Any]] = Field(
        default_factory=lambda: {  # type: ignore[arg-type]
            "popularity": {},
            "ease": {"l2": 500.0},
            "ease_recent": {"type": "ease", "l2": 500.0, "half_life": 20.0},
            "knn": {"neighbors": 100, "half_life": 20.0},
            "als": {},
            "semantic": {},
            "textcf": {},
            "transition": {},
        }
    )
    item_template: str | None = None
    category_column: str | None = None
    #: ratings below this value are negative feedback: left out of training and of the user's
    #: profile (so no reason names them), and never recommended back.  "auto": on a star scale
    #: (ratings in [0, 10] in steps of 0.5) below its midpoint, e.g. 1-2 stars of 1-5; other
    #: ratings (play counts...) are all positive.  "off" (or None): every rating is positive.
    negative_below: float | Literal["auto", "off"] | None = "auto"
    #: instead, a rating below the user's own mean rating is negative
    negative_below_user_mean: bool = False
    #: candidate retrieval for large catalogs (``RetrievalConfig``; default: above 20,000 items)
    retrieval: dict[str, Any] = Field(default_factory=dict)
    #: fit-time defence against fake profiles (``serendip.robust.ProfileDefense`` settings;
    #: ``{}`` for its defaults, None: off): flagged profiles are left out of what the models
    #: learn about items, and keep their own history for their own lists
    defense: dict[str, Any] | None = None

    @classmethod
    def default_for(cls, n_items: int, ordered: bool = True) -> FitConfig:
        """The default config, without the dense item x item models above ``LARGE_CATALOG``
        and, when the data has no trustworthy order (``ordered`` False), without the models
        that read history order as time."""
        if n_items <= LARGE_CATALOG:
            models = cls().models
        else:
            models = {"popularity": {}, "als": {}, "semantic": {}, "textcf": {},
                      "transition": {"max_next": LARGE_CATALOG_NEXT}}
        if not ordered:
            models = {k: v for k, v in models.items() if k not in ORDER_MODELS}
        return cls(models=models)

    def for_data(self, data: Dataset) -> FitConfig:
        """This config, with the default models for ``data`` (its size, whether its time can
        be trusted) when no models were given explicitly."""
        if "models" in self.model_fields_set:
            return self
        return self.model_copy(update={
            "models": FitConfig.default_for(data.n_items, _ordered(data)).models})

    def model_post_init(self, __context: Any) -> None:
        for name, values in self.models.items():
            kind = values.get("type", name)
            if kind not in SCORERS:
                raise ConfigError(
                    f"model {name!r} has unknown type {kind!r}; valid: {sorted(SCORERS)}"
                )
            params = {k: v for k, v in values.items() if k != "type"}
            make_config(SCORERS[kind].config_class, params, f"models.{name}")
        _validate(EncoderConfig, self.encoder, "encoder")
        make_config(RetrievalConfig, self.retrieval, "retrieval")
        if self.defense is not None:
            make_config(ProfileDefense, self.defense, "defense")


class Preset(BaseModel):
    """How to blend and re-rank at recommend time (a shipped or user TOML file)."""

    model_config = ConfigDict(extra="forbid")
    name: str
    description: str = ""
    blend: dict[str, float]
    tail_boost: float = Field(0.0, ge=0, le=100)
    #: items without interactions get each collaborative model's score at the rank the text
    #: model gives them (``Hybrid``), so new items are not buried by constant scores
    cold_fill: bool = True
    candidates: int = Field(200, ge=1, le=100_000)
    discovery: float = Field(0.5, ge=0, le=1)
    rerank: list[dict[str, Any]] = Field(default_factory=list)
    #: exploration (``EpsilonSlateConfig``: epsilon, pool, seed); None: lists are deterministic
    explore: dict[str, Any] | None = None
    #: a bandit choosing the list from the candidates and learning online (``LinearTSConfig``);
    #: when set it replaces the rerankers and the exploration stage
    bandit: dict[str, Any] | None = None
    #: calibration of the discovery knob: ``[knob value, internal discovery]`` pairs, both
    #: non-decreasing, from ``[0, 0]`` to ``[1, d]`` (written by ``serendip tune`` so that equal
    #: knob steps cost equal shares of validation accuracy); None: the knob is used as is
    knob: list[tuple[float, float]] | None = None

    @model_validator(mode="after")
    def _check_knob(self) -> Preset:
        if self.knob is None:
            return self
        pts = np.asarray(self.knob, dtype=np.float64)
        ok = (
            pts.ndim == 2 and pts.shape[0] >= 2 and pts.shape[1] == 2
            and np.isfinite(pts).all() and (pts >= 0).all() and (pts <= 1).all()
            and pts[0, 0] == 0.0 and pts[-1, 0] == 1.0
            and (np.diff(pts[:, 0]) > 0).all() and (np.diff(pts[:, 1]) >= 0).all()
        )
        if not ok:
            raise ValueError(
                "knob must be [knob, discovery] pairs in [0, 1], knob strictly increasing from "
                f"0 to 1 and discovery non-decreasing, got {self.knob!r}"
            )
        return self

    def internal_discovery(self, knob: float) -> float:
        """The discovery value the rerankers get for a knob value (identity without a knob)."""
        if self.knob is None:
            return float(knob)
        pts = np.asarray(self.knob, dtype=np.float64)
        return float(np.interp(knob, pts[:, 0], pts[:, 1]))


def preset_toml(preset: Preset, header: Sequence[str] = ()) -> str:
    """A preset as TOML (``load_preset`` reads it back equal), ``header`` as comment lines."""
    import tomli_w

    values = preset.model_dump(exclude_none=True)
    values.pop("name", None)
    lines = [f"# {h}" for h in header]
    return "\n".join(lines) + ("\n" if lines else "") + tomli_w.dumps(values)


def load_preset(name_or_path: str) -> Preset:
    """A shipped preset by name (accurate, balanced, discovery) or a TOML file path."""
    p = Path(name_or_path)
    if p.suffix == ".toml" and p.exists():
        text = p.read_text()
    elif name_or_path in PRESETS:
        text = resources.files("serendip.presets").joinpath(f"{name_or_path}.toml").read_text()
    elif p.suffix == ".toml":
        raise ConfigError(f"preset file {name_or_path!r} does not exist")
    else:
        raise ConfigError(
            f"unknown preset {name_or_path!r}; use one of {', '.join(PRESETS)} or a .toml file"
        )
    try:
        values = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"preset {name_or_path!r} is not valid TOML: {e}") from None
    values.setdefault("name", p.stem if p.suffix == ".toml" else name_or_path)
    preset: Preset = _validate(Preset, values, f"preset {name_or_path!r}")
    if preset.explore is not None:
        make_config(EpsilonSlateConfig, preset.explore, f"preset {preset.name!r}: explore")
    if preset.bandit is not None:
        make_config(LinearTSConfig, preset.bandit, f"preset {preset.name!r}: bandit")
    for stage in preset.rerank:
        if stage.get("name") not in RERANKERS:
            raise ConfigError(
                f"preset {preset.name!r}: unknown reranker {stage.get('name')!r}; "
                f"valid: {sorted(RERANKERS)}"
            )
    return preset


def negative_threshold(data: Dataset, config: FitConfig) -> float | None:
    """The rating below which an interaction is negative feedback (None: no such rating;
    also None under the per-user-mean rule, which has no single threshold)."""
    inter = data.interactions
    if "rating" not in inter.columns or len(inter) == 0 or config.negative_below_user_mean:
        return None
    threshold = config.negative_below
    if threshold == "auto":
        return star_scale_midpoint(inter["rating"].to_numpy(dtype=np.float64))
    return None if threshold is None or threshold == "off" else float(threshold)


def negative_mask(data: Dataset, config: FitConfig) -> np.ndarray:
    """Which interactions are negative feedback under ``config`` (low ratings)."""
    inter = data.interactions
    if "rating" not in inter.columns or len(inter) == 0:
        return np.zeros(len(inter), dtype=bool)
    r = inter["rating"].to_numpy(dtype=np.float64)
    if config.negative_below_user_mean:
        mean = inter.groupby("user")["rating"].transform("mean").to_numpy(dtype=np.float64)
        return r < mean - 1e-9
    threshold = negative_threshold(data, config)
    return np.zeros(len(inter), dtype=bool) if threshold is None else r < threshold


def star_scale_midpoint(ratings: np.ndarray) -> float | None:
    """The midpoint of a star scale (ratings in [0, 10], steps of 0.5, >= 3 levels), else
    None: counts and other open-ended values are not a scale with a bad end."""
    r = ratings[np.isfinite(ratings)]
    if r.size == 0 or r.min() < 0 or r.max() > 10 or np.unique(r).size < 3:
        return None
    if not np.allclose(r * 2, np.round(r * 2)):
        return None
    return float((r.min() + r.max()) / 2)


def load_fit_config(path: str | None) -> FitConfig:
    if path is None:
        return FitConfig()
    try:
        values = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path!r}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config {path!r} is not valid TOML: {e}") from None
    return _validate(FitConfig, values, f"config {path!r}")


class Recommender:
    """A fitted model: the training Dataset (with item vectors) and the trained scorers."""

    def __init__(self, data: Dataset, scorers: dict[str, BatchScorer], config: FitConfig,
                 presets: Mapping[str, Preset] | None = None, tuning: dict[str, Any] | None = None,
                 negatives: pd.DataFrame | None = None, negative_below: float | None = None):
        self.data = data
        #: ratings below this were negative feedback at fit time; the service applies it to
        #: rating events that arrive later
        self.negative_below = negative_below
        self.scorers = scorers
        self.config = config
        #: (user, item) pairs of negative feedback (low ratings): not in ``data``, never
        #: recommended back to that user
        self.negatives = (negatives if negatives is not None
                          else pd.DataFrame({"user": [], "item": []}, dtype=np.int64))
        self._negative_rows = sp.csr_matrix(
            (np.ones(len(self.negatives), dtype=bool),
             (self.negatives["user"].to_numpy(np.int64), self.negatives["item"].to_numpy(np.int64))),
            shape=(data.n_users, data.n_items),
        )
        #: presets tuned for this catalog (``fit --tune``); they replace the shipped ones of the
        #: same name in ``pipeline``.  ``tuning`` says how they were chosen.
        self.presets: dict[str, Preset] = dict(presets or {})
        self.tuning = tuning
        #: FAISS indexes saved with the model (``load``), used by the first retriever built
        self._stored_indexes: StoredIndexes | None = None
        self.use_retrieval(make_config(RetrievalConfig, config.retrieval, "retrieval"))

    def trending(self) -> np.ndarray:
        """What a person with no history is shown first: ``log(1 + recent popularity)``.

        With real time, each interaction counts ``0.5 ** (age / half_life)`` with the age
        measured from the latest event and the half-life a tenth of the data's time span
        (items popular lately rank first); without time, every interaction counts 1.
        Computed once per model.
        """
        got = getattr(self, "_trending", None)
        if got is None:
            inter = self.data.interactions
            weights = np.ones(len(inter))
            if self.data.has_time and len(inter):
                t = inter["timestamp"].to_numpy(np.float64)
                span = float(t.max() - t.min())
                if span > 0:
                    weights = 0.5 ** ((t.max() - t) / (0.1 * span))
            counts = np.bincount(inter["item"].to_numpy(np.int64), weights=weights,
                                 minlength=self.data.n_items)
            got = np.log1p(counts * (len(inter) / max(float(weights.sum()), 1e-12)))
            self._trending = got
        return got

    def negative_items(self, user: int | None) -> np.ndarray:
        """Items the user gave negative feedback on (empty for unknown users)."""
        if user is None or self._negative_rows.nnz == 0 or user >= self._negative_rows.shape[0]:
            return np.zeros(0, dtype=np.int64)
        row = self._negative_rows
        return row.indices[row.indptr[user]:row.indptr[user + 1]].astype(np.int64)

    def use_retrieval(self, config: RetrievalConfig) -> None:
        """Set when (and how) pipelines retrieve candidates instead of scoring every item."""
        self.retrieval = config
        self._retriever = LazyRetriever(self.scorers, self.data.n_items, config,
                                        self._cold_items(), self._stored_indexes)

    def _cold_items(self) -> np.ndarray | None:
        pop = self.data.item_popularity
        return np.flatnonzero(pop == 0) if np.any(pop > 0) else None

    def _save_indexes(self, directory: Path) -> None:
        """Large catalogs: build the FAISS indexes of the model's own retrieval settings (or
        reuse the retriever already built with them) and write them, for ``load`` to read
        back instead of building again.  Nothing is built when they would hold no FAISS
        index, and a build that fails is logged and skipped: they are derived data."""
        config = make_config(RetrievalConfig, self.config.retrieval, "retrieval")
        vectors = self.data.item_vectors
        if (vectors is None or not retrieval_enabled(config, self.data.n_items)
                or vectors.shape[0] * vectors.shape[1] <= config.exact_flops
                or resolve_index(config.index) != "faiss"):
            return
        try:
            retriever = (self.retriever() if config == self.retrieval else
                         Retriever(self.scorers, self.data.n_items, config, self._cold_items()))
            if retriever is not None:
                retriever.save_indexes(directory)
        except (RuntimeError, ValueError, MemoryError) as e:
            log.warning("the retrieval indexes were not saved with the model (%s); loading it "
                        "will build them", e)

    def retriever(self) -> Retriever | None:
        """The candidate retriever (built on first use), or None if every item is scored."""
        got = self._retriever.get()
        if got is not None:
            self._stored_indexes = None  # read by the retriever just built
        return got

    @classmethod
    def fit(cls, data: Dataset, config: FitConfig | None = None, *, progress: bool = True,
            encoder: Encoder | None = None,
            trainer: Callable[[BatchScorer, Dataset], None] | None = None) -> Recommender:
        """Fit every model of ``config`` on ``data``.  ``encoder`` encodes the item texts when
        ``data`` has no vectors (e.g. ``serendip.distributed.RayEncoder``); ``trainer(scorer,
        data)`` trains each model (default: ``scorer.train(data)``; e.g.
        ``serendip.distributed.RayTrainer``, which shards ALS on a Ray cluster)."""
        config = (config or FitConfig()).for_data(data)
        # the defence reads every rating, so it looks before negatives are set aside
        defense = (make_config(ProfileDefense, config.defense, "defense")
                   if config.defense is not None else None)
        flagged = defense.detect(data) if defense is not None else None
        if flagged is not None:
            log.info("defence: %d of %d profiles flagged as suspicious; left out of what the "
                     "models learn", int(flagged.suspicious.sum()), data.n_users)
        neg = negative_mask(data, config)
        threshold = negative_threshold(data, config)
        negatives = None
        if neg.any():
            negatives = data.interactions.loc[neg, ["user", "item"]].reset_index(drop=True)
            data = data.with_interactions(data.interactions[~neg])
            log.info("%d interactions are negative feedback (low ratings): left out of "
                     "training and profiles", int(neg.sum()))
        if data.item_vectors is None:
            enc = encoder or Encoder(EncoderConfig(**config.encoder))
            data = data.with_item_vectors(
                enc.encode_items(data, template=config.item_template, progress=progress)
            )
        train = data
        if defense is not None and flagged is not None:
            train = defense.apply(data, flagged)
        scorers: dict[str, BatchScorer] = {}
        for name, values in config.models.items():
            t0 = time.perf_counter()
            params = {k: v for k, v in values.items() if k != "type"}
            scorer = SCORERS[values.get("type", name)](params)
            if trainer is None:
                scorer.train(train)
            else:
                trainer(scorer, train)
            scorers[name] = scorer
            log.info("trained %s in %.2fs", name, time.perf_counter() - t0)
        return cls(data, scorers, config, negatives=negatives, negative_below=threshold)

    # persistence ----------------------------------------------------------------------
    def save(self, directory: str | Path) -> None:
        """Write the model directory (parquet + npz + json; no pickles).

        Files are written to a sibling temp directory, flushed to disk (each file and the
        directory), and swapped in by two renames whose parent directory is flushed after
        each; a crash at any point leaves either the old model or the new one, and
        ``recover_model_dir`` (called by ``load``) puts back the old one if the crash fell
        between the renames.  A half-written model is never where a good one was.
        """
        final = Path(directory)
        recover_model_dir(final)
        tmp = final.with_name(final.name + ".tmp-writing")
        if tmp.exists():
            _rmtree(tmp)
        tmp.mkdir(parents=True)
        d = self.data
        d.items.to_parquet(tmp / "items.parquet", index=False)
        pd.DataFrame({"user_id": d.user_ids.astype(str)}).to_parquet(tmp / "users.parquet")
        d.interactions.to_parquet(tmp / "interactions.parquet", index=False)
        if len(self.negatives):
            self.negatives.to_parquet(tmp / "negatives.parquet", index=False)
        assert d.item_vectors is not None
        np.save(tmp / "item_vectors.npy", d.item_vectors, allow_pickle=False)
        for name, scorer in self.scorers.items():
            scorer.save(tmp / "components" / name)
        for name, preset in self.presets.items():
            (tmp / "presets").mkdir(exist_ok=True)
            (tmp / "presets" / f"{name}.toml").write_text(preset_toml(preset))
        self._save_indexes(tmp / INDEX_DIR)
        meta = {
            "format": FORMAT_VERSION, "serendip": __version__,
            "fit_config": self.config.model_dump(), "category_column": d.category_column,
            "has_time": bool(getattr(d, "has_time", True)),
            "n_users": d.n_users, "n_items": d.n_items, "n_interactions": len(d.interactions),
            "tuned_presets": sorted(self.presets), "tuning": self.tuning,
            "negative_below": self.negative_below,
        }
        (tmp / "serendip.json").write_text(json.dumps(meta, indent=2))
        _fsync_tree(tmp)
        old = final.with_name(final.name + ".tmp-old")
        if final.exists():
            if not (final / "serendip.json").exists() and any(final.iterdir()):
                _rmtree(tmp)
                raise ModelFormatError(
                    f"refusing to overwrite {str(final)!r}: it is not empty and not a serendip model"
                )
            if old.exists():
                _rmtree(old)
            final.rename(old)
            _fsync_dir(final.parent)
        tmp.rename(final)
        _fsync_dir(final.parent)
        if old.exists():
            _rmtree(old)

    @classmethod
    def load(cls, directory: str | Path) -> Recommender:
        d = Path(directory)
        if d.is_file():
            raise ModelFormatError(f"{str(d)!r} is a file; give the model directory that "
                                   "holds it")
        recover_model_dir(d)
        meta_path = d / "serendip.json"
        if not meta_path.exists():
            raise ModelFormatError(f"{str(d)!r} is not a serendip model directory (no serendip.json)")
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != FORMAT_VERSION:
            raise ModelFormatError(
                f"model format {meta.get('format')!r} in {str(d)!r} is not supported "
                f"(this version reads {FORMAT_VERSION})"
            )
        items = pd.read_parquet(d / "items.parquet")
        users = pd.read_parquet(d / "users.parquet")["user_id"].to_numpy(dtype=object)
        inter = pd.read_parquet(d / "interactions.parquet")
        data = Dataset(
            users, items["item_id"].to_numpy(dtype=object), items, inter, meta["category_column"],
            np.load(d / "item_vectors.npy", allow_pickle=False),
            has_time=bool(meta.get("has_time", True)),
        )
        config = FitConfig.model_validate(meta["fit_config"])
        scorers = {
            name: SCORERS[values.get("type", name)].load(d / "components" / name)  # type: ignore[misc]
            for name, values in config.models.items()
        }
        _share_vectors(data.item_vectors, scorers)
        presets = {
            name: load_preset(str(d / "presets" / f"{name}.toml"))
            for name in meta.get("tuned_presets", [])
        }
        negatives = (pd.read_parquet(d / "negatives.parquet")
                     if (d / "negatives.parquet").exists() else None)
        rec = cls(data, scorers, config, presets, meta.get("tuning"),  # type: ignore[arg-type]
                  negatives, meta.get("negative_below"))
        stored = StoredIndexes.open(d / INDEX_DIR)
        if stored is not None:
            rec._stored_indexes = stored
            rec.use_retrieval(rec.retrieval)
        return rec

    def preset(self, name: str) -> Preset:
        """The preset a name means for this model: its tuned one, else the shipped one (adapted
        to the models it has), else a TOML file path."""
        if name in self.presets:
            return self.presets[name]
        loaded = load_preset(name)
        return adapt_shipped_preset(loaded, self.scorers) if name in PRESETS else loaded

    def pipeline(self, preset: str | Preset = "balanced") -> Pipeline:
        if isinstance(preset, Preset):
            return Pipeline(self, preset)
        return Pipeline(self, self.preset(preset))


def _share_vectors(vectors: np.ndarray | None, scorers: Mapping[str, Component]) -> None:
    """Scorer states holding an exact copy of the catalog's item vectors (semantic's unit
    vectors, when the catalog's already are) are pointed at the catalog's array: one copy in
    memory instead of two, which at a million items of 384 floats is 1.5 GB."""
    if vectors is None:
        return
    for scorer in scorers.values():
        state = scorer._state
        if not state:
            continue
        for key, value in state.items():
            if (value is not vectors and value.shape == vectors.shape
                    and value.dtype == vectors.dtype and np.array_equal(value, vectors)):
                state[key] = vectors


def _ordered(data: Dataset) -> bool:
    """Whether the data's timestamps can be read as time (see ``Dataset.time_quality``)."""
    quality = getattr(data, "time_quality", None)
    return bool(quality.ordered) if quality is not None else True


def _top_allowed(row: np.ndarray, q: Query, allowed: np.ndarray | None, n: int) -> ItemList:
    """The ``n`` best items of a score row, history and items outside ``allowed`` left out.

    Exact ties are broken by a fixed pseudo-random order of the items, not by their index:
    catalogs often number items in order of arrival or popularity, and a model that cannot
    tell items apart (a collaborative model on items nobody has used) must not inherit that
    order as if it were a prediction.
    """
    row = np.array(row, dtype=np.float64)
    row[q.history] = -np.inf
    if allowed is not None:
        row[~allowed] = -np.inf
    order = _tie_order(row.size)
    shuffled = row[order]
    lst = ItemList(order, shuffled)
    return lst.take(np.flatnonzero(np.isfinite(shuffled))).top(n)


_TIE_ORDERS: dict[int, np.ndarray] = {}


def _tie_order(n: int) -> np.ndarray:
    """A fixed permutation of ``n`` items (the same in every process)."""
    got = _TIE_ORDERS.get(n)
    if got is None:
        got = np.random.default_rng(20_011).permutation(n).astype(np.int64)
        if len(_TIE_ORDERS) < 64:
            _TIE_ORDERS[n] = got
    return got


#: A second history item is named in "because you liked A and B" when its cosine to the pick
#: is at least this share of the first one's.
BOTH_NAMED = 0.95
#: A list for a person without history takes items from this many of the top trending ones
#: (at most a fifth of the catalog): variety (maximal marginal relevance on the item vectors)
#: or the preset's rerankers choose among them, so discovery never means the rarest items for
#: someone the model knows nothing about.
COLD_POOL = 50
COLD_VARIETY = 0.3


def with_relevance_rank(lst: ItemList, ranked: ItemList) -> ItemList:
    """``lst`` with field ``relevance_rank``: each item's position (0 = best) in ``ranked``, the
    candidates best first by the blend's relevance; items not among them get its length.  One
    scale for every preset, whatever its rerankers do to the scores."""
    pos = {int(i): p for p, i in enumerate(ranked.items.tolist())}
    ranks = np.fromiter((pos.get(int(i), len(ranked)) for i in lst.items.tolist()),
                        dtype=np.int64, count=len(lst))
    return lst.with_field("relevance_rank", ranks)


def _vary(data: Dataset, lst: ItemList, k: int) -> ItemList:
    """A varied list from trending candidates: greedy maximal marginal relevance with
    ``(1 - COLD_VARIETY) * rank score - COLD_VARIETY * max cosine to the items already picked``,
    so a new person sees popular items that are not all alike."""
    v = data.item_vectors
    n = min(len(lst), COLD_POOL)
    if v is None or n <= 1:
        return lst
    pool = lst.take(np.arange(n))
    vec = np.asarray(v[pool.items], dtype=np.float64)
    vec /= np.maximum(np.linalg.norm(vec, axis=1, keepdims=True), 1e-12)
    rank = 1.0 - np.arange(n) / n  # 1 for the most trending, falling linearly
    picked: list[int] = []
    max_sim = np.full(n, -np.inf)
    for _ in range(min(k, n)):
        value = (1 - COLD_VARIETY) * rank - COLD_VARIETY * np.where(np.isfinite(max_sim),
                                                                    max_sim, 0.0)
        value[picked] = -np.inf
        j = int(np.argmax(value))
        picked.append(j)
        max_sim = np.maximum(max_sim, row_dots(vec, vec[j]))
    return pool.take(np.asarray(picked, dtype=np.int64))


def adapt_shipped_preset(preset: Preset, trained: Mapping[str, Any]) -> Preset:
    """Move the weight of blend members the model lacks (``trained``: the model's members
    by name) onto their ``SUBSTITUTES``; order-reading members without one are dropped.

    Only shipped presets are adapted (a user's preset file is taken as written); the result
    says what was moved in its description.
    """
    blend = dict(preset.blend)
    moved = []
    for name, w in preset.blend.items():
        if name in trained:
            continue
        for alt in SUBSTITUTES.get(name, ()):
            if alt in trained:
                del blend[name]
                blend[alt] = blend.get(alt, 0.0) + w
                moved.append(f"{name} -> {alt}")
                break
        else:
            if name in ORDER_MODELS and any(v > 0 for k, v in blend.items() if k != name):
                del blend[name]  # left out of a fit on data without trustworthy time
                moved.append(f"{name} left out")
    if not moved:
        return preset
    log.info("preset %r: %s (the model has no %s)", preset.name, ", ".join(moved),
             ", ".join(m.split(" ")[0] for m in moved))
    return preset.model_copy(update={
        "blend": blend, "description": f"{preset.description} ({'; '.join(moved)})",
    })


def recover_model_dir(directory: str | Path) -> None:
    """Finish a model swap a crash interrupted: when ``directory`` holds no model but its
    ``.tmp-old`` sibling does (the crash fell between ``save``'s two renames), put it back;
    a complete model beside a leftover ``.tmp-old`` keeps the model and drops the leftover."""
    final = Path(directory)
    old = final.with_name(final.name + ".tmp-old")
    if not (old / "serendip.json").exists():
        return
    if (final / "serendip.json").exists():
        _rmtree(old)
        return
    if final.exists() and not any(final.iterdir()):
        final.rmdir()
    if not final.exists():
        log.warning("restoring the model in %s after an interrupted save", old)
        old.rename(final)
        _fsync_dir(final.parent)


def _fsync_tree(root: Path) -> None:
    """Flush every file under ``root``, then each directory, to stable storage."""
    for dirpath, _dirs, files in os.walk(root, topdown=False):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    """Flush a directory's entries (renames, new files); a no-op where unsupported."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot fsync a directory
        pass
    finally:
        os.close(fd)


def _rmtree(p: Path) -> None:
    import shutil

    shutil.rmtree(p)


class Pipeline:
    """Preset applied to a fitted Recommender: blend -> candidates -> rerankers -> reasons."""

    def __init__(self, rec: Recommender, preset: Preset):
        self.rec = rec
        self.preset = preset
        self.hybrid = Hybrid(rec.scorers, preset.blend, rec.data.item_popularity, preset.tail_boost,
                             cold_fill=preset.cold_fill)
        self.rerankers = []
        for stage in preset.rerank:
            values = {k: v for k, v in stage.items() if k != "name"}
            rr = RERANKERS[stage["name"]](values)
            rr.train(rec.data)
            self.rerankers.append(rr)
        self.explorer = EpsilonSlate(preset.explore or {"epsilon": 0.0})
        self.explorer.train(rec.data)
        self.bandit: LinearTS | None = None
        if preset.bandit is not None:
            self.bandit = LinearTS(preset.bandit)
            self.bandit.train(rec.data)

    def query(self, user_id: str) -> Query:
        """Query for an external user id; unknown users get an empty history (cold start)."""
        u = self.rec.data.user_number(user_id, missing="none")
        if u is None:
            return Query(None)
        return Query(u, self.rec.data.history(u))

    def recommend(self, query: Query, k: int = 10, discovery: float | None = None,
                  candidates: np.ndarray | None = None) -> ItemList:
        return self.recommend_many([query], k, discovery, candidates)[0]

    def recommend_many(
        self, queries: Sequence[Query], k: int = 10, discovery: float | None = None,
        candidates: np.ndarray | None = None, batch_size: int = 256,
        explore: float | None = None,
    ) -> list[ItemList]:
        """Top-k lists, history excluded; ``candidates`` restricts the item pool.

        ``explore`` is the exploration rate epsilon (None: the preset's, 0 without an
        ``[explore]`` section); above 0 some slots show items from the candidates after the
        list, and every item carries its ``propensity`` field (see ``explore.policies``).
        """
        if not isinstance(k, int | np.integer) or k < 1:
            raise ConfigError(f"k must be a positive integer, got {k!r}")
        d = self.preset.discovery if discovery is None else discovery
        if not 0.0 <= d <= 1.0:
            raise ConfigError(f"discovery must be between 0 and 1, got {d}")
        d = self.preset.internal_discovery(d)
        eps = self.explorer.config.epsilon if explore is None else explore
        if not 0.0 <= eps <= 1.0:
            raise ConfigError(f"explore must be between 0 and 1, got {explore}")
        if self.bandit is not None:
            eps = 0.0  # the bandit explores by itself
        n_items = self.rec.data.n_items
        allowed = None
        if candidates is not None:
            allowed = np.zeros(n_items, dtype=bool)
            allowed[candidates] = True
        out: list[ItemList] = []
        n_rank, n_cand = self._pool_sizes(k, eps)
        retriever = self.rec.retriever()
        if retriever is not None:  # large catalog: retrieve candidates, score them exactly
            for q0 in queries:
                q = replace(q0, discovery=d)
                if len(q.history) == 0:
                    lst = _top_allowed(self.rec.trending(), q, self._allowed_for(q, allowed),
                                       n_cand)
                else:
                    lst = self.hybrid.retrieve(q, retriever, n_cand, self._allowed_for(q, allowed))
                out.append(self._finish(q, lst, k, eps, n_rank))
            return out
        for start in range(0, len(queries), batch_size):
            batch = [
                replace(q, discovery=d)
                for q in queries[start : start + batch_size]
            ]
            scores = self._score_many(batch)
            for row, q in zip(scores, batch, strict=True):
                top = _top_allowed(row, q, self._allowed_for(q, allowed), n_cand)
                out.append(self._finish(q, top, k, eps, n_rank))
        return out

    def _score_many(self, queries: Sequence[Query]) -> np.ndarray:
        """The blend's scores; a query without history (a new or anonymous person, about whom
        nothing is known) gets the trending scores instead (``Recommender.trending``)."""
        cold = [n for n, q in enumerate(queries) if len(q.history) == 0]
        if not cold:
            return self.hybrid.score_many(queries)
        warm = [n for n in range(len(queries)) if n not in set(cold)]
        out = np.empty((len(queries), self.rec.data.n_items), dtype=np.float64)
        if warm:
            out[warm] = self.hybrid.score_many([queries[n] for n in warm])
        out[cold] = self.rec.trending()
        return out

    def _allowed_for(self, q: Query, allowed: np.ndarray | None) -> np.ndarray | None:
        """``allowed`` less the items this user gave negative feedback on."""
        neg = self.rec.negative_items(q.user)
        if neg.size == 0:
            return allowed
        mask = np.ones(self.rec.data.n_items, dtype=bool) if allowed is None else allowed.copy()
        mask[neg] = False
        return mask

    def _pool_sizes(self, k: int, eps: float) -> tuple[int, int]:
        """(candidates the rerankers or the bandit see, candidates scored): the second adds
        the exploration pool, so exploring never changes what the rerankers rank."""
        n_rank = max(self.preset.candidates, k) if self.rerankers or self.bandit else k
        n_cand = max(n_rank, k + self.explorer.config.pool) if eps > 0 else n_rank
        return n_rank, n_cand

    def slot_distribution(self, query: Query, k: int = 10, discovery: float | None = None,
                          explore: float | None = None, allowed: np.ndarray | None = None,
                          ) -> tuple[np.ndarray, np.ndarray]:
        """This pipeline's exact distribution over items in each of ``k`` slots, for ``query``.

        Returns ``(items, probs)`` with ``probs[i, p]`` the probability of ``items[i]`` in slot
        ``p`` (columns sum to 1): one-hot for a deterministic list, ``EpsilonSlate``'s marginals
        with exploration, Monte Carlo frequencies for a bandit.  ``allowed`` (a boolean mask)
        restricts the items as serving does.  What off-policy evaluation needs of a target.
        """
        d = self.preset.internal_discovery(
            self.preset.discovery if discovery is None else discovery)
        eps = self.explorer.config.epsilon if explore is None else explore
        if self.bandit is not None:
            eps = 0.0
        q = replace(query, discovery=d)
        n_rank, n_cand = self._pool_sizes(k, eps)
        n_cand = max(n_cand, k + self.explorer.config.pool)  # for the exploration pool below
        retriever = self.rec.retriever()
        allowed = self._allowed_for(q, allowed)
        if retriever is not None and len(q.history):
            cands = self.hybrid.retrieve(q, retriever, n_cand, allowed)
        else:
            cands = _top_allowed(self._score_many([q])[0], q, allowed, n_cand)
        if len(q.history) == 0:  # as _finish: discovery chooses among the trending items
            n_rank = max(k, min(n_rank, COLD_POOL, self.rec.data.n_items // 5))
        if self.bandit is not None:  # Monte Carlo over the bandit's posterior
            return self.bandit.slot_distribution(q, cands.take(np.arange(min(n_rank, len(cands)))), k)
        lst = cands.take(np.arange(min(n_rank, len(cands))))
        if len(q.history) == 0 and not self.rerankers:
            lst = _vary(self.rec.data, lst, k)
        for rr in self.rerankers:
            lst = rr(q, lst, k, record=False)  # a what-if: not a list anyone was shown
        ranked = lst.take(np.arange(min(k, len(lst))))
        return self.explorer.action_dist(ranked, cands, eps)

    def _finish(self, q: Query, candidates: ItemList, k: int, eps: float,
                n_rank: int) -> ItemList:
        """Candidates (best first by the blend) -> rerankers (on the first ``n_rank``) -> top k
        -> reasons -> explore (its pool: the candidates after the list).

        A bandit preset lets the bandit pick the k items instead (with their propensities).
        """
        if len(q.history) == 0:  # nothing known: discovery chooses among the trending items
            n_rank = max(k, min(n_rank, COLD_POOL, self.rec.data.n_items // 5))
        ranked_pool = candidates.take(np.arange(min(n_rank, len(candidates))))
        if self.bandit is not None:
            return with_relevance_rank(self._explain(q, self.bandit(q, ranked_pool, k)),
                                       candidates)
        lst = ranked_pool
        if len(q.history) == 0 and not self.rerankers:
            lst = _vary(self.rec.data, lst, k)
        for rr in self.rerankers:
            lst = rr(q, lst, k)
        lst = self._explain(q, lst.take(np.arange(min(k, len(lst)))))
        if eps > 0:
            lst = self.explorer(q, lst, candidates, eps)
        return with_relevance_rank(lst, candidates)

    def _explain(self, q: Query, lst: ItemList) -> ItemList:
        """Put a data-grounded reason first and make the rerankers' reasons read true.

        With a history: the one or two history items most like the pick (encoder cosine;
        the second is named only when it is nearly as close as the first).  Without one:
        that the item is popular (lately, when the data has time), and no reason that claims
        to know the person's taste.  A pick made for variety says what sets it apart when
        the catalog has categories: "unlike the rest of this list: a documentary".
        """
        if len(lst) == 0:
            return lst
        data = self.rec.data
        rest = [self._reword(q, lst, n, r) for n, r in enumerate(lst.reason_lists())]
        if len(q.history) == 0:
            first = "popular right now" if data.has_time else "popular with many people"
            return lst.with_reasons([[first, *r] for r in rest])
        v = data.item_vectors
        assert v is not None
        recent = np.unique(q.history[-50:])
        sims = np.asarray(np.einsum("ij,kj->ik", v[lst.items], v[recent]),  # as row_dots
                          dtype=np.float64)
        reasons = []
        for row, item, r in zip(sims, lst.items.tolist(), rest, strict=True):
            row = np.where(recent == item, -np.inf, row)
            order = np.argsort(-row, kind="stable")
            names = [natural_title(data.item_title(int(recent[order[0]])))]
            if (len(order) > 1 and np.isfinite(row[order[1]])
                    and row[order[1]] >= BOTH_NAMED * row[order[0]] > 0):
                names.append(natural_title(data.item_title(int(recent[order[1]]))))
            reasons.append([f"because you liked {' and '.join(names)}", *r])
        return lst.with_reasons(reasons)

    def _reword(self, q: Query, lst: ItemList, n: int, reasons: list[str]) -> list[str]:
        out = []
        for r in reasons:
            if r in RELEVANCE_REASONS and len(q.history) == 0:
                continue  # "popular right now" says it; nothing is known of their taste
            if r == VARIETY:
                apart = self._apart(lst, n)
                r = f"{VARIETY}: {apart}" if apart else r
            out.append(r)
        return out

    def _apart(self, lst: ItemList, n: int) -> str | None:
        """What sets item ``n`` apart from the rest of the list: of its categories that no
        other item of the list has, the one most common in the catalog (a shelf name a few
        readers used says little); None when every category is shared or there are none."""
        cats = self.rec.data.item_categories
        if cats is None:
            return None
        names = self.rec.data.category_names
        own = set(row_columns(cats, lst.items[n : n + 1]).tolist())
        others = set(row_columns(cats, np.delete(lst.items, n)).tolist())
        alone = list(own - others)
        if not alone:
            return None
        freq = self._category_frequency()
        best = max(alone, key=lambda c: (freq[c], -c))
        name = names[best].strip()
        plain = all(ch.isalpha() or ch in " '" for ch in name)
        if "genre" not in (self.rec.data.category_column or "").casefold() or not plain:
            return f"tagged \u201c{name}\u201d"
        word = name.casefold() if name[:1].isupper() and name[1:2].islower() else name
        return f"{'an' if word[:1].casefold() in 'aeiou' else 'a'} {word}"

    def _category_frequency(self) -> np.ndarray:
        """Items per category in the catalog (computed once per pipeline)."""
        got = getattr(self, "_cat_freq", None)
        if got is None:
            cats = self.rec.data.item_categories
            got = (np.asarray((cats != 0).sum(axis=0)).ravel() if cats is not None
                   else np.zeros(0))
            self._cat_freq = got
        return got
