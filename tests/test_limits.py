"""Bounds on item categories: check_categories rejects what the rerankers would have to cut."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from serendip.data import Dataset
from serendip.errors import DataError, SerendipError
from serendip.limits import (
    MAX_CATEGORIES_PER_ITEM,
    MAX_CATEGORIES_TOTAL,
    MAX_CATEGORY_CHARS,
    check_categories,
    parse_categories,
)


def test_limits_are_the_documented_values() -> None:
    assert MAX_CATEGORIES_PER_ITEM == 32
    assert MAX_CATEGORIES_TOTAL == 10_000


def test_parse_matches_the_dataset_reading() -> None:
    raw = [" Drama | Comedy|", "|| ", "Sci-Fi|Drama|Sci-Fi", None, "x y|  z  "]
    items = pd.DataFrame({"item_id": [f"i{k}" for k in range(len(raw))], "genres": raw})
    inter = pd.DataFrame({"user_id": ["a"], "item_id": ["i0"]})
    data = Dataset.from_frames(inter, items)
    parsed = [parse_categories(v) for v in raw]
    assert parsed == [["Drama", "Comedy"], [], ["Sci-Fi", "Drama"], [], ["x y", "z"]]
    assert sorted({c for p in parsed for c in p}) == data.category_names
    cats = data.item_categories
    by_id = dict(zip(data.item_ids.tolist(), range(data.n_items), strict=True))
    for k, p in enumerate(parsed):
        assert cats[by_id[f"i{k}"]].nnz == len(p)
    assert parse_categories(math.nan) == [] and parse_categories(7) == ["7"]


def test_an_item_at_the_limit_passes_and_one_over_is_named() -> None:
    ok = "|".join(f"g{k}" for k in range(MAX_CATEGORIES_PER_ITEM))
    check_categories([("a", ok), ("b", ok + "|g0|g1")])  # repeats count once
    bad = "|".join(f"g{k}" for k in range(80_000))
    with pytest.raises(DataError) as e:
        check_categories([("a", ok), ("x", bad)])
    msg = str(e.value)
    assert msg == ("item 'x' has 80000 categories; at most 32 are allowed "
                   "(MAX_CATEGORIES_PER_ITEM)")
    assert "\n" not in msg and isinstance(e.value, SerendipError)


def test_too_many_categories_in_total() -> None:
    def items(n: int, start: int = 0) -> list[tuple[str, str]]:
        return [(f"i{k}", "|".join(f"g{start + k}-{j}" for j in range(10))) for k in range(n)]

    check_categories(items(MAX_CATEGORIES_TOTAL // 10))  # exactly at the limit
    with pytest.raises(DataError, match=r"item 'i1000' brings the catalog to 10001 .*"
                                        r"at most 10000 .*MAX_CATEGORIES_TOTAL"):
        check_categories(items(MAX_CATEGORIES_TOTAL // 10) + [("i1000", "another")])
    # what the catalog already holds counts: as a number ...
    with pytest.raises(DataError, match="'i0' brings the catalog to 10001"):
        check_categories([("i0", "new")], existing=MAX_CATEGORIES_TOTAL)
    check_categories([("i0", "new")], existing=MAX_CATEGORIES_TOTAL - 1)
    # ... or as names, when an upload re-uses known categories
    known = [f"g{k}" for k in range(MAX_CATEGORIES_TOTAL)]
    check_categories([("i0", "g1|g2"), ("i1", "g3")], existing=known)
    with pytest.raises(DataError, match="'i1' brings the catalog to 10001"):
        check_categories([("i0", "g1|g2"), ("i1", "g3|brand new")], existing=known)


def test_a_huge_category_name_is_refused() -> None:
    check_categories([("a", "x" * MAX_CATEGORY_CHARS)])
    with pytest.raises(DataError, match=r"item 'a' has a category of 900000 characters .*"
                                        r"MAX_CATEGORY_CHARS"):
        check_categories([("a", "ok|" + "y" * 900_000)])


def test_empty_values_pass() -> None:
    check_categories([])
    check_categories([("a", ""), ("b", "|||"), ("c", None)])  # type: ignore[list-item]
