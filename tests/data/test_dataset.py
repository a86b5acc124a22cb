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


# --------------------------------------------------------------------------- time quality
DATASET_LOG = "serendip.data.dataset"


def _timed(rows: list[tuple[str, str, float]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])


def test_has_time_from_the_source(caplog):
    inter, items = frames()
    with caplog.at_level("WARNING", logger=DATASET_LOG):
        timed = Dataset.from_frames(inter, items)
    assert timed.has_time and not caplog.records
    with caplog.at_level("WARNING", logger=DATASET_LOG):
        untimed = Dataset.from_frames(inter.drop(columns="timestamp"), items)
    assert not untimed.has_time
    assert [r.getMessage() for r in caplog.records] == [
        "no timestamp column: row order is not time; recency and sequence models will be "
        "switched off"
    ]
    q = untimed.time_quality
    assert (q.has_time, q.tie_share, q.ordered) == (False, 0.0, False)
    # carried through every derived Dataset
    assert not untimed.with_interactions(untimed.interactions.iloc[:2]).has_time
    assert not untimed.with_item_vectors(np.zeros((4, 2))).has_time
    assert timed.with_interactions(timed.interactions).has_time
    assert "no time" in repr(untimed) and "no time" not in repr(timed)
    # the constructor keeps its old signature: has_time defaults to True
    direct = Dataset(timed.user_ids, timed.item_ids, timed.items, timed.interactions)
    assert direct.has_time


def test_tie_share_counts_same_user_ties_only():
    # u0: three events at t=1 and one at 2 -> 3 tied; u1: 5, 6 -> none; u2 at t=1 is another
    # user, so it ties with nobody
    rows = [("u0", "a", 1), ("u0", "b", 1), ("u0", "c", 1), ("u0", "d", 2),
            ("u1", "a", 5), ("u1", "b", 6), ("u2", "a", 1)]
    q = Dataset.from_frames(_timed(rows)).time_quality
    assert q.tie_share == pytest.approx(3 / 7)
    assert q.has_time and q.ordered


def test_heavy_ties_warn_with_the_share(caplog):
    # 5 of 6 events share their user's timestamp: 83%
    rows = [("u0", "a", 1), ("u0", "b", 1), ("u0", "c", 1), ("u1", "a", 5),
            ("u1", "b", 5), ("u1", "c", 6)]
    with caplog.at_level("WARNING", logger=DATASET_LOG):
        d = Dataset.from_frames(_timed(rows))
    q = d.time_quality
    assert q.tie_share == pytest.approx(5 / 6) and q.has_time and q.ordered
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and "83%" in messages[0] and "switched off" not in messages[0]


def test_ties_past_the_limit_make_the_data_unordered(caplog):
    # every event ties with another of its user: order is unknown
    rows = [("u0", "a", 1), ("u0", "b", 1), ("u1", "a", 5), ("u1", "b", 5), ("u1", "c", 5)]
    with caplog.at_level("WARNING", logger=DATASET_LOG):
        d = Dataset.from_frames(_timed(rows))
    q = d.time_quality
    assert q.tie_share == 1.0 and q.has_time and not q.ordered
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and "100%" in messages[0] and "switched off" in messages[0]


def test_iso_to_seconds_shares_the_dataset_scale():
    from serendip.data.dataset import iso_to_seconds

    secs = iso_to_seconds(pd.Series(["1970-01-02", "2020-01-01T01:00:00+01:00", "nope"]))
    assert secs.iloc[0] == 86_400.0
    assert secs.iloc[1] == 1_577_836_800.0
    assert np.isnan(secs.iloc[2])
    inter, items = frames()
    inter["timestamp"] = ["1970-01-02", "1970-01-01", "1970-01-01T12:00:00Z", "1970-01-03",
                          "1970-01-02T06:00:00"]
    d = Dataset.from_frames(inter, items)
    # the two ("007", "x,1") rows collapse to the later one, 1970-01-02T06:00
    assert sorted(d.interactions["timestamp"].tolist()) == [
        0.0, 43_200.0, 86_400.0 + 21_600.0, 172_800.0
    ]


@pytest.mark.parametrize("name", ["events.csv.gz", "events.tsv.bz2", "events.jsonl.gz"])
def test_compressed_tables(tmp_path, name):
    inter, _ = frames()
    p = tmp_path / name
    if ".jsonl" in name:
        inter.to_json(p, orient="records", lines=True)
    else:
        inter.to_csv(p, index=False, sep="\t" if ".tsv" in name else ",")
    df = read_table(p, id_columns=("user_id", "item_id"))
    assert df["user_id"].tolist() == ["007", "007", "b", "b", "007"]  # leading zero survives
    assert df["timestamp"].tolist() == [3, 1, 2, 5, 4]


def test_compressed_table_errors(tmp_path):
    (tmp_path / "bad.csv.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="could not read .*bad.csv.gz"):
        read_table(tmp_path / "bad.csv.gz")
    (tmp_path / "m.parquet.gz").write_bytes(b"x")
    with pytest.raises(DataError, match="Parquet files compress internally"):
        read_table(tmp_path / "m.parquet.gz")
    (tmp_path / "x.xlsx.gz").write_bytes(b"x")
    with pytest.raises(DataError, match="unsupported file type '.xlsx'"):
        read_table(tmp_path / "x.xlsx.gz")


def test_date_typed_timestamps_are_seconds_like_iso_strings(tmp_path):
    inter, items = frames()
    iso = ["2024-01-03", "2024-01-01", "2024-01-02", "2024-01-05", "2024-01-04"]
    inter["timestamp"] = iso
    from_strings = Dataset.from_frames(inter, items)
    inter["timestamp"] = pd.to_datetime(iso)
    inter.to_parquet(tmp_path / "e.parquet")
    from_dates = Dataset.from_files(tmp_path / "e.parquet")
    assert from_dates.interactions["timestamp"].tolist() == (
        from_strings.interactions["timestamp"].tolist()
    )
    assert from_dates.interactions["timestamp"].min() == 1_704_067_200.0  # 2024-01-01 UTC
