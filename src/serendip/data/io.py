"""Reading tables from CSV / Parquet / JSONL with ids kept exactly as written.

CSV, TSV and JSONL may also be compressed (``events.csv.gz``); the compression is taken
from the last suffix.  A ``.csv`` file's delimiter (``,`` ``;`` tab or ``|``) is found from
its header line unless one is given.

``read_events`` and ``read_items`` are the one reader of event logs and catalogs: every
entry point (``fit``, ``evaluate``, ``tune``, the service's seeding) reads through them, so
ids, timestamps and errors are the same everywhere.
"""

from __future__ import annotations

import bz2
import codecs
import csv
import gzip
import io
import logging
import lzma
import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np
import pandas as pd

from serendip.errors import ConfigError, DataError, SerendipError, UnknownIdError

__all__ = [
    "read_table", "read_events", "read_items", "drop_unknown_items", "detect_delimiter",
    "parse_timestamps", "iso_to_seconds", "item_filter_mask", "UNKNOWN_ITEMS",
    "TABLE_SUFFIXES", "COMPRESSION_SUFFIXES", "DELIMITERS",
]

TABLE_SUFFIXES = (".csv", ".tsv", ".parquet", ".pq", ".jsonl", ".json", ".ndjson")
#: Compressions pandas reads by itself, for the text formats (Parquet compresses internally).
COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz", ".zst")
#: Delimiters recognised in a ``.csv`` header, in order of preference on a tie.
DELIMITERS = (",", "\t", ";", "|")
#: What to do with events on items the catalog does not have.
UNKNOWN_ITEMS = ("error", "drop")
UnknownItems = Literal["error", "drop"]

log = logging.getLogger(__name__)


def _table_suffix(p: Path) -> tuple[str, str]:
    """(format suffix, compression suffix or ""), e.g. ('.csv', '.gz') for events.csv.gz."""
    suffixes = [s.lower() for s in p.suffixes]
    if len(suffixes) >= 2 and suffixes[-1] in COMPRESSION_SUFFIXES:
        return suffixes[-2], suffixes[-1]
    return p.suffix.lower(), ""


@contextmanager
def _open_binary(p: Path, compression: str) -> Iterator[IO[bytes]]:
    """The file's bytes, decompressed."""
    f: Any
    if compression == ".gz":
        f = gzip.open(p, "rb")
    elif compression == ".bz2":
        f = bz2.open(p, "rb")
    elif compression == ".xz":
        f = lzma.open(p, "rb")
    elif compression == ".zst":
        try:
            import zstandard  # pandas needs it for .zst too
        except ImportError:
            raise DataError(f"reading {str(p)!r} needs the zstandard package") from None
        f = zstandard.open(p, "rb")
    else:
        f = open(p, "rb")  # noqa: SIM115 - closed below
    try:
        yield f
    finally:
        f.close()


def _codec(encoding: str | None) -> str:
    name = encoding or "utf-8"
    try:
        return codecs.lookup(name).name
    except LookupError:
        raise ConfigError(f"unknown encoding {name!r}; e.g. utf-8, latin-1, cp1252") from None


def _separator(sep: str | None) -> str | None:
    """A --sep value: one character; 'tab' and '\\t' mean a tab."""
    if sep is None:
        return None
    if sep.lower() in ("tab", "\\t"):
        return "\t"
    if len(sep) != 1 or sep in ('"', "\n", "\r"):
        raise ConfigError(f"separator must be one character (or 'tab'), got {sep!r}")
    return sep


def detect_delimiter(header: str) -> str:
    """The delimiter of a CSV header line: the most frequent of ``,`` tab ``;`` ``|``
    (``,`` when there is none, a one-column file)."""
    counts = [(header.count(d), -n, d) for n, d in enumerate(DELIMITERS)]
    best = max(counts)
    return best[2] if best[0] > 0 else ","


def _delimiter_name(sep: str) -> str:
    """A delimiter as an option value reads: 'tab' for a tab, else quoted."""
    return "tab" if sep == "\t" else repr(sep)


#: pandas' tokenizer error for a row with more fields than the header.
_FIELD_COUNT = re.compile(r"Expected (\d+) fields? in line (\d+), saw (\d+)")


def _parser_error(p: Path, e: Exception | str, delim: str, given: bool, header: str,
                  sep_option: str) -> DataError:
    """A CSV tokenizer error as one line naming the file, the line and the delimiter option.

    ``given``: the delimiter was passed rather than found from ``header``.
    """
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    text = text.removeprefix("Error tokenizing data. ").removeprefix("C error: ")
    read_with = f"read with delimiter {_delimiter_name(delim)}"
    found = detect_delimiter(header)
    if given and found != delim and found in header:
        hint = (f"its header looks {_delimiter_name(found)}-separated: give "
                f"{sep_option} {_delimiter_name(found)}, or leave {sep_option} out to have it "
                "found from the header")
    else:
        hint = (f"if the file uses another delimiter, give it with {sep_option}; a field that "
                "holds the delimiter must be in double quotes")
    m = _FIELD_COUNT.search(text)
    if m:
        expected, line, saw = (int(x) for x in m.groups())
        return DataError(
            f"{str(p)!r} line {line} has {saw} fields but the header has {expected} "
            f"({read_with}); {hint}"
        )
    return DataError(f"could not read {str(p)!r} ({read_with}): {text}; {hint}")


def _first_long_row(p: Path, compression: str, encoding: str, delim: str) -> str | None:
    """'Expected N fields in line L, saw M' for the first row with more fields than the
    header (the line it starts on), as pandas' tokenizer words it; None when there is none."""
    with _open_binary(p, compression) as f, io.TextIOWrapper(f, encoding=encoding,
                                                            newline="") as text:
        rows = csv.reader(text, delimiter=delim)
        header = next(rows, [])
        start = rows.line_num + 1
        for row in rows:
            if len(row) > len(header):
                return f"Expected {len(header)} fields in line {start}, saw {len(row)}"
            start = rows.line_num + 1
    return None


def _first_line(p: Path, compression: str, encoding: str) -> str:
    with _open_binary(p, compression) as f:
        head = f.readline(1 << 16)
    return head.decode(encoding, errors="replace").lstrip("\ufeff").rstrip("\r\n")


def _decode_error(p: Path, compression: str, encoding: str) -> DataError | None:
    """Which line of the file does not decode: a one-line error suggesting an encoding."""
    decoder = codecs.getincrementaldecoder(encoding)()
    with _open_binary(p, compression) as f:
        for n, raw in enumerate(f, start=1):
            try:
                decoder.decode(raw)
            except UnicodeDecodeError as e:
                bad = raw[e.start : e.end].hex()
                before = raw[: e.start].decode(encoding, errors="replace").lstrip("\ufeff")
                after = f" after {before[-40:]!r}" if before else " at its start"
                hint = (" (if the file is Latin-1, pass --encoding latin-1)"
                        if encoding.replace("_", "-") in ("utf-8", "ascii") else "")
                return DataError(
                    f"{str(p)!r} line {n} is not valid {encoding}: byte 0x{bad}{after}{hint}"
                )
    return None


def _ids_as_text(df: pd.DataFrame, id_columns: Sequence[str]) -> None:
    """Id columns of a typed format (Parquet, JSON) as strings; missing ids stay missing."""
    for c in id_columns:
        if c in df.columns:
            col = df[c]
            df[c] = col.astype(str).where(col.notna(), None)


def _read_raw(p: Path, id_columns: Sequence[str], sep: str | None,
              encoding: str | None, sep_option: str = "--sep"
              ) -> tuple[pd.DataFrame, int | None]:
    """(the table, the file line of its first row: None for Parquet); errors name
    ``sep_option`` as the way to give this file's delimiter."""
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
    if suffix not in TABLE_SUFFIXES:
        raise DataError(
            f"unsupported file type {suffix!r} for {str(p)!r}; use one of "
            f"{', '.join(TABLE_SUFFIXES)} (text formats optionally with "
            f"{', '.join(COMPRESSION_SUFFIXES)})"
        )
    codec = _codec(encoding)
    delim = _separator(sep)
    dtype = {c: str for c in id_columns}
    first: int | None = None
    try:
        if suffix in (".csv", ".tsv"):
            header = _first_line(p, compression, codec)
            given = delim is not None
            if delim is None:
                delim = "\t" if suffix == ".tsv" else detect_delimiter(header)
            try:
                with warnings.catch_warnings():
                    # rows longer than the header: an error, never a silent shift of columns
                    warnings.simplefilter("error", pd.errors.ParserWarning)
                    df = pd.read_csv(p, sep=delim, dtype=dtype, keep_default_na=False,
                                     na_values=[""], encoding=codec, index_col=False)
            except (pd.errors.ParserError, pd.errors.ParserWarning) as e:
                # the line a long row starts on (pandas counts rows, not lines)
                long = _first_long_row(p, compression, codec, delim)
                raise _parser_error(p, long or e, delim, given, header, sep_option) from e
            first = 2
        elif suffix in (".parquet", ".pq"):
            df = pd.read_parquet(p)
            _ids_as_text(df, id_columns)
        else:
            # dates are parsed below like every other format's, not guessed from column names
            df = pd.read_json(p, lines=suffix != ".json", dtype=dtype, encoding=codec,
                              convert_dates=False, keep_default_dates=False)
            _ids_as_text(df, id_columns)
            first = 1 if suffix != ".json" else None
    except SerendipError:
        raise
    except UnicodeDecodeError as e:
        located = _decode_error(p, compression, codec)
        raise (located or DataError(f"could not read {str(p)!r} as {codec}: {e.reason}")) from e
    except (ValueError, pd.errors.ParserError, OSError, EOFError) as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"could not read {str(p)!r}: {first_line}") from e
    if len(df) == 0:
        raise DataError(f"file has a header but no rows: {str(p)!r}")
    return df, first


def read_table(path: str | Path, id_columns: Sequence[str] = (), *, sep: str | None = None,
               encoding: str | None = None) -> pd.DataFrame:
    """Read a table; id columns are read as strings so ids round-trip unchanged.

    ``sep`` is a CSV delimiter (default: found from the header line; tab for ``.tsv``) and
    ``encoding`` the text encoding (default UTF-8); a line that does not decode is named, and
    so is a line with more fields than the header.
    """
    return _read_raw(Path(path), id_columns, sep, encoding)[0]


# ---------------------------------------------------------------- values
def iso_to_seconds(values: pd.Series) -> pd.Series:
    """ISO-8601 strings to float seconds since the Unix epoch (naive dates read as UTC).

    The one conversion used for timestamp columns and for time cuts, so both share a scale;
    unparsable values become NaN.
    """
    parsed = pd.to_datetime(values, errors="coerce", utc=True, format="ISO8601")
    return (parsed - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)


def _row_locator(source: str | None, first_line: int | None) -> Callable[[int], str]:
    """Names row ``n`` (0-based) of a table: 'events.csv line 7', or 'row 6'."""
    prefix = f"{source} " if source else ""
    if first_line is None:
        return lambda n: f"{prefix}row {n + 1}"
    return lambda n: f"{prefix}line {n + first_line}"


def _bad_value(values: pd.Series, bad: np.ndarray, where: Callable[[int], str], name: str,
               problem: str) -> DataError:
    """"events.csv line 7: timestamp 'soon' <problem>", or "... timestamp is empty"."""
    pos = int(np.flatnonzero(bad)[0])
    count = int(bad.sum())
    value = values.iloc[pos]
    empty = value is None or (isinstance(value, float) and np.isnan(value)) or (
        isinstance(value, str) and not value.strip())
    more = f" ({count} bad values in all)" if count > 1 else ""
    what = f"{name} is empty" if empty else f"{name} {value!r} {problem}"
    return DataError(f"{where(pos)}: {what}{more}")


def parse_timestamps(values: pd.Series, *, where: Callable[[int], str] | None = None
                     ) -> pd.Series:
    """A timestamp column as float seconds since the epoch.

    Numbers are epoch seconds, ISO-8601 strings (``2024-03-01``, ``2024-03-01T12:00:00Z``)
    are parsed (naive ones as UTC), date-typed columns are converted; anything else, or an
    empty value, raises a one-line DataError naming the first bad row (``where(n)`` names
    0-based row ``n``) and its value.
    """
    where = where or _row_locator(None, None)
    values = values.reset_index(drop=True)
    if pd.api.types.is_datetime64_any_dtype(values):
        # date-typed (Parquet, a DataFrame): seconds like ISO strings; to_numeric would give
        # nanoseconds
        ts = iso_to_seconds(values)
    else:
        ts = pd.to_numeric(values, errors="coerce")
        todo = ts.isna().to_numpy() & values.notna().to_numpy()
        if todo.any() and not pd.api.types.is_numeric_dtype(values):
            ts = ts.copy()
            ts[todo] = iso_to_seconds(values[todo].astype(str).str.strip()).to_numpy()
    bad = ~np.isfinite(ts.to_numpy(dtype=np.float64, na_value=np.nan))
    if bad.any():
        raise _bad_value(values, bad, where, "timestamp",
                         "is neither a number (epoch seconds) nor an ISO-8601 date")
    return ts.astype(np.float64)


def parse_ratings(values: pd.Series, *, where: Callable[[int], str] | None = None
                  ) -> pd.Series:
    """A rating column as floats; a non-number raises naming the first bad row."""
    where = where or _row_locator(None, None)
    values = values.reset_index(drop=True)
    r = pd.to_numeric(values, errors="coerce")
    bad = ~np.isfinite(r.to_numpy(dtype=np.float64, na_value=np.nan))
    if bad.any():
        raise _bad_value(values, bad, where, "rating", "is not a number")
    return r.astype(np.float64)


def _check_ids(df: pd.DataFrame, columns: Sequence[str], where: Callable[[int], str],
               what: str, sep_option: str = "--sep") -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        names = ", ".join(repr(c) for c in missing)
        hint = (f" (if that is one column, give the delimiter with {sep_option})"
                if len(df.columns) == 1 else "")
        raise DataError(
            f"{what} lacks {'the column' if len(missing) == 1 else 'the columns'} {names}; "
            f"found {list(df.columns)}{hint}"
        )
    for c in columns:
        empty = df[c].isna().to_numpy()
        if empty.any():
            n = int(empty.sum())
            raise DataError(
                f"{where(int(np.flatnonzero(empty)[0]))}: empty {c} "
                f"({n} row{'s' if n != 1 else ''} without one; every row needs an id)"
            )


def read_events(path: str | Path, *, sep: str | None = None, encoding: str | None = None
                ) -> pd.DataFrame:
    """An event log, validated the way ``fit`` reads it.

    Returns ``user_id`` and ``item_id`` (strings, exactly as written), ``timestamp`` (float
    seconds since the epoch: numbers as they are, ISO-8601 dates parsed) when the file has
    that column, ``rating`` (float) when it has that one, and any other columns unchanged,
    one row per line in file order (duplicates kept).  A bad value raises a one-line
    DataError naming the file, the line and the value.
    """
    p = Path(path)
    df, first = _read_raw(p, ("user_id", "item_id"), sep, encoding, "--sep")
    where = _row_locator(p.name, first)
    _check_ids(df, ("user_id", "item_id"), where, f"events file {p.name!r}", "--sep")
    df = df.reset_index(drop=True)
    for c in ("user_id", "item_id"):
        df[c] = df[c].astype(str)
    if "timestamp" in df.columns:
        df["timestamp"] = parse_timestamps(df["timestamp"], where=where).to_numpy()
    if "rating" in df.columns:
        df["rating"] = parse_ratings(df["rating"], where=where).to_numpy()
    return df


def read_items(path: str | Path, *, sep: str | None = None, encoding: str | None = None
               ) -> pd.DataFrame:
    """An item catalog: ``item_id`` (strings, exactly as written, unique) and every other
    column as read.  A missing or repeated id raises a one-line DataError naming its line."""
    p = Path(path)
    df, first = _read_raw(p, ("item_id",), sep, encoding, "--items-sep")
    where = _row_locator(p.name, first)
    _check_ids(df, ("item_id",), where, f"items file {p.name!r}", "--items-sep")
    df = df.reset_index(drop=True)
    df["item_id"] = df["item_id"].astype(str)
    dup = df["item_id"].duplicated().to_numpy()
    if dup.any():
        n = int(dup.sum())
        pos = int(np.flatnonzero(dup)[0])
        raise DataError(
            f"{where(pos)}: item_id {df['item_id'].iloc[pos]!r} is repeated ({n} repeated "
            f"id{'s' if n != 1 else ''} in all); each item needs one row"
        )
    return df


def drop_unknown_items(events: pd.DataFrame, item_ids: Sequence[str] | pd.Series | np.ndarray,
                       *, unknown_items: str = "error", source: str = "interactions"
                       ) -> pd.DataFrame:
    """Events whose ``item_id`` is in ``item_ids``; the others per ``unknown_items``.

    ``"error"`` raises UnknownIdError giving how many events and item ids, with up to 5 of
    the ids; ``"drop"`` leaves those events out with a warning giving the counts.
    """
    if unknown_items not in UNKNOWN_ITEMS:
        raise ConfigError(f"unknown_items must be 'error' or 'drop', got {unknown_items!r}")
    known = pd.Index(pd.unique(np.asarray(item_ids, dtype=object).astype(str)))
    ids = events["item_id"].astype(str)
    unknown = ~ids.isin(known).to_numpy()
    if not unknown.any():
        return events
    u = pd.unique(ids[unknown])
    n_ev = int(unknown.sum())
    counts = (f"{n_ev} event{'s' if n_ev != 1 else ''} on {len(u)} item "
              f"id{'s' if len(u) != 1 else ''} not in the items table")
    if unknown_items == "error":
        shown = ", ".join(repr(x) for x in u[:5])
        raise UnknownIdError(
            f"{source}: {counts}, e.g. {shown}; give --unknown-items drop to leave them out"
        )
    log.warning("%s: dropped %s", source, counts)
    return events[~unknown]


def item_filter_mask(items: pd.DataFrame, filters: Sequence[str]) -> np.ndarray | None:
    """Items matching every filter, as a boolean mask over the rows of ``items``.

    A filter is ``column=value`` (or ``column:value``, as the HTTP API writes it); a row
    matches when its cell, trimmed and case-folded, equals the value, or one of its
    ``|``-separated parts does (``genres=comedy`` matches ``Action|Comedy``).  No filters:
    None.
    """
    from serendip.text.templates import cell_text

    if not filters:
        return None
    columns = [c for c in items.columns if c != "item_id"]
    mask = np.ones(len(items), dtype=bool)
    for f in filters:
        eq, colon = f.find("="), f.find(":")
        cut = min(x for x in (eq, colon) if x >= 0) if max(eq, colon) >= 0 else -1
        name = f[:cut].strip() if cut >= 0 else ""
        value = f[cut + 1 :].strip().casefold() if cut >= 0 else ""
        if not name or not value:
            raise ConfigError(f"filter must look like 'column=value', got {f!r}")
        if name not in columns:
            raise ConfigError(f"filter column {name!r} is not an item column; columns: {columns}")
        hit = np.zeros(len(items), dtype=bool)
        for i, raw in enumerate(items[name].tolist()):
            text = cell_text(raw)
            if text.strip().casefold() == value or any(
                t.strip().casefold() == value for t in text.split("|")
            ):
                hit[i] = True
        mask &= hit
    return mask
