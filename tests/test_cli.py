"""The command line end to end on small files (real encoder, real files, real model dir)."""

from __future__ import annotations

import csv
import json
import logging

import pandas as pd
import pytest

from serendip.cli import main
from tests.conftest import make_blocks
from tests.llm.conftest import ChatServer, chat_server  # noqa: F401


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    data = make_blocks()
    inter = data.interactions
    # ids with leading zeros and commas must come back exactly as written
    uid = {i: f"0{u}" for i, u in enumerate(data.user_ids)}
    iid = {i: f"{x},x" for i, x in enumerate(data.item_ids)}
    pd.DataFrame({"user_id": inter.user.map(uid), "item_id": inter.item.map(iid),
                  "timestamp": inter.timestamp}).to_csv(d / "events.csv", index=False)
    items = data.items.assign(item_id=[iid[i] for i in range(data.n_items)])
    items.to_csv(d / "items.csv", index=False)
    (d / "users.txt").write_text("0u0\n0u25\nstranger\n")
    assert main(["-q", "fit", "--interactions", str(d / "events.csv"),
                 "--items", str(d / "items.csv"), "--out", str(d / "model")]) == 0
    return d


def test_recommend_jsonl_shape_and_ids(files, capsys):
    out = files / "recs.jsonl"
    assert main(["recommend", "--model", str(files / "model"), "--users", str(files / "users.txt"),
                 "-k", "3", "--preset", "balanced", "--format", "jsonl", "--output", str(out)]) == 0
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["user_id"] for x in lines] == ["0u0", "0u25", "stranger"]
    events = pd.read_csv(files / "events.csv", dtype=str)
    seen = set(events[events.user_id == "0u0"].item_id)
    titles = dict(pd.read_csv(files / "items.csv", dtype=str)[["item_id", "title"]].values)
    for row in lines:
        assert len(row["items"]) == 3
        for it in row["items"]:
            assert set(it) == {"item_id", "title", "score", "reasons"}
            assert it["item_id"].endswith(",x") and it["title"] == titles[it["item_id"]]
            assert isinstance(it["score"], float) and 0 < it["score"] <= 1 and it["reasons"]
    assert not {it["item_id"] for it in lines[0]["items"]} & seen


def test_recommend_csv_single_user(files, capsys):
    assert main(["recommend", "--model", str(files / "model"), "--user", "0u30", "-k", "2",
                 "--format", "csv", "--discovery", "0"]) == 0
    rows = list(csv.reader(capsys.readouterr().out.splitlines()))
    assert rows[0] == ["user_id", "rank", "item_id", "title", "score", "reasons"]
    assert [r[1] for r in rows[1:]] == ["1", "2"]
    titles = dict(pd.read_csv(files / "items.csv", dtype=str)[["item_id", "title"]].values)
    assert [r[3] for r in rows[1:]] == [titles[r[2]] for r in rows[1:]]
    assert all(r[0] == "0u30" for r in rows[1:])
    assert main(["recommend", "--model", str(files / "model"), "--user", " "]) == 2
    assert "--user must name a user id, got an empty one" in capsys.readouterr().err


def test_recommend_with_exploration_writes_propensities(files, capsys):
    assert main(["recommend", "--model", str(files / "model"), "--user", "0u3", "-k", "4",
                 "--explore", "1"]) == 0
    row = json.loads(capsys.readouterr().out)
    props = [it["propensity"] for it in row["items"]]
    # explore = 1: every slot shows one of the pool items (the model has 20 items, 8 of them
    # in this user's history, 4 ranked: a pool of 8), each with probability 1 / 8
    assert props == [0.125] * 4
    assert all(it["reasons"][0].startswith("exploring") for it in row["items"])
    assert main(["recommend", "--model", str(files / "model"), "--user", "0u3", "-k", "2",
                 "--explore", "0.5", "--format", "csv"]) == 0
    rows = list(csv.reader(capsys.readouterr().out.splitlines()))
    # 12 unseen items, 2 ranked: a pool of 10
    assert rows[0][-1] == "propensity" and all(float(r[-1]) in (0.5, 0.05) for r in rows[1:])
    # a preset that explores by itself writes the column too
    preset = files / "explorer.toml"
    preset.write_text('[blend]\nease_recent = 1.0\n[explore]\nepsilon = 0.5\npool = 5\n')
    assert main(["recommend", "--model", str(files / "model"), "--user", "0u3", "-k", "2",
                 "--preset", str(preset), "--format", "csv"]) == 0
    rows = list(csv.reader(capsys.readouterr().out.splitlines()))
    assert rows[0][-1] == "propensity" and all(float(r[-1]) in (0.5, 0.1) for r in rows[1:])
    with pytest.raises(SystemExit):
        main(["recommend", "--model", str(files / "model"), "--user", "0u3", "--explore", "2"])
    assert "explore must be in [0, 1], got 2" in capsys.readouterr().err


def test_errors_are_one_line_and_name_the_value(files, capsys, tmp_path):
    assert main(["recommend", "--model", str(tmp_path), "--user", "x"]) == 2
    assert "not a serendip model" in capsys.readouterr().err
    assert main(["recommend", "--model", str(files / "model"), "--user", "x",
                 "--preset", "wild"]) == 2
    assert "'wild'" in capsys.readouterr().err
    assert main(["fit", "--interactions", str(tmp_path / "missing.csv"), "--items",
                 str(files / "items.csv"), "--out", str(tmp_path / "m")]) == 2
    assert "missing.csv" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["recommend", "--model", "m", "--user", "x", "--discovery", "2"])
    assert "discovery must be in [0, 1], got 2" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["recommend", "--model", "m", "--user", "x", "-k", "zero"])
    assert "'zero'" in capsys.readouterr().err


def test_evaluate_writes_report(files, tmp_path, capsys):
    report = tmp_path / "r.html"
    assert main(["-q", "evaluate", "--interactions", str(files / "events.csv"),
                 "--items", str(files / "items.csv"), "--protocol", "temporal,loo",
                 "--models", "popularity,ease", "--presets", "accurate,balanced",
                 "-k", "3", "--report", str(report), "--csv", str(tmp_path / "r.csv")]) == 0
    html = report.read_text()
    assert "<table" in html and html.count("data:image/png;base64") >= 2
    res = pd.read_csv(tmp_path / "r.csv")
    assert {"temporal", "loo"} == set(res.protocol)
    assert (res[res.name == "ease"].ndcg.to_numpy() > res[res.name == "popularity"].ndcg.to_numpy()).all()


def test_evaluate_time_protocol_rolling_cuts(tmp_path, capsys):
    from tests.test_tune import chain_files

    data, files = chain_files(tmp_path, n_users=100)
    report = tmp_path / "r.html"
    assert main(["-q", "evaluate", *files, "--protocol", "time", "--cut", "0.6,0.8",
                 "--models", "transition,popularity", "--presets", "accurate",
                 "--csv", str(tmp_path / "r.csv"), "--report", str(report)]) == 0
    res = pd.read_csv(tmp_path / "r.csv")
    assert set(res.protocol) == {"time@0.6", "time@0.8", "time, mean of 2 cuts"}
    t = res[res.name == "transition"].set_index("protocol")["ndcg"]
    assert t["time, mean of 2 cuts"] == pytest.approx((t["time@0.6"] + t["time@0.8"]) / 2)
    # chain ends are reached only in late rounds: new after the cut, and counted as such
    from serendip.data import make_split

    s = make_split(data, "time", cut=0.6)
    share = s.test["item"].isin(s.new_items).mean()
    assert 0 < share < 1
    assert res[res.protocol == "time@0.6"]["new_item_test_share"].tolist() == pytest.approx([share] * 3)
    html = report.read_text()
    assert "time@0.6" in html and "mean of 2 cuts" in html
    # a bad cut: one line naming it
    assert main(["-q", "evaluate", *files, "--protocol", "time", "--cut", "soon"]) == 2
    err = capsys.readouterr().err
    assert "'soon'" in err and len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------- bringing your own data
def test_fit_out_onto_a_file_fails_before_reading_anything(files, tmp_path, capsys, monkeypatch):
    import serendip.cli as cli

    def no_data(*a, **k):
        raise AssertionError("data read before --out was checked")

    monkeypatch.setattr(cli, "_input_data", no_data)
    target = tmp_path / "model.bin"
    target.write_text("x")
    assert main(["-q", "fit", "--interactions", str(files / "events.csv"), "--items",
                 str(files / "items.csv"), "--out", str(target)]) == 2
    err = capsys.readouterr().err
    assert "model.bin" in err and "is a file" in err and len(err.strip().splitlines()) == 1
    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("x")
    assert main(["-q", "fit", "--interactions", str(files / "events.csv"), "--items",
                 str(files / "items.csv"), "--out", str(other)]) == 2
    assert "not a serendip model" in capsys.readouterr().err


def test_semicolon_latin1_files_and_verbatim_user_ids(tmp_path, capsys, caplog):
    events = tmp_path / "events.csv"
    rows = ["user_id;item_id;timestamp"]
    # " lead" (leading space) and "lead" are two users; ids come back exactly as written
    for u, items in ((" lead", "abc"), ("lead", "def"), ("x", "abd"), ("y", "cef"), ("z", "ab")):
        rows += [f"{u};{i}\u00e9;2024-01-0{n + 1}" for n, i in enumerate(items)]
    rows.append("y;e\u00e9;2024-01-05")  # a repeated (user, item) pair
    rows.append("z;gone;2024-01-06")  # not in the catalog
    events.write_bytes(("\n".join(rows) + "\n").encode("latin-1"))
    items = tmp_path / "items.csv"
    items.write_bytes(("item_id;title\n" + "".join(f"{i}\u00e9;Caf\u00e9 {i}\n" for i in "abcdef")
                       ).encode("latin-1"))
    model = tmp_path / "model"
    args = ["fit", "--interactions", str(events), "--items", str(items), "--out", str(model)]
    assert main(["-q", *args]) == 2  # UTF-8 by default: the line and the fix are named
    err = capsys.readouterr().err
    assert "line 2" in err and "--encoding latin-1" in err and len(err.strip().splitlines()) == 1
    assert main(["-q", *args, "--encoding", "latin-1"]) == 2  # an unknown item stops it
    err = capsys.readouterr().err
    assert "1 event on 1 item id" in err and "'gone'" in err
    with caplog.at_level(logging.WARNING):
        assert main([*args, "--encoding", "latin-1", "--unknown-items", "drop", "-q"]) == 0
    assert "dropped 1 event on 1 item id" in caplog.text
    assert "1 repeated (user, item) row collapsed" in caplog.text
    cap = capsys.readouterr()
    assert "Dataset(" not in cap.out
    assert "Loading" not in cap.err  # -q: no progress bars, the library's included
    assert "on events.csv (5 users, 6 items and 14 interactions)" in cap.out
    users = tmp_path / "users.txt"
    users.write_text(" lead\nlead\n")
    out = tmp_path / "recs.jsonl"
    assert main(["-q", "recommend", "--model", str(model), "--users", str(users), "-k", "2",
                 "--output", str(out)]) == 0
    cap = capsys.readouterr()
    assert "cold-start" not in cap.err  # both users are known under their own ids
    assert "wrote 2 lists to" in cap.err
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["user_id"] for x in lines] == [" lead", "lead"]
    seen = {" lead": {"a\u00e9", "b\u00e9", "c\u00e9"}, "lead": {"d\u00e9", "e\u00e9", "f\u00e9"}}
    for row in lines:
        got = {it["item_id"] for it in row["items"]}
        assert len(got) == 2 and not got & seen[row["user_id"]]


def test_evaluate_on_a_tiny_catalog_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "items.csv").write_text("item_id,title\na,Apple\nb,Banana\nc,Cherry\n")
    (tmp_path / "events.csv").write_text(
        "user_id,item_id,timestamp\nu1,a,1\nu1,b,2\nu2,b,3\nu2,c,4\nu3,a,5\nu3,c,6\n")
    assert main(["-q", "evaluate", "--interactions", str(tmp_path / "events.csv"), "--items",
                 str(tmp_path / "items.csv"), "--protocol", "random"]) == 2
    err = capsys.readouterr().err
    assert "holds out no test events" in err and "3 items" in err
    assert len(err.strip().splitlines()) == 1


def test_recommend_candidates_and_filters(files, tmp_path, capsys, caplog):
    from serendip.pipeline import Recommender

    items = pd.read_csv(files / "items.csv", dtype=str)
    genre = dict(zip(items.item_id, items.genres, strict=True))
    cands = tmp_path / "cands.txt"
    wanted = ["i12,x", "i15,x", "i3,x", "i7,x"]
    cands.write_text("\n".join([*wanted, " i12,x", "nope"]) + "\n")  # ids verbatim
    assert main(["recommend", "--model", str(files / "model"), "--user", "0u0", "-k", "10",
                 "--candidates", str(cands)]) == 0
    got = [it["item_id"] for it in json.loads(capsys.readouterr().out)["items"]]
    history = set(pd.read_csv(files / "events.csv", dtype=str).query("user_id == '0u0'").item_id)
    assert set(got) == set(wanted) - history and got
    assert "2 candidate ids of 6" in caplog.text and "' i12,x'" in caplog.text
    # filters: the HTTP API's semantics (case-insensitive, every filter must match)
    assert main(["-q", "recommend", "--model", str(files / "model"), "--user", "0u0", "-k", "5",
                 "--filter", "genres=b"]) == 0
    got = [it["item_id"] for it in json.loads(capsys.readouterr().out)["items"]]
    assert len(got) == 5 and {genre[i] for i in got} == {"B"}
    assert main(["-q", "recommend", "--model", str(files / "model"), "--user", "0u0", "-k", "5",
                 "--filter", "genres=B", "--candidates", str(cands)]) == 0
    got = [it["item_id"] for it in json.loads(capsys.readouterr().out)["items"]]
    assert set(got) == {"i12,x", "i15,x"} - history
    rec = Recommender.load(files / "model")
    assert rec.data.n_items == 20  # nothing else is left out
    assert main(["recommend", "--model", str(files / "model"), "--user", "0u0",
                 "--filter", "colour=red"]) == 2
    assert "'colour'" in capsys.readouterr().err
    assert main(["recommend", "--model", str(files / "model"), "--user", "0u0",
                 "--filter", "genres=C"]) == 2
    err = capsys.readouterr().err
    assert "--filter 'genres=C' matches no item of the model; genres values are e.g. 'A', 'B'" \
        in err and len(err.strip().splitlines()) == 1
    # the HTTP API's 'column:value' form works too
    assert main(["-q", "recommend", "--model", str(files / "model"), "--user", "0u0", "-k", "5",
                 "--filter", "genres:b"]) == 0
    got = [it["item_id"] for it in json.loads(capsys.readouterr().out)["items"]]
    assert len(got) == 5 and {genre[i] for i in got} == {"B"}
    assert main(["recommend", "--model", str(files / "model"), "--user", "0u0",
                 "--filter", "genres=A", "--filter", "genres:B"]) == 2
    assert "no item of the model matches every --filter ('genres=A' and 'genres:B')" in \
        capsys.readouterr().err
    assert "COLUMN:VALUE" in _help("recommend")
    (tmp_path / "none.txt").write_text("x\ny\n")
    assert main(["recommend", "--model", str(files / "model"), "--user", "0u0",
                 "--candidates", str(tmp_path / "none.txt")]) == 2
    assert "none of the 2 candidate ids" in capsys.readouterr().err


def test_recommend_progress_and_singular_output(files, tmp_path, capsys, caplog):
    users = tmp_path / "users.txt"
    users.write_text("0u1\n0u2\n 0u1\n")
    out = tmp_path / "r.csv"
    assert main(["recommend", "--model", str(files / "model"), "--users", str(users),
                 "--format", "csv", "--output", str(out)]) == 0
    err = capsys.readouterr().err
    assert "recommend" in err and "3/3" in err  # the progress bar, on stderr
    assert "1 of 3 user ids is not in the model; it gets a cold-start list" in caplog.text
    assert "wrote 3 lists" in err
    rows = list(csv.reader(out.read_text().splitlines()))
    assert {r[0] for r in rows[1:]} == {"0u1", "0u2", " 0u1"}
    # -q after the command turns the bar off; one list is "1 list"
    assert main(["recommend", "--model", str(files / "model"), "--user", "0u1", "-q",
                 "--output", str(out)]) == 0
    err = capsys.readouterr().err
    assert err.strip() == f"wrote 1 list to {out}"
    assert main(["recommend", "--model", str(files / "model"), "--user", "0u1",
                 "--output", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err


# ---------------------------------------------------------------- the command line itself
def _subparsers(parser):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield name, sub
                yield from ((f"{name} {n}", s) for n, s in _subparsers(sub))


def _help(command):
    from serendip.cli import build_parser

    return dict(_subparsers(build_parser()))[command].format_help()


def test_every_option_has_help_defaults_and_examples(capsys):
    from serendip.cli import build_parser

    parser = build_parser()
    subs = {"serendip": parser, **dict(_subparsers(parser))}
    assert {"fit", "tune", "recommend", "evaluate", "demo", "serve", "ope", "ope obd",
            "simulate", "chat", "keys",
            "keys create", "keys list", "keys revoke", "users", "users erase",
            "users export"} <= set(subs)
    for name, sub in subs.items():
        for action in sub._actions:
            assert action.help, f"{name} {action.option_strings or action.dest} has no help"
        text = sub.format_help()
        assert "examples:" in text and "serendip " in text.split("examples:")[1], name
    rec = subs["recommend"].format_help()
    assert "items per list (default: 10)" in rec and "(default: balanced)" in rec
    assert "adaptive" in rec and "adaptive" in subs["evaluate"].format_help()
    assert "(default: 600.0)" in subs["fit"].format_help()
    assert "(default: None)" not in rec
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    from serendip import __version__

    assert capsys.readouterr().out.strip() == f"serendip {__version__}"


def test_flags_after_the_command_and_no_dead_flags(capsys):
    from serendip.cli import build_parser

    p = build_parser()
    args = p.parse_args(["recommend", "--model", "m", "--user", "u", "-q", "-v"])
    assert args.quiet and args.verbose
    args = p.parse_args(["-q", "recommend", "--model", "m", "--user", "u"])
    assert args.quiet and not args.verbose
    args = p.parse_args(["recommend", "--model", "m", "--user", "u"])
    assert not args.quiet and not args.verbose
    with pytest.raises(SystemExit):  # fit --preset did nothing: it is gone
        p.parse_args(["fit", "--dataset", "movielens", "--out", "m", "--preset", "discovery"])
    assert "--preset" in capsys.readouterr().err
    for command in ("fit", "evaluate", "tune"):
        a = p.parse_args([command, "--dataset", "lastfm", "--out", "o", "--unknown-items",
                          "drop", "--sep", ";", "--encoding", "latin-1"]
                         if command != "evaluate" else
                         [command, "--dataset", "lastfm", "--unknown-items", "drop"])
        assert a.unknown_items == "drop"
        assert p.parse_args([command, "--dataset", "lastfm"]
                            + (["--out", "o"] if command != "evaluate" else [])
                            ).unknown_items == "error"


def test_choice_lists_match_the_library():
    from serendip.cli import KEY_ROLES, PRESET_NAMES, UNKNOWN_ITEMS
    from serendip.data.io import UNKNOWN_ITEMS as READER_CHOICES
    from serendip.pipeline import PRESETS
    from serendip.store import ROLES

    assert PRESET_NAMES == PRESETS
    assert UNKNOWN_ITEMS == READER_CHOICES
    assert set(KEY_ROLES) == set(ROLES)


def test_serve_passes_unknown_items(monkeypatch, tmp_path):
    import serendip.service.app as app

    got = {}

    def fake_serve(**kwargs):
        got.update(kwargs)
        return 0

    monkeypatch.setattr(app, "serve", fake_serve)
    assert main(["serve", "--data-dir", str(tmp_path), "--seed-interactions", "e.csv",
                 "--unknown-items", "drop", "--refresh-interval", "0"]) == 0
    assert got["unknown_items"] == "drop" and got["seed_interactions"] == "e.csv"
    assert main(["serve", "--data-dir", str(tmp_path)]) == 0
    assert got["unknown_items"] == "error"


# ---------------------------------------------------------------- keys and users
def test_keys_create_list_revoke(tmp_path, capsys):
    from serendip.store import open_store

    d = str(tmp_path)
    assert main(["keys", "list", "--data-dir", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["keys", "create", "--name", "shop", "--role", "write", "--data-dir", d]) == 0
    cap = capsys.readouterr()
    key = cap.out.strip()
    assert "created write key 'shop'" in cap.err and "only this once" in cap.err
    assert main(["keys", "create", "--name", "look", "--data-dir", d]) == 0  # read by default
    read_key = capsys.readouterr().out.strip()
    store = open_store(f"sqlite:///{tmp_path / 'serendip.db'}")
    try:
        assert store.check_api_key(key) == "write"
        assert store.check_api_key(read_key) == "read"
    finally:
        store.close()
    assert main(["keys", "create", "--name", "shop", "--data-dir", d]) == 2
    assert "'shop'" in capsys.readouterr().err
    assert main(["keys", "list", "--data-dir", d]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:2] == ["name", "role"]
    assert [ln.split()[:2] for ln in out[1:]] == [["shop", "write"], ["look", "read"]]
    assert all(ln.rstrip().endswith("active") for ln in out[1:])
    assert key not in "\n".join(out)
    assert main(["keys", "revoke", "shop", "--data-dir", d]) == 0
    assert "revoked key 'shop'" in capsys.readouterr().err
    assert main(["keys", "revoke", "shop", "--data-dir", d]) == 2
    assert "no active API key named 'shop'" in capsys.readouterr().err
    assert main(["keys", "list", "--data-dir", d]) == 0
    rows = capsys.readouterr().out.splitlines()[1:]
    assert "revoked" in rows[0] and rows[1].rstrip().endswith("active")
    store = open_store(f"sqlite:///{tmp_path / 'serendip.db'}")
    try:
        assert store.check_api_key(key) is None
    finally:
        store.close()


def test_users_export_and_erase(tmp_path, capsys):
    from serendip.store import EventRecord, open_store

    url = f"sqlite:///{tmp_path / 's.db'}"
    store = open_store(url)
    try:
        store.append_events([EventRecord(" u1", "a", "like", 10.0), EventRecord(" u1", "b"),
                             EventRecord("u1", "a", "click", 11.0)])
    finally:
        store.close()
    out = tmp_path / "u.json"
    assert main(["users", "export", " u1", "--store", url, "--out", str(out)]) == 0
    assert "wrote the data of user ' u1'" in capsys.readouterr().err
    data = json.loads(out.read_text())
    assert data["user_id"] == " u1"
    assert sorted(e["item_id"] for e in data["events"]) == ["a", "b"]  # not "u1"'s
    assert main(["users", "export", " u1", "--store", url]) == 0
    assert json.loads(capsys.readouterr().out) == data
    assert main(["users", "erase", " u1", "--store", url]) == 0
    assert "erased user ' u1': 2 events" in capsys.readouterr().err
    assert main(["users", "erase", " u1", "--store", url]) == 0
    assert "nothing erased" in capsys.readouterr().err
    store = open_store(url)
    try:
        left = store.events_frame()
    finally:
        store.close()
    assert left["user_id"].tolist() == ["u1"]


# ---------------------------------------------------------------- what a new user met
def test_recommend_scores_share_the_api_scale_for_every_preset(files, capsys):
    from serendip.cli import _scores, _titles
    from serendip.data import Dataset
    from serendip.types import ItemList

    model = str(files / "model")
    assert main(["-q", "recommend", "--model", model, "--user", "0u0", "-k", "3",
                 "--preset", "accurate"]) == 0
    # no reranking: the top three by relevance, 1 - rank / 20 items
    assert [it["score"] for it in json.loads(capsys.readouterr().out)["items"]] == [
        1.0, 0.95, 0.9]
    for preset in ("balanced", "discovery"):
        assert main(["-q", "recommend", "--model", model, "--user", "0u0", "-k", "4",
                     "--preset", preset, "--format", "csv"]) == 0
        rows = list(csv.reader(capsys.readouterr().out.splitlines()))[1:]
        for r in rows:  # a share of the 20-item catalog, whatever the rerankers did
            assert 0 < float(r[4]) <= 1 and float(r[4]) * 20 == pytest.approx(
                round(float(r[4]) * 20), abs=1e-4)
    # a list without ranks keeps its own scores
    assert _scores(ItemList([3, 1], [17.891234567, 2.0]), 20) == [17.891235, 2.0]
    ranked = ItemList([3, 1], [17.9, 2.0], fields={"relevance_rank": [0, 4]})
    assert _scores(ranked, 20) == [1.0, 0.8]
    data = Dataset.from_frames(pd.DataFrame({"user_id": ["u"], "item_id": ["m1"]}),
                               pd.DataFrame({"item_id": ["m1"], "title": ["Close Shave, A (1995)"]}))
    assert _titles(data)(0) == "A Close Shave (1995)"


def test_events_and_items_delimiters_apart_and_tune_usage_that_runs(files, tmp_path, capsys,
                                                                    monkeypatch):
    import shlex
    import tomllib
    from importlib import resources

    import tomli_w

    from serendip.cli import _tuned_usage, build_parser
    from serendip.pipeline import Recommender

    # events ';'-separated, the catalog comma-separated with a ';' in a title
    events = tmp_path / "events.csv"
    pd.read_csv(files / "events.csv", dtype=str).to_csv(events, sep=";", index=False)
    items = pd.read_csv(files / "items.csv", dtype=str)
    items.loc[3, "title"] = "alpha; item 3"
    items.to_csv(tmp_path / "items.csv", index=False)
    bad = ["-q", "fit", "--interactions", str(events), "--sep", ";", "--items",
           str(tmp_path / "items.csv"), "--items-sep", ";", "--out", str(tmp_path / "m")]
    assert main(bad) == 2
    err = capsys.readouterr().err
    assert "items.csv' line 5 has 2 fields but the header has 1" in err
    assert "--items-sep ','" in err and len(err.strip().splitlines()) == 1
    # what tune writes, and the commands it prints: run as printed
    tuned = tmp_path / "tuned"
    (tuned / "presets").mkdir(parents=True)
    config = Recommender.load(files / "model").config.model_dump(exclude_none=True)
    (tuned / "fit.toml").write_text(tomli_w.dumps(config))
    shipped = resources.files("serendip.presets").joinpath("balanced.toml").read_text()
    (tuned / "presets" / "balanced.toml").write_text(shipped)
    args = build_parser().parse_args(["tune", "--interactions", str(events), "--sep", ";",
                                      "--items", str(tmp_path / "items.csv"), "--out",
                                      str(tuned)])
    lines = _tuned_usage(args, ["accurate", "balanced"])
    fit = next(ln for ln in lines if ln.strip().startswith("serendip fit"))
    rec = next(ln for ln in lines if ln.strip().startswith("serendip recommend"))
    assert "--config " + str(tuned / "fit.toml") in fit and "--sep ';'" in fit
    monkeypatch.chdir(tmp_path)
    assert main(["-q", *shlex.split(fit)[1:]]) == 0  # --sep: the events file only
    assert tomllib.loads((tuned / "fit.toml").read_text())["models"].keys() == \
        Recommender.load(tmp_path / "model").scorers.keys()
    assert main(["-q", *shlex.split(rec.replace("--user ID", "--user 0u0"))[1:]]) == 0
    got = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert got["user_id"] == "0u0" and len(got["items"]) == 10
    assert any("alpha; item 3" == t for t in Recommender.load(tmp_path / "model").data.items.title)


def test_serve_seed_options_and_warnings(monkeypatch, tmp_path, capsys, caplog):
    import serendip.service.app as app
    from serendip.store import EventRecord, ItemRecord, open_store

    got = {}

    def fake_serve(**kwargs):
        got.update(kwargs)
        return 0

    monkeypatch.setattr(app, "serve", fake_serve)
    d = str(tmp_path / "fresh")
    seed = ["--seed-interactions", "e.csv", "--seed-items", "i.csv"]
    assert main(["serve", "--data-dir", d, *seed, "--sep", ";", "--items-sep", "tab",
                 "--encoding", "latin-1"]) == 0
    assert (got["sep"], got["items_sep"], got["encoding"]) == (";", "tab", "latin-1")
    assert not caplog.text  # a new data directory, a catalog: nothing to warn about
    assert main(["serve", "--data-dir", d, "--encoding", "latin-1"]) == 2
    assert "--seed-interactions" in capsys.readouterr().err
    # events without a catalog: the items are bare ids
    assert main(["serve", "--data-dir", d, "--seed-interactions", "e.csv"]) == 0
    assert "without --seed-items: the items have no text" in caplog.text
    assert "give --seed-items FILE" in caplog.text
    caplog.clear()
    # a store that already holds data ignores the seed files, and says so
    store = open_store(f"sqlite:///{tmp_path / 'serendip.db'}")
    try:
        store.upsert_items([ItemRecord("a", {"title": "Apple"})])
        store.append_events([EventRecord("u1", "a")])
    finally:
        store.close()
    assert main(["serve", "--data-dir", str(tmp_path), *seed]) == 0
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "\n" not in lines[0]
    assert "already holds data (1 item, 1 event), so --seed-interactions and --seed-items " \
        "are ignored" in lines[0] and "new --data-dir" in lines[0]
    assert got["seed_interactions"] == "e.csv"  # the service decides; the warning only tells


def test_seed_files_with_their_own_delimiters_and_encoding(tmp_path):
    from serendip.service.engine import Engine, EngineConfig
    from serendip.store import open_store

    ev = tmp_path / "events.csv"
    ev.write_bytes("user_id;item_id\nu1;caf\u00e9\nu2;tea\n".encode("latin-1"))
    it = tmp_path / "items.csv"
    it.write_bytes("item_id,title\ncaf\u00e9,Caf\u00e9; cr\u00e8me\ntea,Tea\n".encode("latin-1"))
    store = open_store(f"sqlite:///{tmp_path / 's.db'}")
    engine = Engine(store, EngineConfig(data_dir=tmp_path, seed_interactions=str(ev),
                                        seed_items=str(it), seed_sep=";",
                                        seed_encoding="latin-1", catalog_poll=None))
    try:
        engine.seed()  # the events' ';' is not the catalog's ','; both files Latin-1
        items = store.items_frame().set_index("item_id")
        assert items.loc["caf\u00e9", "title"] == "Caf\u00e9; cr\u00e8me"
        assert sorted(store.events_frame()["item_id"]) == ["caf\u00e9", "tea"]
    finally:
        engine.close()
        store.close()


def test_quiet_leaves_no_progress_bar_warning():
    import subprocess
    import sys

    # the hub library imported while -q holds its bars off: turning them back on must not warn
    code = ("import warnings; warnings.simplefilter('error')\n"
            "from serendip.cli import _library_progress\n"
            "restore = _library_progress(False)\n"
            "import transformers.utils.logging\n"
            "restore()\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    assert "Cannot enable progress bars" not in run.stderr


# ---------------------------------------------------------------------------- enrich
ENRICH_ITEMS = (
    "item_id,title,genres,price,blurb\n"
    '007,Alpha (1999),Comedy|Drama,1.50,"A long blurb about alpha that easily runs past the '
    'eighty character limit, with a comma."\n'
    "b,Beta,Drama,2.00,\n"
    "c,Gamma (2001),Comedy,3,short\n"
    'd,Delta,,04,"Another long blurb, this one about delta, well beyond the eighty characters '
    'threshold set."\n'
)
# chosen by 3, 2, 1 and 1 people: 007 is the only item with full, long text
ENRICH_EVENTS = ("user_id,item_id,timestamp\nu1,007,1\nu1,b,2\nu2,007,3\nu2,c,4\nu3,d,5\n"
                 "u3,b,6\nu4,007,7\n")


@pytest.fixture()
def thin_catalog(tmp_path):
    (tmp_path / "items.csv").write_text(ENRICH_ITEMS)
    (tmp_path / "events.csv").write_text(ENRICH_EVENTS)
    return tmp_path


def _csv_rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def test_enrich_describes_thin_items_and_keeps_the_catalog(thin_catalog, capsys):
    from serendip.data import Dataset
    from serendip.text.templates import item_texts

    d = thin_catalog
    out = d / "items-enriched.csv"
    assert main(["-q", "enrich", "--interactions", str(d / "events.csv"),
                 "--items", str(d / "items.csv"), "--out", str(out)]) == 0
    said = capsys.readouterr().out.strip()
    assert said.startswith("described 3 items of 4") and said.endswith(str(out))
    before, after = _csv_rows(d / "items.csv"), _csv_rows(out)
    assert after[0] == before[0] + ["generated_description"]
    # every original cell exactly as written: '007', '1.50', '04', the empty blurb
    assert [r[:-1] for r in after] == before
    desc = {r[0]: r[-1] for r in after[1:]}
    assert desc["007"] == ""  # long text and no empty column: not thin
    assert desc["b"].startswith("A drama.") and "also chose Alpha (1999)" in desc["b"]
    assert desc["c"].startswith("A 2001 comedy.")
    assert desc["d"] != ""  # long text, but its genres are empty
    # the written file is a catalog again, and the encoder's text now carries the column
    data = Dataset.from_files(d / "events.csv", out)
    texts = dict(zip(data.item_ids, item_texts(data), strict=True))
    assert "generated_description: A drama." in texts["b"]
    assert "generated_description" not in texts["007"]
    # and fit takes it: the model's catalog keeps the descriptions its vectors were made from
    from serendip.pipeline import Recommender

    capsys.readouterr()
    assert main(["-q", "fit", "--interactions", str(d / "events.csv"), "--items", str(out),
                 "--out", str(d / "model")]) == 0
    kept = Recommender.load(d / "model").data.items.set_index("item_id")
    assert kept.loc["b", "generated_description"] == desc["b"]


def test_enrich_budget_takes_the_least_chosen_first(thin_catalog, capsys):
    d = thin_catalog
    out = d / "one.csv"
    assert main(["-q", "enrich", "--interactions", str(d / "events.csv"),
                 "--items", str(d / "items.csv"), "--out", str(out), "--budget", "1"]) == 0
    assert capsys.readouterr().out.startswith("described 1 item of 4 ")
    desc = {r[0]: r[-1] for r in _csv_rows(out)[1:]}
    # c and d are chosen once each; the tie goes to the earlier item
    assert [k for k, v in desc.items() if v] == ["c"]
    # enriching the enriched file keeps c's description and adds the others'
    again = d / "two.parquet"
    assert main(["-q", "enrich", "--interactions", str(d / "events.csv"),
                 "--items", str(out), "--out", str(again)]) == 0
    assert capsys.readouterr().out.startswith("described 2 items of 4 ")
    table = pd.read_parquet(again).set_index("item_id")["generated_description"]
    assert table["c"] == desc["c"] and table["b"] and table["d"]
    assert pd.isna(table["007"]) or table["007"] == ""


@pytest.mark.parametrize(("args", "named"), [
    (["--budget", "x"], "--budget must be a non-negative integer, got 'x'"),
    (["--budget", "-2"], "--budget must be a non-negative integer, got '-2'"),
    (["--min-chars", "1.5"], "--min-chars must be a non-negative integer, got '1.5'"),
])
def test_enrich_bad_count_is_one_line(thin_catalog, capsys, args, named):
    d = thin_catalog
    assert main(["-q", "enrich", "--interactions", str(d / "events.csv"),
                 "--items", str(d / "items.csv"), "--out", str(d / "o.csv"), *args]) == 2
    err = capsys.readouterr().err
    assert named in err and len(err.strip().splitlines()) == 1
    assert not (d / "o.csv").exists()


def test_enrich_bad_out_suffix_is_one_line(thin_catalog, capsys):
    d = thin_catalog
    assert main(["-q", "enrich", "--interactions", str(d / "events.csv"),
                 "--items", str(d / "items.csv"), "--out", str(d / "o.json")]) == 2
    err = capsys.readouterr().err
    assert "'.json'" in err and len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------------------- text generator
def test_enrich_with_a_generator_checks_and_caches_its_texts(thin_catalog, capsys, tmp_path,
                                                             chat_server: ChatServer):  # noqa: F811
    d = thin_catalog
    # the least chosen first: c, d (once each), then b (twice)
    chat_server.script.extend([("ok", "A comedy from 2001."),
                               ("ok", "An invented tale by Somebody Else."),
                               ("ok", "A drama chosen with Alpha.")])
    store = f"sqlite:///{tmp_path / 'cache.db'}"
    args = ["-q", "enrich", "--interactions", str(d / "events.csv"), "--items",
            str(d / "items.csv"), "--llm-url", chat_server.url, "--llm-model", "m",
            "--store", store]
    assert main([*args, "--out", str(d / "a.csv")]) == 0
    said = capsys.readouterr().out
    assert said.startswith("described 3 items of 4 in ") and "(2 written by m, 1 from the " \
        "data after the generator's answer failed or was refused)" in said
    desc = {r[0]: r[-1] for r in _csv_rows(d / "a.csv")[1:]}
    assert desc["c"] == "A comedy from 2001." and desc["b"] == "A drama chosen with Alpha."
    assert "Somebody" not in desc["d"] and desc["d"]  # the data's own description
    assert len(chat_server.seen) == 3
    # again with the same store: every text from its cache, the same file
    assert main([*args, "--out", str(d / "b.csv")]) == 0
    assert len(chat_server.seen) == 3
    assert _csv_rows(d / "b.csv") == _csv_rows(d / "a.csv")


@pytest.mark.parametrize(("args", "named"), [
    (["--llm-model", "m"], "--llm-model 'm' needs --llm-url"),
    (["--llm-url", "http://127.0.0.1:9/v1", "--llm-model", "m", "--llm-api-key-env",
      "SERENDIP_TEST_UNSET_KEY"], "'SERENDIP_TEST_UNSET_KEY'"),
    (["--llm-url", "http://127.0.0.1:9/v1", "--llm-model", "m", "--llm-deadline", "0"],
     "--llm-deadline must be > 0 seconds, got 0.0"),
])
def test_serve_bad_generator_options_are_one_line(capsys, monkeypatch, tmp_path, args, named):
    monkeypatch.delenv("SERENDIP_TEST_UNSET_KEY", raising=False)
    assert main(["serve", "--data-dir", str(tmp_path / "d"), *args]) == 2
    err = capsys.readouterr().err
    assert named in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "d").exists()  # refused before anything was made


def test_serve_reads_the_generator_from_the_environment(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("SERENDIP_LLM_URL", "localhost:8000")
    assert main(["serve", "--data-dir", str(tmp_path / "d"), "--llm-model", "m"]) == 2
    err = capsys.readouterr().err
    assert "SERENDIP_LLM_URL must be an http:// or https:// URL, got 'localhost:8000'" in err
