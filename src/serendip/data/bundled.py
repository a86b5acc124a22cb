"""Real catalogs shipped inside the package, and one loader for every named data set.

``goodbooks`` (books shelved to read, time-ordered) and ``lastfm`` (artists listened to, no
time) live in ``bundled_data/`` in the batch format, so a clone reproduces every figure without
a download; their sources and licences are in ``bundled_data/ATTRIBUTION.md``.
"""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path

from serendip.data.dataset import Dataset
from serendip.data.io import read_table
from serendip.data.movielens import load_movielens_100k
from serendip.errors import ConfigError, DataError

__all__ = ["BUNDLED", "DATASETS", "bundled_path", "load_bundled", "load_dataset"]

log = logging.getLogger(__name__)

#: Data sets whose files ship in the package.
BUNDLED = ("goodbooks", "lastfm")
#: Every name ``load_dataset`` accepts.
DATASETS = ("movielens", *BUNDLED)


def bundled_path(name: str) -> Path:
    """Directory holding ``events.csv.gz`` and ``items.csv.gz`` of a bundled data set."""
    if name not in BUNDLED:
        raise ConfigError(f"unknown bundled data set {name!r}; valid: {', '.join(BUNDLED)}")
    d = Path(str(resources.files("serendip.data") / "bundled_data" / name))
    if not (d / "events.csv.gz").is_file() or not (d / "items.csv.gz").is_file():
        raise DataError(f"bundled data set {name!r} is incomplete: no events/items files in {str(d)!r}")
    return d


def load_bundled(name: str) -> Dataset:
    """Load a bundled data set; ``tags`` ('|'-separated) is its category column.

    goodbooks' ``timestamp`` is a position in a time-sorted log (an order, ``has_time`` True);
    lastfm has no time (``has_time`` False) and its ``rating`` is the play count.
    """
    d = bundled_path(name)
    events = read_table(d / "events.csv.gz", id_columns=("user_id", "item_id"))
    items = read_table(d / "items.csv.gz", id_columns=("item_id",))
    data = Dataset.from_frames(events, items, category_column="tags")
    log.info("loaded bundled %s: %r", name, data)
    return data


def load_dataset(name: str) -> Dataset:
    """Load a named real data set: ``movielens`` (MovieLens-100K), ``goodbooks`` or ``lastfm``."""
    if name == "movielens":
        return load_movielens_100k()
    if name in BUNDLED:
        return load_bundled(name)
    raise ConfigError(f"unknown data set {name!r}; valid: {', '.join(DATASETS)}")
