"""MovieLens-100K: recbole's atomic files (shipped in its wheel) or the GroupLens layout."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd

from serendip.data.dataset import Dataset
from serendip.errors import DataError

__all__ = ["load_movielens_100k", "find_movielens_100k"]

_GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
]


def find_movielens_100k() -> Path:
    """Directory of MovieLens-100K inside the installed recbole package (read, never imported)."""
    spec = importlib.util.find_spec("recbole")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "MovieLens-100K not found: install it with `pip install --no-deps recbole==1.2.1` "
            "or pass the directory of u.data/u.item"
        )
    d = Path(next(iter(spec.submodule_search_locations))) / "dataset_example" / "ml-100k"
    if not (d / "ml-100k.inter").exists():
        raise DataError(f"MovieLens-100K files missing in {str(d)!r}")
    return d


def _read_atomic(path: Path) -> pd.DataFrame:
    """recbole atomic file: tab separated, header fields typed as ``name:type``."""
    df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    df.columns = [c.split(":")[0] for c in df.columns]
    return df


def load_movielens_100k(path: str | Path | None = None) -> Dataset:
    """Load ML-100K with items titled ``title``, ``year`` and ``genres`` ('|'-separated)."""
    d = Path(path) if path is not None else find_movielens_100k()
    if (d / "ml-100k.inter").exists():
        inter = _read_atomic(d / "ml-100k.inter")
        items = _read_atomic(d / "ml-100k.item")
        items = pd.DataFrame(
            {
                "item_id": items["item_id"],
                "title": items["movie_title"],
                "year": items["release_year"],
                # recbole writes genres as a space-separated token sequence; "Film-Noir" etc.
                # contain no spaces, but "Children's" does not either, so a split is exact.
                "genres": items["class"].str.split().str.join("|"),
            }
        )
    elif (d / "u.data").exists():
        inter = pd.read_csv(
            d / "u.data", sep="\t", names=["user_id", "item_id", "rating", "timestamp"], dtype=str
        )
        raw = pd.read_csv(d / "u.item", sep="|", header=None, encoding="latin-1", dtype=str)
        flags = raw.iloc[:, 5:24].astype(int).to_numpy()
        genres = ["|".join(g for g, f in zip(_GENRES, row, strict=True) if f) for row in flags]
        title_year = raw[1].str.extract(r"^(.*?)\s*(?:\((\d{4})\))?\s*$")
        items = pd.DataFrame(
            {"item_id": raw[0], "title": title_year[0], "year": title_year[1].fillna(""),
             "genres": genres}
        )
    else:
        raise DataError(
            f"no MovieLens-100K files in {str(d)!r}: expected ml-100k.inter/.item or u.data/u.item"
        )
    inter = inter[["user_id", "item_id", "rating", "timestamp"]].copy()
    inter["rating"] = inter["rating"].astype(np.float64)
    inter["timestamp"] = inter["timestamp"].astype(np.float64)
    return Dataset.from_frames(inter, items, category_column="genres")
