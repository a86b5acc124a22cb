"""One exception hierarchy for the whole engine.

Every message names the bad value and, where it helps, what would have been valid.
"""

from __future__ import annotations

__all__ = [
    "SerendipError",
    "ConfigError",
    "DataError",
    "UnknownIdError",
    "NotTrainedError",
    "ModelFormatError",
    "StoreError",
]


class SerendipError(Exception):
    """Base class of every error raised on purpose by serendip."""


class ConfigError(SerendipError, ValueError):
    """A configuration value, preset or command-line option is invalid."""


class DataError(SerendipError, ValueError):
    """Input data is malformed: missing columns, empty files, bad types."""


class UnknownIdError(DataError):
    """A user or item id that the dataset or model does not know."""


class NotTrainedError(SerendipError, RuntimeError):
    """A component was used before ``train`` was called."""


class ModelFormatError(SerendipError, ValueError):
    """A saved model directory is missing files or was written by an incompatible version."""


class StoreError(SerendipError, RuntimeError):
    """The store cannot be used: closed, unreachable, or holding a schema newer than this code."""
