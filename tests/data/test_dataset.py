from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from serendip.data import Dataset, read_table
from serendip.errors import DataError, UnknownIdError


def frames():
    inter = pd.DataFrame(
        {"user_id": ["007", "007", "b", "b", "007"], "item_id": ["x,1", "y", "y", "z", "x,1"],
         "timestamp": [3, 1, 2, 5, 4], "rating": [5, 3, 4, 1, 2]}
    )
    items = pd.DataFrame({"item_id": ["x,1", "y", "z", "w"], "title": ["X", "Y", "Z", "W"],
                          "genres": ["A|B", "B", "", "C"]})
    return inter, items


def test_from_frames_builds_vocab_and_collapses_duplicates():
    inter, items = frames()
    d = Dataset.from_frames(inter, items)
    assert list(d.user_ids) == ["007", "b"]
    assert list(d.item_ids) == ["x,1", "y", "z", "w"]
    assert len(d.interactions) == 4  # the two ("007", "x,1") rows collapse
    row = d.interactions[(d.interactions.user == 0) & (d.interactions.item == 0)]
    assert row["timestamp"].item() == 4.0 and row["rating"].item() == 2.0  # latest kept
    # history is time ordered
    assert list(d.history(0)) == [1, 0]
    assert d.item_popularity.tolist() == [1.0, 2.0, 1.0, 0.0]
    assert d.category_column == "genres"
    assert d.category_names == ["A", "B", "C"]
    assert d.item_categories.toarray().tolist() == [[1, 1, 0], [0, 1, 0], [0, 0, 0], [0, 0, 1]]


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda i, t: (i.drop(columns="user_id"), t), "missing column"),
        (lambda i, t: (i.iloc[:0], t), "empty"),
        (lambda i, t: (i.assign(item_id=["x,1", "y", "nope", "z", "x,1"]), t), "'nope'"),
        (lambda i, t: (i.assign(timestamp=["3", "1", "later", "5", "4"]), t), "'later'"),
        (lambda i, t: (i.assign(rating=[5, 3, "bad", 1, 2]), t), "'bad'"),
        (lambda i, t: (i, pd.concat([t, t.iloc[:1]])), "duplicate item_id"),
        (lambda i, t: (i, t.drop(columns="item_id")), "item_id"),
    ],
)
def test_bad_input_names_the_problem(mutate, message):
    inter, items = frames()
    inter, items = mutate(inter, items)
    with pytest.raises(DataError, match=message):
        Dataset.from_frames(inter, items)


def test_unknown_item_is_unknown_id_error():
    inter, items = frames()
    with pytest.raises(UnknownIdError):
        Dataset.from_frames(inter, items[items.item_id != "z"])


def test_date_timestamps_are_parsed():
    inter, items = frames()
    inter["timestamp"] = ["2024-01-03", "2024-01-01", "2024-01-02", "2024-01-05", "2024-01-04"]
    d = Dataset.from_frames(inter, items)
    assert list(d.history(0)) == [1, 0]


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".jsonl"])
def test_file_formats_round_trip_ids(tmp_path, suffix):
    inter, items = frames()
    pi, pt = tmp_path / f"i{suffix}", tmp_path / f"t{suffix}"
    for df, p in ((inter, pi), (items, pt)):
        if suffix == ".csv":
            df.to_csv(p, index=False)
        elif suffix == ".parquet":
            df.to_parquet(p)
        else:
            df.to_json(p, orient="records", lines=True)
    d = Dataset.from_files(pi, pt)
    assert list(d.user_ids) == ["007", "b"]  # leading zero survives
    assert list(d.item_ids) == ["x,1", "y", "z", "w"]


def test_read_table_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_table(tmp_path / "nope.csv")
    (tmp_path / "e.csv").write_text("")
    with pytest.raises(DataError, match="empty"):
        read_table(tmp_path / "e.csv")
    (tmp_path / "h.csv").write_text("user_id,item_id\n")
    with pytest.raises(DataError, match="no rows"):
        read_table(tmp_path / "h.csv")
    (tmp_path / "x.xlsx").write_text("a")
    with pytest.raises(DataError, match="unsupported file type '.xlsx'"):
        read_table(tmp_path / "x.xlsx")


def test_lookup_errors():
    inter, items = frames()
    d = Dataset.from_frames(inter, items)
    with pytest.raises(UnknownIdError, match="'ghost'"):
        d.user_number("ghost")
    assert d.user_number("ghost", missing="none") is None
    assert d.item_numbers(["z", "ghost"], missing="drop").tolist() == [2]
    with pytest.raises(UnknownIdError, match="'ghost'"):
        d.item_numbers(["ghost"])
    with pytest.raises(DataError, match=r"\(4, d\)"):
        d.with_item_vectors(np.zeros((3, 2)))
