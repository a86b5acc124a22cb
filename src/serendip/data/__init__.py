"""Data: the Dataset type, file and MovieLens loaders, and evaluation splits."""

from serendip.data.dataset import Dataset
from serendip.data.io import read_table
from serendip.data.movielens import find_movielens_100k, load_movielens_100k
from serendip.data.obd import find_open_bandit, load_open_bandit
from serendip.data.splits import (
    PROTOCOLS,
    Split,
    cold_item_split,
    leave_last_out,
    make_split,
    temporal_split,
)

__all__ = [
    "Dataset",
    "read_table",
    "load_movielens_100k",
    "find_movielens_100k",
    "load_open_bandit",
    "find_open_bandit",
    "Split",
    "temporal_split",
    "leave_last_out",
    "cold_item_split",
    "make_split",
    "PROTOCOLS",
]
