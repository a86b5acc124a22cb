"""The Dataset: users, items with text, and interactions, with the id<->index maps.

A Dataset is immutable.  Splits and feature attachment return new Datasets that share the
vocabularies, so item index ``i`` means the same item everywhere in one experiment.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from serendip.data.io import (
    _row_locator,
    drop_unknown_items,
    iso_to_seconds,
    parse_ratings,
    parse_timestamps,
    read_events,
    read_items,
)
from serendip.errors import DataError, UnknownIdError

__all__ = ["Dataset", "TimeQuality", "CATEGORY_COLUMNS", "iso_to_seconds"]

log = logging.getLogger(__name__)

#: Item columns recognised as categories (genres) when none is named explicitly.
CATEGORY_COLUMNS = ("genres", "genre", "categories", "category", "class", "tags")


#: Above this share of same-user timestamp ties a warning says that order within a tie is
#: only file order (MovieLens-100K: 76%, ratings entered in bursts within one second).
WARN_TIE_SHARE = 0.5
#: Above this share the order of a history is mostly unknown: the data counts as unordered,
#: and the models that read order as time are left out of the default fit.  Between the two,
#: order-reading models stay and tuning decides how much weight they get.
MAX_TIE_SHARE = 0.9


def _examples(values: np.ndarray | list, n: int = 5) -> str:
    vals = list(values)[:n]
    return ", ".join(repr(v) for v in vals)


@dataclass(frozen=True)
class TimeQuality:
    """How far a Dataset's timestamps can be trusted as an order of events.

    ``tie_share`` is the share of events whose exact timestamp another event of the same user
    shares; ``ordered`` says histories have a usable order (real time, ties at most half).
    """

    has_time: bool
    tie_share: float
    ordered: bool


def _tie_share(inter: pd.DataFrame) -> float:
    """Share of events that share their exact timestamp with another event of their user."""
    if len(inter) == 0:
        return 0.0
    sizes = inter.groupby(["user", "timestamp"], sort=False)["item"].transform("size")
    return float((sizes.to_numpy() > 1).mean())


@dataclass(frozen=True, eq=False)
class Dataset:
    """Interactions over a fixed user and item vocabulary.

    ``interactions`` has integer columns ``user`` and ``item`` (indices), float ``timestamp``
    (row order when the source had none) and optional float ``rating``.  ``items`` is the
    catalog, one row per item index, with ``item_id`` and every text column.
    Duplicate (user, item) rows are collapsed to the latest one (by timestamp, then file order).

    ``has_time`` says whether ``timestamp`` is real time (or at least a true order of events).
    It is False when the source had no timestamp column and the row order stands in for it:
    then time-based splits refuse the data and order-aware models should stay off, because
    file order is not time.  ``time_quality`` adds how tied the timestamps are.
    """

    user_ids: np.ndarray
    item_ids: np.ndarray
    items: pd.DataFrame
    interactions: pd.DataFrame
    category_column: str | None = None
    item_vectors: np.ndarray | None = None
    has_time: bool = True

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_frames(
        cls,
        interactions: pd.DataFrame,
        items: pd.DataFrame | None = None,
        *,
        category_column: str | None = None,
        users: np.ndarray | list[str] | None = None,
        unknown_items: str = "error",
        source: str | None = None,
    ) -> Dataset:
        """Validate raw frames (external string ids) and build a Dataset.

        ``unknown_items`` says what events on items missing from ``items`` do: ``"error"``
        (the default) raises naming how many and some of them, ``"drop"`` leaves them out
        with a warning.  ``source`` names where the events came from (a file name) in errors
        and warnings; with it, collapsing repeated (user, item) pairs is a warning too.
        """
        if not isinstance(interactions, pd.DataFrame):
            raise DataError(f"interactions must be a DataFrame, got {type(interactions).__name__}")
        missing = [c for c in ("user_id", "item_id") if c not in interactions.columns]
        if missing:
            raise DataError(
                f"interactions are missing column(s) {missing}; found {list(interactions.columns)}"
            )
        if len(interactions) == 0:
            raise DataError("interactions are empty: at least one (user_id, item_id) row is needed")
        inter = interactions.reset_index(drop=True)
        where = _row_locator(source, None)
        for c in ("user_id", "item_id"):
            empty = inter[c].isna().to_numpy()
            if empty.any():
                bad = int(empty.sum())
                raise DataError(
                    f"column {c!r} has {bad} empty value(s) (first at "
                    f"{where(int(np.flatnonzero(empty)[0]))}); every row needs an id"
                )
        inter = inter.assign(user_id=inter["user_id"].astype(str),
                             item_id=inter["item_id"].astype(str))
        if "timestamp" in inter.columns:
            inter["timestamp"] = parse_timestamps(inter["timestamp"], where=where).to_numpy()
            has_time = True
        else:
            inter["timestamp"] = np.arange(len(inter), dtype=np.float64)
            has_time = False
        if "rating" in inter.columns:
            inter["rating"] = parse_ratings(inter["rating"], where=where).to_numpy()

        if items is None:
            item_ids = pd.unique(inter["item_id"])
            items_df = pd.DataFrame({"item_id": item_ids})
        else:
            if "item_id" not in items.columns:
                raise DataError(f"items are missing column 'item_id'; found {list(items.columns)}")
            if len(items) == 0:
                raise DataError("items are empty: at least one item is needed")
            items_df = items.copy()
            items_df["item_id"] = items_df["item_id"].astype(str)
            dup = items_df["item_id"].duplicated()
            if dup.any():
                raise DataError(
                    f"items have {int(dup.sum())} duplicate item_id value(s), e.g. "
                    f"{_examples(items_df.loc[dup, 'item_id'].unique())}"
                )
            inter = drop_unknown_items(inter, items_df["item_id"], unknown_items=unknown_items,
                                       source=source or "interactions").reset_index(drop=True)
            if len(inter) == 0:
                raise DataError(
                    f"{source or 'interactions'}: no events are left on catalog items"
                )
        items_df = items_df.reset_index(drop=True)
        item_ids_arr = items_df["item_id"].to_numpy(dtype=object)
        item_index = pd.Index(item_ids_arr)

        if users is None:
            user_ids_arr = np.asarray(pd.unique(inter["user_id"]), dtype=object)
        else:
            user_ids_arr = np.asarray([str(u) for u in users], dtype=object)
        user_index = pd.Index(user_ids_arr)
        uidx = user_index.get_indexer(pd.Index(inter["user_id"]))
        if (uidx < 0).any():
            u = inter.loc[uidx < 0, "user_id"].unique()
            raise UnknownIdError(f"interactions reference unknown user id(s), e.g. {_examples(u)}")
        iidx = item_index.get_indexer(pd.Index(inter["item_id"]))

        out = pd.DataFrame(
            {"user": uidx.astype(np.int64), "item": iidx.astype(np.int64),
             "timestamp": inter["timestamp"].to_numpy()}
        )
        if "rating" in inter.columns:
            out["rating"] = inter["rating"].to_numpy()
        out["_order"] = np.arange(len(out))
        before = len(out)
        out = (
            out.sort_values(["user", "timestamp", "_order"], kind="stable")
            .drop_duplicates(["user", "item"], keep="last")
            .drop(columns="_order")
            .reset_index(drop=True)
        )
        if len(out) < before:
            n = before - len(out)
            log.log(
                logging.WARNING if source else logging.INFO,
                "%s%d repeated (user, item) %s collapsed to the latest event",
                f"{source}: " if source else "", n, "row" if n == 1 else "rows",
            )

        if category_column is None:
            category_column = next((c for c in CATEGORY_COLUMNS if c in items_df.columns), None)
        elif category_column not in items_df.columns:
            raise DataError(
                f"category column {category_column!r} is not an item column; "
                f"found {list(items_df.columns)}"
            )
        if not has_time:
            log.warning(
                "no timestamp column: row order is not time; recency and sequence models will "
                "be switched off"
            )
        else:
            ties = _tie_share(out)
            if ties > WARN_TIE_SHARE:
                log.warning(
                    "timestamps are heavily tied: %.0f%% of events share their timestamp with "
                    "another event of the same user; order within a tie is file order%s",
                    100 * ties,
                    "; recency and sequence models will be switched off"
                    if ties > MAX_TIE_SHARE else "",
                )
        return cls(
            user_ids_arr, item_ids_arr, items_df, out, category_column, has_time=has_time
        )

    @classmethod
    def from_files(
        cls,
        interactions: str | Path,
        items: str | Path | None = None,
        *,
        category_column: str | None = None,
        unknown_items: str = "error",
        sep: str | None = None,
        encoding: str | None = None,
        items_sep: str | None = None,
    ) -> Dataset:
        """Read interactions (``user_id,item_id[,timestamp][,rating]``) and an item catalog.

        Both go through ``read_events`` / ``read_items``: ``sep`` is the events file's CSV
        delimiter and ``items_sep`` the items file's, each found from its own header when
        None (the two files need not share one); ``encoding`` (default UTF-8) is both files';
        ``unknown_items`` as in ``from_frames``.
        """
        inter = read_events(interactions, sep=sep, encoding=encoding)
        items_df = (None if items is None
                    else read_items(items, sep=items_sep, encoding=encoding))
        return cls.from_frames(inter, items_df, category_column=category_column,
                               unknown_items=unknown_items, source=Path(interactions).name)

    # ---------------------------------------------------------------- derived views
    @property
    def n_users(self) -> int:
        return int(len(self.user_ids))

    @property
    def n_items(self) -> int:
        return int(len(self.item_ids))

    @cached_property
    def user_index(self) -> pd.Index:
        return pd.Index(self.user_ids)

    @cached_property
    def item_index(self) -> pd.Index:
        return pd.Index(self.item_ids)

    def user_number(self, user_id: str, *, missing: str = "error") -> int | None:
        """Index of an external user id; ``missing="none"`` returns None for unknown ids."""
        loc = self.user_index.get_indexer(pd.Index([str(user_id)]))[0]
        if loc < 0:
            if missing == "none":
                return None
            raise UnknownIdError(f"unknown user id {user_id!r}")
        return int(loc)

    def item_numbers(self, item_ids: list[str] | np.ndarray, *, missing: str = "error") -> np.ndarray:
        """Indices of external item ids; ``missing="drop"`` silently skips unknown ones."""
        ids = [str(i) for i in item_ids]
        idx = self.item_index.get_indexer(pd.Index(ids))
        if (idx < 0).any():
            if missing == "drop":
                return idx[idx >= 0].astype(np.int64)
            bad = [i for i, j in zip(ids, idx, strict=True) if j < 0]
            raise UnknownIdError(f"unknown item id(s): {_examples(bad)}")
        return idx.astype(np.int64)

    @cached_property
    def matrix(self) -> sp.csr_matrix:
        """Binary user x item interaction matrix (float32)."""
        inter = self.interactions
        m = sp.csr_matrix(
            (np.ones(len(inter), dtype=np.float32), (inter["user"].to_numpy(), inter["item"].to_numpy())),
            shape=(self.n_users, self.n_items),
        )
        m.sum_duplicates()
        m.data[:] = 1.0
        return m

    @cached_property
    def _histories(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        inter = self.interactions.sort_values(["user", "timestamp"], kind="stable")
        users = inter["user"].to_numpy()
        ptr = np.zeros(self.n_users + 1, dtype=np.int64)
        np.add.at(ptr, users + 1, 1)
        ptr = np.cumsum(ptr)
        return ptr, inter["item"].to_numpy(), inter["timestamp"].to_numpy()

    def history(self, user: int) -> np.ndarray:
        """Item indices of one user's interactions, oldest first."""
        ptr, items, _ = self._histories
        return items[ptr[user] : ptr[user + 1]]

    def history_times(self, user: int) -> np.ndarray:
        ptr, _, ts = self._histories
        return ts[ptr[user] : ptr[user + 1]]

    @cached_property
    def time_quality(self) -> TimeQuality:
        """Whether timestamps are real and how tied they are (see ``TimeQuality``)."""
        ties = _tie_share(self.interactions)
        return TimeQuality(
            has_time=self.has_time,
            tie_share=ties,
            ordered=self.has_time and ties <= MAX_TIE_SHARE,
        )

    @cached_property
    def item_popularity(self) -> np.ndarray:
        """Number of distinct users who interacted with each item."""
        return np.asarray(self.matrix.sum(axis=0)).ravel().astype(np.float64)

    @cached_property
    def user_activity(self) -> np.ndarray:
        return np.asarray(self.matrix.sum(axis=1)).ravel().astype(np.float64)

    @cached_property
    def item_categories(self) -> sp.csr_matrix | None:
        """Item x category 0/1 matrix from the category column ('|'-separated), or None."""
        if self.category_column is None:
            return None
        col = self.items[self.category_column].fillna("").astype(str)
        lists = [[t.strip() for t in v.split("|") if t.strip()] for v in col]
        names = sorted({t for lst in lists for t in lst})
        pos = {n: i for i, n in enumerate(names)}
        rows = [i for i, lst in enumerate(lists) for _ in lst]
        cols = [pos[t] for lst in lists for t in lst]
        m = sp.csr_matrix(
            (np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(self.n_items, len(names))
        )
        m.sum_duplicates()
        m.data[:] = 1.0
        return m

    @cached_property
    def category_names(self) -> list[str]:
        if self.category_column is None:
            return []
        col = self.items[self.category_column].fillna("").astype(str)
        return sorted({t.strip() for v in col for t in v.split("|") if t.strip()})

    def item_title(self, item: int) -> str:
        return self._titles[int(item)]

    @cached_property
    def _titles(self) -> list[str]:
        """Each item's first non-empty text of title, name, movie_title, headline, else its id."""
        cols = [c for c in ("title", "name", "movie_title", "headline") if c in self.items.columns]
        values = [self.items[c].tolist() for c in cols]
        out = []
        for n, iid in enumerate(self.items["item_id"].tolist()):
            title = next((v[n] for v in values if isinstance(v[n], str) and v[n]), None)
            out.append(title if title is not None else str(iid))
        return out

    # ---------------------------------------------------------------- new datasets
    def with_interactions(self, interactions: pd.DataFrame) -> Dataset:
        """Same vocabularies and catalog, other interactions (index columns user/item)."""
        return Dataset(
            self.user_ids, self.item_ids, self.items,
            interactions.reset_index(drop=True), self.category_column, self.item_vectors,
            has_time=self.has_time,
        )

    def with_item_vectors(self, vectors: np.ndarray) -> Dataset:
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[0] != self.n_items:
            raise DataError(
                f"item vectors must have shape ({self.n_items}, d), got {vectors.shape}"
            )
        return Dataset(
            self.user_ids, self.item_ids, self.items, self.interactions,
            self.category_column, vectors, has_time=self.has_time,
        )

    def describe(self) -> str:
        """Its size in words, for people: '943 users, 1,682 items and 100,000 interactions'."""

        def n(count: int, word: str) -> str:
            return f"{count:,} {word}{'' if count == 1 else 's'}"

        return (f"{n(self.n_users, 'user')}, {n(self.n_items, 'item')} and "
                f"{n(len(self.interactions), 'interaction')}"
                f"{'' if self.has_time else ' (no timestamps)'}")

    def __repr__(self) -> str:
        return (
            f"Dataset({self.n_users} users, {self.n_items} items, "
            f"{len(self.interactions)} interactions{'' if self.has_time else ', no time'})"
        )
