"""The one reader of event logs and catalogs: timestamps, ids, delimiters, encodings, errors."""

from __future__ import annotations

import gzip
import logging

import numpy as np
import pandas as pd
import pytest

from serendip.data import Dataset, drop_unknown_items, item_filter_mask, read_events, read_items
from serendip.data.io import detect_delimiter, parse_timestamps
from serendip.errors import ConfigError, DataError, UnknownIdError

JAN1 = 1_704_067_200.0  # 2024-01-01T00:00:00Z in epoch seconds


def test_timestamps_numbers_and_iso_dates_to_epoch_seconds(tmp_path):
    p = tmp_path / "events.csv"
    p.write_text("user_id,item_id,timestamp\n"
                 "u1,a,2024-01-01T00:00:00Z\n"
                 "u1,b,2024-01-02\n"             # naive date: UTC midnight
                 "u2,a,2024-01-01T01:00:00+01:00\n"  # the same instant as the first
                 "u2,b,1700000000\n"
                 "u3,a,1700000000.5\n")
    ev = read_events(p)
    assert ev["timestamp"].tolist() == [JAN1, JAN1 + 86_400, JAN1, 1_700_000_000.0,
                                        1_700_000_000.5]
    assert ev["timestamp"].dtype == np.float64
    # the Dataset built from the file has the same times (one conversion)
    data = Dataset.from_files(p)
    assert sorted(data.interactions["timestamp"]) == sorted(ev["timestamp"])


def test_ids_verbatim(tmp_path):
    p = tmp_path / "events.csv"
    p.write_text('user_id,item_id\n" lead",007\nlead ,7\nlead,"1,5"\n')
    ev = read_events(p)
    assert ev["user_id"].tolist() == [" lead", "lead ", "lead"]
    assert ev["item_id"].tolist() == ["007", "7", "1,5"]
    assert "timestamp" not in ev.columns  # none in the file: none made up


def test_bad_timestamp_names_file_line_and_value(tmp_path):
    p = tmp_path / "events.csv"
    p.write_text("user_id,item_id,timestamp\nu1,a,1\nu1,b,yesterday\nu2,a,soon\n")
    with pytest.raises(DataError) as e:
        read_events(p)
    msg = str(e.value)
    assert "events.csv line 3" in msg and "'yesterday'" in msg and "2 bad values" in msg
    assert "\n" not in msg
    p.write_text("user_id,item_id,timestamp\nu1,a,1\nu1,b,\n")
    with pytest.raises(DataError, match="events.csv line 3: timestamp is empty"):
        read_events(p)
    p.write_text("user_id,item_id,rating\nu1,a,4\nu1,b,five\n")
    with pytest.raises(DataError, match="line 3: rating 'five' is not a number"):
        read_events(p)
    p.write_text("user_id,item_id\nu1,a\n,b\n")
    with pytest.raises(DataError, match="line 3: empty user_id"):
        read_events(p)
    # JSON lines: no header, the first row is line 1
    j = tmp_path / "events.jsonl"
    j.write_text('{"user_id": "u1", "item_id": "a", "timestamp": "2024-01-01"}\n'
                 '{"user_id": "u1", "item_id": "b", "timestamp": "later"}\n')
    with pytest.raises(DataError, match="events.jsonl line 2: timestamp 'later'"):
        read_events(j)


def test_frames_validated_by_the_same_function():
    frame = pd.DataFrame({"user_id": ["u1", "u2"], "item_id": ["a", "b"],
                          "timestamp": ["2024-01-01", "when"]})
    with pytest.raises(DataError, match="row 2: timestamp 'when'"):
        Dataset.from_frames(frame)
    ok = Dataset.from_frames(frame.assign(timestamp=["2024-01-01", 5]))
    assert sorted(ok.interactions["timestamp"]) == [5.0, JAN1]
    dates = pd.Series(pd.to_datetime(["2024-01-01", "2024-01-02"]))
    assert parse_timestamps(dates).tolist() == [JAN1, JAN1 + 86_400]


@pytest.mark.parametrize("sep", [";", "\t", "|", ","])
def test_delimiter_found_from_the_header(tmp_path, sep):
    p = tmp_path / "events.csv"
    rows = [["user_id", "item_id", "timestamp"], ["u1", "a,b", "1"], ["u2", "c", "2"]]
    if sep == ",":
        rows[1][1] = '"a,b"'
    p.write_text("\n".join(sep.join(r) for r in rows) + "\n")
    ev = read_events(p)
    assert list(ev.columns) == ["user_id", "item_id", "timestamp"]
    assert ev["item_id"].tolist() == ["a,b", "c"]


def test_detect_delimiter_and_explicit_sep(tmp_path):
    assert detect_delimiter("user_id;item_id") == ";"
    assert detect_delimiter("item_id") == ","
    assert detect_delimiter("a\tb\tc,d") == "\t"
    p = tmp_path / "items.csv"
    p.write_text("item_id;title\na;x,y\nb;z\n")
    assert read_items(p)["title"].tolist() == ["x,y", "z"]
    # an explicit separator wins ('tab' spelled out works too)
    t = tmp_path / "items.txt.csv"
    t.write_text("item_id\ttitle;note\na\tone;1\n")
    assert list(read_items(t, sep="tab").columns) == ["item_id", "title;note"]
    with pytest.raises(ConfigError, match="one character"):
        read_items(p, sep=";;")


def test_compressed_semicolon_file(tmp_path):
    p = tmp_path / "events.csv.gz"
    with gzip.open(p, "wt") as f:
        f.write("user_id;item_id;timestamp\nu1;a;2024-01-01\n")
    assert read_events(p)["timestamp"].tolist() == [JAN1]


def test_latin1_error_names_the_line_and_suggests_the_encoding(tmp_path):
    p = tmp_path / "items.csv"
    p.write_bytes("item_id,title\na,Apple\nb,Caf\u00e9\n".encode("latin-1"))
    with pytest.raises(DataError) as e:
        read_items(p)
    msg = str(e.value)
    assert "line 3" in msg and "0xe9" in msg and "--encoding latin-1" in msg
    assert "position" not in msg and "\n" not in msg
    assert read_items(p, encoding="latin-1")["title"].tolist() == ["Apple", "Caf\u00e9"]
    with pytest.raises(ConfigError, match="'klingon'"):
        read_items(p, encoding="klingon")


def test_items_repeated_id_names_the_line(tmp_path):
    p = tmp_path / "items.csv"
    p.write_text("item_id,title\na,x\nb,y\na,z\n")
    with pytest.raises(DataError, match="items.csv line 4: item_id 'a' is repeated"):
        read_items(p)


def test_unknown_items_error_counts_and_five_examples():
    events = pd.DataFrame({"user_id": ["u"] * 9,
                           "item_id": ["a", "x1", "x2", "x3", "x4", "x5", "x6", "x6", "b"]})
    with pytest.raises(UnknownIdError) as e:
        drop_unknown_items(events, ["a", "b"])
    msg = str(e.value)
    assert "7 events on 6 item ids" in msg
    assert "'x5'" in msg and "'x6'" not in msg  # at most five examples
    assert "--unknown-items drop" in msg


def test_unknown_items_drop_warns_with_the_count(tmp_path, caplog):
    events = pd.DataFrame({"user_id": ["u1", "u1", "u2"], "item_id": ["a", "gone", "gone"]})
    with caplog.at_level(logging.WARNING):
        kept = drop_unknown_items(events, ["a"], unknown_items="drop")
    assert kept["item_id"].tolist() == ["a"]
    assert "dropped 2 events on 1 item id not in the items table" in caplog.text
    with pytest.raises(ConfigError, match="'ignore'"):
        drop_unknown_items(events, ["a"], unknown_items="ignore")
    # the same option through the Dataset builders
    ev = tmp_path / "events.csv"
    ev.write_text("user_id,item_id\nu1,a\nu1,gone\nu2,b\n")
    it = tmp_path / "items.csv"
    it.write_text("item_id\na\nb\n")
    with pytest.raises(UnknownIdError, match="1 event on 1 item id"):
        Dataset.from_files(ev, it)
    data = Dataset.from_files(ev, it, unknown_items="drop")
    assert len(data.interactions) == 2 and list(data.user_ids) == ["u1", "u2"]
    it.write_text("item_id\nz\n")
    with pytest.raises(DataError, match="no events are left"):
        Dataset.from_files(ev, it, unknown_items="drop")


def test_collapsed_duplicates_are_counted_in_a_warning(tmp_path, caplog):
    ev = tmp_path / "events.csv"
    ev.write_text("user_id,item_id,timestamp\nu1,a,1\nu1,a,2\nu1,a,3\nu2,a,1\nu2,b,2\n")
    with caplog.at_level(logging.WARNING):
        data = Dataset.from_files(ev)
    assert len(data.interactions) == 3
    assert "events.csv: 2 repeated (user, item) rows collapsed" in caplog.text


def test_item_filter_mask_matches_the_api_semantics():
    items = pd.DataFrame({"item_id": ["a", "b", "c", "d"],
                          "genres": ["Action|Comedy", "comedy", "Drama", None],
                          "year": [1995.0, 1995.0, 2001.0, 1995.0]})
    assert item_filter_mask(items, []) is None
    assert item_filter_mask(items, ["genres=COMEDY"]).tolist() == [True, True, False, False]
    assert item_filter_mask(items, ["genres:comedy"]).tolist() == [True, True, False, False]
    # every filter must match; a float cell reads as its text ('1995', as in the catalog)
    assert item_filter_mask(items, ["genres=comedy", "year=1995"]).tolist() == [
        True, True, False, False]
    assert item_filter_mask(items, ["year=2001"]).tolist() == [False, False, True, False]
    assert not item_filter_mask(items, ["genres=western"]).any()
    with pytest.raises(ConfigError, match="'colour'"):
        item_filter_mask(items, ["colour=red"])
    with pytest.raises(ConfigError, match="'genres'"):
        item_filter_mask(items, ["genres"])


def test_unreadable_files_are_one_line(tmp_path):
    p = tmp_path / "events.csv"
    p.write_text('user_id,item_id\nu1,"a\nu2,b\n')  # an unclosed quote
    with pytest.raises(DataError) as e:
        read_events(p)
    assert "\n" not in str(e.value) and "events.csv" in str(e.value)
    q = tmp_path / "events.xlsx"
    q.write_text("x")
    with pytest.raises(DataError, match="unsupported file type"):
        read_events(q)
    r = tmp_path / "one.csv"
    r.write_text("user_id item_id\nu1 a\n")
    with pytest.raises(DataError, match="--sep"):
        read_events(r)


def test_jsonl_and_parquet_times_on_the_same_scale(tmp_path):
    j = tmp_path / "events.jsonl"
    j.write_text('{"user_id": 7, "item_id": "a", "timestamp": 1700000000}\n'
                 '{"user_id": "07", "item_id": "b", "timestamp": "2024-01-01T00:00:00Z"}\n')
    ev = read_events(j)
    assert ev["user_id"].tolist() == ["7", "07"]
    assert ev["timestamp"].tolist() == [1_700_000_000.0, JAN1]
    p = tmp_path / "events.parquet"
    pd.DataFrame({"user_id": ["u1", "u2"], "item_id": ["a", "b"],
                  "timestamp": pd.to_datetime(["2024-01-01", "2024-01-02"])}).to_parquet(p)
    assert read_events(p)["timestamp"].tolist() == [JAN1, JAN1 + 86_400]
    pd.DataFrame({"user_id": ["u1", None], "item_id": ["a", "b"]}).to_parquet(p)
    with pytest.raises(DataError, match="events.parquet row 2: empty user_id"):
        read_events(p)


def test_each_file_has_its_own_delimiter(tmp_path):
    ev = tmp_path / "events.csv"
    ev.write_text("user_id;item_id\nu1;a\nu2;b\n")
    it = tmp_path / "items.csv"
    # a ';' inside a title: the comma-separated catalog must not be read with the events' ';'
    it.write_text("item_id,title\n" + "".join(f"i{n},T{n}\n" for n in range(5))
                  + "a,Salt; Pepper\nb,Bread\n")
    data = Dataset.from_files(ev, it, sep=";")
    assert data.items.set_index("item_id").loc["a", "title"] == "Salt; Pepper"
    assert len(data.interactions) == 2
    data = Dataset.from_files(ev, it, sep=";", items_sep=",")
    assert list(data.items.columns) == ["item_id", "title"]
    tab = tmp_path / "items_tab.csv"
    tab.write_text("item_id\ttitle\na\tSalt, Pepper\nb\tBread\n")
    assert Dataset.from_files(ev, tab, items_sep="tab").item_title(0) == "Salt, Pepper"


def test_tokenizer_errors_name_the_file_the_line_and_the_option(tmp_path):
    it = tmp_path / "items.csv"
    it.write_text("item_id,title\n" + "".join(f"i{n},T{n}\n" for n in range(215))
                  + "a,Salt; Pepper\n")
    with pytest.raises(DataError) as e:
        read_items(it, sep=";")  # the events file's delimiter given for the catalog
    msg = str(e.value)
    assert "items.csv' line 217 has 2 fields but the header has 1" in msg
    assert "delimiter ';'" in msg and "--items-sep ','" in msg
    assert "Error tokenizing" not in msg and "\n" not in msg
    ev = tmp_path / "events.csv"
    ev.write_text("user_id,item_id\nu1,a\nu2,b,c\n")
    with pytest.raises(DataError) as e:
        read_events(ev)
    msg = str(e.value)
    assert "events.csv' line 3 has 3 fields but the header has 2" in msg and "--sep" in msg
    # a quoted field over two lines: the line the long row starts on
    it.write_text('item_id,title\na,"two\nlines"\nb,x,y\n')
    with pytest.raises(DataError, match="line 4 has 3 fields"):
        read_items(it)


def test_rows_longer_than_the_header_never_shift_the_columns(tmp_path):
    # pandas would make the first column an index and read 'x' as the item id
    it = tmp_path / "items.csv"
    it.write_text("item_id,title\na,x,y\nb,z,w\n")
    with pytest.raises(DataError, match="line 2 has 3 fields but the header has 2"):
        read_items(it)
    it.write_text("item_id,title\na,x,\nb,z,\n")  # a trailing delimiter only: read as written
    assert read_items(it).to_dict("list") == {"item_id": ["a", "b"], "title": ["x", "z"]}


def test_missing_columns_read_as_a_sentence(tmp_path):
    ev = tmp_path / "events.csv"
    ev.write_text("user,item\nu1,a\n")
    with pytest.raises(DataError) as e:
        read_events(ev)
    assert str(e.value) == ("events file 'events.csv' lacks the columns 'user_id', 'item_id'; "
                            "found ['user', 'item']")
    ev.write_text("user_id,item\nu1,a\n")
    with pytest.raises(DataError, match="lacks the column 'item_id'; found"):
        read_events(ev)
    it = tmp_path / "items.csv"
    it.write_text("id;title\na;x\n")
    with pytest.raises(DataError, match="give the delimiter with --items-sep"):
        read_items(it, sep=",")


def test_unknown_items_error_names_only_the_option():
    events = pd.DataFrame({"user_id": ["u"], "item_id": ["x"]})
    with pytest.raises(UnknownIdError) as e:
        drop_unknown_items(events, ["a"])
    assert str(e.value).endswith("give --unknown-items drop to leave them out")
    assert "unknown_items=" not in str(e.value)
