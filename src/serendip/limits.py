"""Bounds on item categories, so that category values cannot exhaust memory.

Categories (genres, tags) come from one item column, ``'|'``-separated, read the same way by
the Dataset and the rerankers: each part is stripped, empty parts are skipped and repeats
count once.  ``check_categories`` rejects input over the bounds with a ``DataError``; code
that reads data without checking it (the rerankers) keeps the most frequent categories
instead, so what it builds stays bounded either way.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable

from serendip.errors import DataError

__all__ = [
    "CATEGORY_SEPARATOR",
    "MAX_CATEGORIES_PER_ITEM",
    "MAX_CATEGORIES_TOTAL",
    "MAX_CATEGORY_CHARS",
    "parse_categories",
    "check_categories",
]

#: Separator between the categories of one item in its category column.
CATEGORY_SEPARATOR = "|"

#: Most distinct categories one item may carry.  Real catalogs stay far below it (MovieLens
#: items have at most 6 genres, the bundled book and music tags 8 per item).
MAX_CATEGORIES_PER_ITEM = 32

#: Most distinct categories a whole catalog may carry.  Per-request work and memory of the
#: rerankers grow with the categories of the items they look at, and their trained state with
#: the number of categories, so this bounds both.
MAX_CATEGORIES_TOTAL = 10_000

#: Longest category name, in characters (after stripping).
MAX_CATEGORY_CHARS = 200


def parse_categories(value: object) -> list[str]:
    """The distinct categories of one raw column value, in first-seen order.

    ``None``, NaN and the empty string have none; other non-string values are read as text.
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    text = value if isinstance(value, str) else str(value)
    out: dict[str, None] = {}
    for part in text.split(CATEGORY_SEPARATOR):
        name = part.strip()
        if name:
            out[name] = None
    return list(out)


def _short(name: str, n: int = 40) -> str:
    return name if len(name) <= n else name[:n] + "..."


def check_categories(
    values_per_item: Iterable[tuple[str, str]],
    existing: int | Collection[str] = 0,
) -> None:
    """Raise ``DataError`` when items carry too many categories or too long ones.

    ``values_per_item`` yields ``(item id, raw category value)``.  ``existing`` is what the
    catalog already holds: the names of its categories (overlaps with the new values are then
    counted once) or just their number (every category of the new values then counts as new,
    which can only over-count).  Limits: ``MAX_CATEGORIES_PER_ITEM`` distinct categories per
    item, ``MAX_CATEGORIES_TOTAL`` distinct categories overall, ``MAX_CATEGORY_CHARS``
    characters per category.
    """
    if isinstance(existing, int):
        known: set[str] = set()
        base = existing
    else:
        known = set(existing)
        base = 0
    if base < 0:
        raise ValueError(f"existing must be a non-negative count, got {existing!r}")
    for item_id, raw in values_per_item:
        cats = parse_categories(raw)
        if len(cats) > MAX_CATEGORIES_PER_ITEM:
            raise DataError(
                f"item {item_id!r} has {len(cats)} categories; at most "
                f"{MAX_CATEGORIES_PER_ITEM} are allowed (MAX_CATEGORIES_PER_ITEM)"
            )
        for name in cats:
            if len(name) > MAX_CATEGORY_CHARS:
                raise DataError(
                    f"item {item_id!r} has a category of {len(name)} characters "
                    f"({_short(name)!r}); at most {MAX_CATEGORY_CHARS} are allowed "
                    f"(MAX_CATEGORY_CHARS)"
                )
            if name not in known:
                known.add(name)
                if base + len(known) > MAX_CATEGORIES_TOTAL:
                    raise DataError(
                        f"item {item_id!r} brings the catalog to {base + len(known)} distinct "
                        f"categories; at most {MAX_CATEGORIES_TOTAL} are allowed "
                        f"(MAX_CATEGORIES_TOTAL)"
                    )
