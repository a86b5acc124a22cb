"""Data: the Dataset type, file and real-data loaders, and evaluation splits."""

from serendip.data.bundled import BUNDLED, DATASETS, bundled_path, load_bundled, load_dataset
from serendip.data.dataset import Dataset, TimeQuality
from serendip.data.io import (
    UNKNOWN_ITEMS,
    drop_unknown_items,
    item_filter_mask,
    read_events,
    read_items,
    read_table,
)
from serendip.data.movielens import find_movielens_100k, load_movielens_100k
from serendip.data.obd import find_open_bandit, load_open_bandit
from serendip.data.splits import (
    PROTOCOLS,
    Split,
    cold_item_split,
    leave_last_out,
    make_split,
    random_split,
    rolling_time_splits,
    temporal_split,
    time_split,
    validation_split,
)

__all__ = [
    "Dataset",
    "TimeQuality",
    "read_table",
    "read_events",
    "read_items",
    "drop_unknown_items",
    "item_filter_mask",
    "UNKNOWN_ITEMS",
    "load_movielens_100k",
    "find_movielens_100k",
    "load_open_bandit",
    "find_open_bandit",
    "BUNDLED",
    "DATASETS",
    "bundled_path",
    "load_bundled",
    "load_dataset",
    "Split",
    "time_split",
    "rolling_time_splits",
    "temporal_split",
    "leave_last_out",
    "random_split",
    "cold_item_split",
    "validation_split",
    "make_split",
    "PROTOCOLS",
]
