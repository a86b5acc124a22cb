"""Reading tables from CSV / Parquet / JSONL with ids kept exactly as written.

CSV, TSV and JSONL may also be compressed (``events.csv.gz``); the compression is taken
from the last suffix.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from serendip.errors import DataError

__all__ = ["read_table", "TABLE_SUFFIXES", "COMPRESSION_SUFFIXES"]

TABLE_SUFFIXES = (".csv", ".tsv", ".parquet", ".pq", ".jsonl", ".json", ".ndjson")
#: Compressions pandas reads by itself, for the text formats (Parquet compresses internally).
COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz", ".zst")


def _table_suffix(p: Path) -> tuple[str, str]:
    """(format suffix, compression suffix or ""), e.g. ('.csv', '.gz') for events.csv.gz."""
    suffixes = [s.lower() for s in p.suffixes]
    if len(suffixes) >= 2 and suffixes[-1] in COMPRESSION_SUFFIXES:
        return suffixes[-2], suffixes[-1]
    return p.suffix.lower(), ""


def read_table(path: str | Path, id_columns: tuple[str, ...] = ()) -> pd.DataFrame:
    """Read a table; id columns are read as strings so ids round-trip unchanged."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"file not found: {str(p)!r}")
    if p.is_dir():
        raise DataError(f"expected a file, got a directory: {str(p)!r}")
    if p.stat().st_size == 0:
        raise DataError(f"file is empty: {str(p)!r}")
    suffix, compression = _table_suffix(p)
    if compression and suffix in (".parquet", ".pq"):
        raise DataError(
            f"{str(p)!r}: Parquet files compress internally; write {p.stem!r} uncompressed"
        )
    dtype = {c: str for c in id_columns}
    try:
        if suffix in (".csv", ".tsv"):
            df = pd.read_csv(p, sep="\t" if suffix == ".tsv" else ",", dtype=dtype,
                             keep_default_na=False, na_values=[""])
        elif suffix in (".parquet", ".pq"):
            df = pd.read_parquet(p)
            for c in id_columns:
                if c in df.columns:
                    df[c] = df[c].astype(str)
        elif suffix in (".jsonl", ".ndjson", ".json"):
            df = pd.read_json(p, lines=suffix != ".json", dtype=dtype)
            for c in id_columns:
                if c in df.columns:
                    df[c] = df[c].astype(str)
        else:
            raise DataError(
                f"unsupported file type {suffix!r} for {str(p)!r}; use one of "
                f"{', '.join(TABLE_SUFFIXES)} (text formats optionally with "
                f"{', '.join(COMPRESSION_SUFFIXES)})"
            )
    except DataError:
        raise
    except (ValueError, pd.errors.ParserError, OSError, EOFError) as e:
        raise DataError(f"could not read {str(p)!r}: {e}") from e
    if len(df) == 0:
        raise DataError(f"file has a header but no rows: {str(p)!r}")
    return df
