"""``EngineConfig``: where the engine keeps its model, how it seeds, fits and serves."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from serendip.errors import ConfigError
from serendip.explore.bandit import SHOWN_LIMIT
from serendip.llm.base import GeneratorConfig
from serendip.pipeline import PRESETS, FitConfig, Preset, load_preset

__all__ = ["EngineConfig", "ROLES"]

#: What an instance does about retraining (``EngineConfig.role``).
ROLES = ("primary", "follower")


@dataclass
class EngineConfig:
    """Where the engine keeps its model and how it seeds, fits and serves."""

    data_dir: Path
    fit_config: FitConfig | None = None  # None: the loaded model's config, else the default
    seed_interactions: str | None = None  # seed an empty store from these files ...
    seed_items: str | None = None  # ... instead of MovieLens-100K
    #: the seed files' CSV delimiters (events, items; each found from its header when None)
    #: and text encoding (None: UTF-8), as ``Dataset.from_files`` takes them
    seed_sep: str | None = None
    seed_items_sep: str | None = None
    seed_encoding: str | None = None
    #: seed events on items missing from the seed catalog: "error" (nothing is loaded) or
    #: "drop" (dropped, with a warning giving the count)
    unknown_items: str = "error"
    history_limit: int = 500  # most recent events read per request
    #: most recent impressions a bandit preset's request reads (its ``shown`` feature; 0: none)
    shown_limit: int = SHOWN_LIMIT
    similar_semantic_weight: float = 0.5  # semantic share of the similar-items blend
    #: weight of the person's taste (hybrid z-scores) against the request's text match in
    #: search: the request leads
    search_user_weight: float = 0.3
    warm_encoder: bool = False  # load the encoder in the background once a model is ready
    progress: bool = False  # progress bars (stderr) on the first fit at start
    #: presets beside (or replacing, by name) the shipped ones, e.g. from ``serve --preset``
    presets: tuple[Preset, ...] = ()
    default_preset: str = "balanced"  # used by search and when a request names none
    #: seconds between checks for catalog or event growth that calls for a retrain (None: off)
    refresh_interval: float | None = None
    #: retrain when the store holds items the model lacks, or this many more events (as a
    #: share of the events at the last fit)
    refresh_events: float = 0.1
    #: seconds between checks of the store's catalog version: a deletion made through another
    #: instance on the same store stops being served within about this long (None: off)
    catalog_poll: float | None = 1.0
    #: a model directory several instances share over one store (docs/deployment.md): each
    #: retrain saves a new subdirectory and publishes it as a model version in the store, and
    #: every instance loads the newest version.  None: one model in ``data_dir/model``
    shared_model_dir: Path | None = None
    #: "primary" fits when no model is published yet and retrains by itself (refresh);
    #: "follower" never starts a retrain by itself: it waits for and loads published versions
    #: (a retrain asked of it explicitly, or an erasure's, still runs, under the same lock)
    role: str = "primary"
    #: seconds between checks of the store's newest model version (shared model dir only):
    #: a newer version is loaded in the background and swapped in whole
    model_poll: float | None = 1.0
    #: seconds a superseded model version is kept before its directory is deleted (the newest
    #: two are always kept), so an instance still loading it finishes
    model_grace: float = 600.0
    #: seconds a retrain lock lease lasts without renewal (SQLite; a PostgreSQL advisory lock
    #: ends with its holder's session); the holder renews it every third of this
    lock_ttl: float = 60.0
    #: impressions (with the search text logged with them) older than this many seconds are
    #: deleted by a maintenance pass every ``retention_check`` seconds (None: kept)
    retention: float | None = None
    retention_check: float = 3600.0
    #: when set, user ids are stored and modelled as keyed hashes of the given ids
    #: (HMAC-SHA256 with this key, which is never written to the store)
    user_id_key: bytes | None = None
    #: seconds after an erasure when a second pass removes what other instances on the same
    #: store were still writing about the person (their impression queues flush every 50 ms)
    erase_second_pass: float = 1.0
    bandit_window: float = 86_400.0  # seconds in which a reward event credits a bandit's slot
    bandit_memory: int = 200_000  # shown (user, item) slots remembered for crediting
    #: a text generator (docs/llm.md): prose when a request asks for it, the conversation's
    #: parse and reply, descriptions of thin new items.  None: templates and rules only
    generator: GeneratorConfig | None = None
    #: seconds a request waits for the generator before answering from templates and rules
    generator_deadline: float = 10.0
    #: thin new items waiting for a generated description, at most (more are skipped, logged)
    enrich_queue: int = 1000
    #: an upserted item whose own text is shorter than this many characters is described
    enrich_min_chars: int = 80

    def all_presets(self) -> dict[str, Preset]:
        out = {name: load_preset(name) for name in PRESETS}
        out.update({p.name: p for p in self.presets})
        return out

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ConfigError(f"role must be one of {', '.join(ROLES)}, got {self.role!r}")
        for what in ("model_poll", "model_grace", "lock_ttl"):
            value = getattr(self, what)
            if value is None and what == "model_poll":
                continue
            if not (isinstance(value, int | float) and 0 < value < float("inf")):
                raise ConfigError(f"{what} must be a positive number of seconds, got {value!r}")
        for what in ("history_limit", "shown_limit"):
            value = getattr(self, what)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{what} must be a whole number >= 0, got {value!r}")

    @property
    def model_dir(self) -> Path:
        """Where the single model lives (no shared model directory)."""
        return Path(self.data_dir) / "model"
