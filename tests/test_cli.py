"""The command line end to end on small files (real encoder, real files, real model dir)."""

from __future__ import annotations

import csv
import json

import pandas as pd
import pytest

from serendip.cli import main
from tests.conftest import make_blocks


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
    for row in lines:
        assert len(row["items"]) == 3
        for it in row["items"]:
            assert set(it) == {"item_id", "score", "reasons"}
            assert it["item_id"].endswith(",x")
            assert isinstance(it["score"], float) and it["reasons"]
    assert not {it["item_id"] for it in lines[0]["items"]} & seen


def test_recommend_csv_single_user(files, capsys):
    assert main(["recommend", "--model", str(files / "model"), "--user", "0u30", "-k", "2",
                 "--format", "csv", "--discovery", "0"]) == 0
    rows = list(csv.reader(capsys.readouterr().out.splitlines()))
    assert rows[0] == ["user_id", "rank", "item_id", "score", "reasons"]
    assert [r[1] for r in rows[1:]] == ["1", "2"]
    assert all(r[0] == "0u30" for r in rows[1:])


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
