"""``recommend --processes N``: lists made by forked copies of the process that share its
loaded model, equal to the single-process lists bit for bit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from serendip.cli import main
from serendip.distributed import SHARD, recommend_batch_local
from serendip.errors import ConfigError
from serendip.pipeline import Recommender
from tests.conftest import assert_same_lists, sharded_model


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    d = tmp_path_factory.mktemp("local") / "model"
    return d, sharded_model(d)


@pytest.mark.parametrize("preset", ["balanced", "accurate", "discovery"])
def test_forked_lists_equal_one_process(model: tuple[Path, list[str]], preset: str) -> None:
    d, users = model
    rec = Recommender.load(d)
    pipe = rec.pipeline(preset)
    queries = [pipe.query(u) for u in [*users, "a stranger"]]
    allowed = np.arange(5, 35)
    expected = pipe.recommend_many(queries, 7, None, allowed)
    done: list[int] = []
    got = recommend_batch_local(pipe, queries, 7, candidates=allowed, processes=2,
                                progress=done.append)
    assert_same_lists(expected, got)
    assert sorted(done) == sorted([SHARD, SHARD, len(queries) - 2 * SHARD])
    assert all(set(x.items.tolist()) <= set(allowed.tolist()) for x in got)


def test_order_dependent_presets_and_bad_counts_are_refused(model: tuple[Path, list[str]]
                                                            ) -> None:
    d, users = model
    rec = Recommender.load(d)
    queries = [rec.pipeline("balanced").query(u) for u in users]
    with pytest.raises(ConfigError, match="bandit"):
        recommend_batch_local(rec.pipeline("adaptive"), queries, 5)
    with pytest.raises(ConfigError, match="exploration"):
        recommend_batch_local(rec.pipeline("balanced"), queries, 5, explore=0.3)
    assert_same_lists(recommend_batch_local(rec.pipeline("balanced"), queries, 5,
                                            processes=np.int64(2)),
                      rec.pipeline("balanced").recommend_many(queries, 5))
    for bad in (0, -2, True, 1.5):
        with pytest.raises(ConfigError, match="processes must be a positive integer"):
            recommend_batch_local(rec.pipeline("balanced"), queries, 5,
                                  processes=bad)  # type: ignore[arg-type]


def test_cli_processes_writes_the_same_file(model: tuple[Path, list[str]], tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    d, users = model
    (tmp_path / "users.txt").write_text("\n".join([*users[::-1], "nobody"]) + "\n")
    outs = []
    for extra in ([], ["--processes", "2"]):
        out = tmp_path / f"recs{len(extra)}.jsonl"
        assert main(["-q", "recommend", "--model", str(d), "--users", str(tmp_path / "users.txt"),
                     "-k", "5", "--output", str(out), *extra]) == 0
        outs.append(out.read_bytes())
    assert outs[0] == outs[1] and len(outs[0].splitlines()) == len(users) + 1
    capsys.readouterr()
    assert main(["recommend", "--model", str(d), "--user", users[0], "--processes", "2",
                 "--ray"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["serendip: error: give --processes or --ray, not both"]
    with pytest.raises(SystemExit):
        main(["recommend", "--model", str(d), "--user", users[0], "--processes", "0"])
    assert "expected a positive integer, got 0" in capsys.readouterr().err
