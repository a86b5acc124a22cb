"""``serendip chat``: a conversation piped through the command, with and without a generator.

The model is fitted with the hashing encoder of the service tests, and the command's encoder
is that one too (no language model is loaded)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd
import pytest

from serendip.cli import main
from serendip.data import Dataset
from serendip.pipeline import Recommender
from tests.llm.conftest import ChatServer, chat_server, tiny_lm_dir  # noqa: F401
from tests.service.conftest import SMALL, HashEncoder, write_seed


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("chat")
    seed = write_seed(d)
    data = Dataset.from_files(seed.interactions, seed.items)
    rec = Recommender.fit(data, SMALL, progress=False, encoder=HashEncoder())  # type: ignore[arg-type]
    rec.save(d / "model")
    return d / "model"


@pytest.fixture(autouse=True)
def hashing_encoder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("serendip.service.lifecycle.Encoder", lambda cfg: HashEncoder())


def _chat(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], lines: str,
          *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr("sys.stdin", io.StringIO(lines))
    code = main(["-q", "chat", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def _titles(model_dir: Path) -> dict[str, str]:
    items = pd.read_csv(model_dir.parent / "items.csv", dtype=str)
    return dict(zip(items["item_id"], items["title"], strict=True))


def test_two_piped_messages_refine_one_state(model_dir, monkeypatch, capsys):
    code, out, err = _chat(monkeypatch, capsys,
                           "I loved funny space cartoon i3\nsomething less dark\n",
                           "--model", str(model_dir), "--k", "4", "--json")
    assert code == 0, err
    turns = [json.loads(x) for x in out.splitlines()]
    assert [t["turn"] for t in turns] == [1, 2]
    first, second = turns
    assert first["state"]["liked"] == ["i3"] and first["state"]["avoid"] == []
    # the second message keeps what the first said and adds to it
    assert second["state"]["liked"] == ["i3"] and second["state"]["avoid"] == ["dark"]
    assert second["state"]["turns"] == 2
    assert second["conversation_id"] == first["conversation_id"]
    titles = _titles(model_dir)
    for t in turns:
        assert t["parse_source"] == "rules" and t["reply_source"] == "template"
        assert [it["rank"] for it in t["items"]] == [1, 2, 3, 4]
        assert all(titles[it["item_id"]] == it["title"] for it in t["items"])
        assert "i3" not in [it["item_id"] for it in t["items"]]  # what was named is not offered
        assert "funny space cartoon i3" in t["reply"]
    # the liked item is a comedy: its taste group leads the list
    assert sum(it["item_id"] in {f"i{i}" for i in range(12)} for it in first["items"]) >= 3


def test_text_output_and_quit(model_dir, monkeypatch, capsys):
    code, out, err = _chat(monkeypatch, capsys,
                           "a sad war story\n\nquit\nthis line is never read\n",
                           "--model", str(model_dir), "-k", "3")
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 4 and lines[0].startswith("serendip: ")
    assert [ln.split(".")[0].strip() for ln in lines[1:]] == ["1", "2", "3"]
    titles = set(_titles(model_dir).values())
    assert all(ln.split(". ", 1)[1].split("  [")[0] in titles for ln in lines[1:])


def test_a_generator_reads_the_messages(model_dir, monkeypatch, capsys,
                                        chat_server: ChatServer):  # noqa: F811
    update = {"liked": ["sad war story i20"], "disliked": [], "genres": [], "not_genres": [],
              "avoid": [], "era": None, "discovery": None, "text": ""}
    chat_server.script.extend([("text", json.dumps(update)), ("ok", "Here you are.")])
    code, out, err = _chat(monkeypatch, capsys, "that war one, number twenty\n",
                           "--model", str(model_dir), "--json", "--llm-url", chat_server.url,
                           "--llm-model", "m")
    assert code == 0, err
    turn = json.loads(out)
    assert turn["parse_source"] == "generator" and turn["state"]["liked"] == ["i20"]
    assert turn["reply_source"] == "generator" and turn["reply"] == "Here you are."


def test_a_local_model_directory_that_cannot_answer_leaves_the_rules(
        model_dir, monkeypatch, capsys, tiny_lm_dir: Path):  # noqa: F811
    # the tiny random model's context (128 tokens) is shorter than the prompts: every call
    # fails, and each turn is answered by the rules and the template, as without a generator
    code, out, err = _chat(monkeypatch, capsys, "I loved funny space cartoon i3\n",
                           "--model", str(model_dir), "--json", "--llm-model-dir",
                           str(tiny_lm_dir))
    assert code == 0, err
    turn = json.loads(out)
    assert turn["parse_source"] == "rules" and turn["reply_source"] == "template"
    assert turn["state"]["liked"] == ["i3"]


@pytest.mark.parametrize(("args", "named"), [
    (["--model", "no-such-model-dir"], "no-such-model-dir"),
    (["--llm-model", "qwen"], "'qwen'"),
    (["--llm-url", "ftp://x", "--llm-model", "m"], "'ftp://x'"),
    (["--llm-url", "http://127.0.0.1:9/v1", "--llm-model-dir", "d"], "'d'"),
    (["--preset", "nope"], "'nope'"),
])
def test_bad_options_are_one_line_errors(model_dir, monkeypatch, capsys, args, named):
    if args[0] != "--model":
        args = ["--model", str(model_dir), *args]
    code, out, err = _chat(monkeypatch, capsys, "hello\n", *args)
    assert code == 2 and out == ""
    assert err.startswith("serendip: error: ") and named in err and err.count("\n") == 1
