"""Texts for the encoder: item descriptions, user context descriptions, free-text requests.

Item texts come from the catalog columns (or a format-string template over them); a user's
text summarises their history in words, so users and items live in one embedding space.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np

from serendip.data.dataset import Dataset
from serendip.errors import ConfigError, DataError

__all__ = ["item_texts", "user_text", "request_text", "natural_title", "MAX_REQUEST_CHARS"]

#: Longest natural-language request accepted (characters, after trimming).
MAX_REQUEST_CHARS = 2000

# Timestamps at or above this are taken as Unix seconds (1973-03-03); smaller ones are row orders.
_UNIX_SECONDS_FROM = 1e8


def cell_text(value: Any) -> str:
    """One catalog value as text: NaN/None -> "", 1995.0 -> "1995", strings trimmed."""
    if value is None:
        return ""
    if isinstance(value, float | np.floating):
        if math.isnan(value):
            return ""
        if float(value).is_integer():
            return str(int(value))
    return str(value).strip()


def _categories(value: str) -> list[str]:
    return [t.strip() for t in value.split("|") if t.strip()]


def _row_values(data: Dataset, columns: list[str]) -> list[dict[str, str]]:
    cat = data.category_column
    cols = {c: [cell_text(v) for v in data.items[c].tolist()] for c in columns}
    if cat in cols:
        cols[cat] = [", ".join(_categories(v)) for v in cols[cat]]
    return [{c: cols[c][i] for c in columns} for i in range(data.n_items)]


def item_texts(data: Dataset, template: str | None = None) -> list[str]:
    """One text per item index.

    Without a template every column but ``item_id`` becomes ``"column: value"``, joined by
    ``"; "`` (empty values skipped; the '|'-separated category column as a comma list), except
    columns of links (mostly ``http(s)://`` values: cover images, pages), which say nothing
    about the item to a language model.
    A template is a format string over column names, e.g. ``"{title} ({year}). Genres: {genres}"``.
    """
    columns = [c for c in data.items.columns if c != "item_id" and not _links(data.items[c])]
    if template is None:
        rows = _row_values(data, columns)
        return ["; ".join(f"{c}: {v}" for c, v in row.items() if v) for row in rows]

    if not isinstance(template, str) or not template.strip():
        raise ConfigError(f"item text template must be a non-empty string, got {template!r}")
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        raise ConfigError(f"item text template {template!r} is not a valid format string: {e}") from e
    known = list(data.items.columns)
    for f in fields:
        if f == "" or not f.isidentifier():
            raise ConfigError(
                f"item text template {template!r} has field {{{f}}}: fields must be column "
                f"names, one of {known}"
            )
        if f not in known:
            raise ConfigError(
                f"item text template {template!r} names unknown column {f!r}; "
                f"item columns are {known}"
            )
    rows = _row_values(data, known)
    try:
        return [template.format_map(row).strip() for row in rows]
    except (ValueError, TypeError) as e:  # e.g. a numeric format spec applied to text
        raise ConfigError(f"item text template {template!r} could not be applied: {e}") from e


def _links(column: Any) -> bool:
    """Whether most non-empty values of a column are web links."""
    values = [cell_text(v) for v in column.tolist()[:1000]]
    values = [v for v in values if v]
    if not values:
        return False
    links = sum(v.startswith(("http://", "https://")) for v in values)
    return links > len(values) / 2


def _share_list(counts: Counter[str], n: int, top: int) -> str:
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    return ", ".join(f"{name} ({round(100 * c / n)}%)" for name, c in ranked)


def user_text(
    data: Dataset,
    user_history_items: Sequence[int] | np.ndarray,
    times: Sequence[float] | np.ndarray | None = None,
    max_items: int = 20,
    *,
    verb: str = "watched",
    top_categories: int = 5,
) -> str:
    """A context description of a user from their history (item indices).

    Without ``times`` the history is taken as oldest first (as ``Dataset.history`` returns it).
    Favourite categories come first so they survive the encoder's token limit; shares are the
    fraction of history items carrying each category.  Example::

        "Favourite genres: Drama (40%), Comedy (25%). Recently watched: A, B, C.
         Lately: Comedy, Romance. 12 items, the latest on 1998-04-22."
    """
    if isinstance(max_items, bool) or not isinstance(max_items, int | np.integer) or max_items < 1:
        raise ConfigError(f"max_items must be a positive integer, got {max_items!r}")
    items = np.asarray(user_history_items, dtype=np.int64).ravel()
    if items.size and (items.min() < 0 or items.max() >= data.n_items):
        bad = items[(items < 0) | (items >= data.n_items)][:5].tolist()
        raise DataError(f"history has item indices outside 0..{data.n_items - 1}: {bad}")
    if items.size == 0:
        return "A new user with no history yet."
    ts: np.ndarray | None = None
    if times is not None:
        ts = np.asarray(times, dtype=np.float64).ravel()
        if ts.shape != items.shape:
            raise DataError(
                f"times must match the history: {ts.size} times for {items.size} items"
            )
        order = np.argsort(-ts, kind="stable")  # most recent first; ties keep input order
    else:
        order = np.arange(items.size)[::-1]
    recent = items[order]

    parts: list[str] = []
    cat = data.category_column
    cats_of: list[list[str]] = []
    if cat is not None:
        col = data.items[cat]
        cats_of = [_categories(cell_text(col.iat[int(i)])) for i in recent]
        counts: Counter[str] = Counter(c for cs in cats_of for c in set(cs))
        if counts:
            parts.append(f"Favourite {cat}: {_share_list(counts, len(recent), top_categories)}.")

    titles = list(dict.fromkeys(data.item_title(int(i)) for i in recent))[:max_items]
    # Titles such as "Birdcage, The" contain commas; then a semicolon keeps them apart.
    sep = "; " if any("," in t for t in titles) else ", "
    parts.append(f"Recently {verb}: {sep.join(titles)}.")

    if cats_of and len(recent) > 5:
        lately: Counter[str] = Counter(c for cs in cats_of[:5] for c in set(cs))
        if lately:
            top = sorted(lately.items(), key=lambda kv: (-kv[1], kv[0]))[:3]
            parts.append(f"Lately: {', '.join(name for name, _ in top)}.")

    n = len(recent)
    summary = f"{n} item{'s' if n != 1 else ''}"
    if ts is not None and float(ts.max()) >= _UNIX_SECONDS_FROM:
        day = datetime.fromtimestamp(float(ts.max()), tz=UTC).date().isoformat()
        summary += f", the latest on {day}"
    parts.append(summary + ".")
    return " ".join(parts)


def request_text(text: str, max_chars: int = MAX_REQUEST_CHARS) -> str:
    """A natural-language request, whitespace-normalised; refuses empty or over-long input."""
    if not isinstance(text, str):
        raise DataError(f"a request must be a string, got {type(text).__name__}")
    clean = " ".join(text.split())
    if not clean:
        raise DataError("a request must contain some text, got only whitespace")
    if len(clean) > max_chars:
        raise DataError(
            f"a request may have at most {max_chars} characters, got {len(clean)}; shorten it"
        )
    return clean


_ARTICLE = re.compile(r"^(?P<body>.+?),\s*(?P<art>The|A|An|Les|La|Le|L'|Il|Das|Der|Die|El)"
                      r"(?P<rest>\s*\(.*\))?$")


def natural_title(title: str) -> str:
    """A catalog title as a person writes it: "Close Shave, A (1995)" -> "A Close Shave (1995)".

    Library catalogs move a leading article to the end; anything else is returned unchanged,
    and the function is idempotent.
    """
    m = _ARTICLE.match(title.strip())
    if m is None:
        return title
    art = m.group("art")
    sep = "" if art.endswith("'") else " "
    return f"{art}{sep}{m.group('body').strip()}{m.group('rest') or ''}"
