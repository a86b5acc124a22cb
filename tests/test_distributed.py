"""Batch work on Ray: lists and evaluation rows equal to the single-process path, on a local
Ray cluster with 2 workers (started once for the module), over synthetic data."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from serendip.cli import main
from serendip.errors import ConfigError
from serendip.pipeline import FitConfig, Recommender
from serendip.types import ItemList
from tests.conftest import (
    SHARDED_FIT,
    assert_same_lists,
    local_ray_cluster,
    make_blocks,
    sharded_model,
)

ray = pytest.importorskip("ray", reason="Ray is optional: pip install 'ray[data,client]'")

from serendip.distributed import (  # noqa: E402
    import_ray,
    pack_lists,
    recommend_batch_ray,
    run_experiment_ray,
    unpack_lists,
)
from serendip.eval.runner import run_experiment  # noqa: E402

#: small and fast to fit; ease_recent and transition for the shipped presets' blends
FIT = FitConfig(models=SHARDED_FIT)


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    with local_ray_cluster(num_cpus=2):
        yield


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> tuple[Path, list[str]]:
    d = tmp_path_factory.mktemp("ray") / "model"
    return d, sharded_model(d)


_same = assert_same_lists


def test_pack_round_trip_keeps_values_and_dtypes():
    lists = [
        ItemList(np.array([3, 1]), np.array([0.1 + 0.2, -1e-300]), (("a", "b"), ()),
                 {"propensity": np.array([0.25, 1 / 3]), "explored": np.array([True, False])}),
        ItemList.empty(),
        ItemList(np.array([7]), np.array([np.nextafter(1.0, 2.0)]), None,
                 {"relevance_rank": np.array([4], dtype=np.int64)}),
    ]
    back = unpack_lists(pack_lists(lists))
    _same(lists, back)
    assert back[2].reasons is None and back[0].reasons == (("a", "b"), ())
    assert unpack_lists(pack_lists([])) == []


def test_recommend_on_ray_equals_one_process(local_ray, model):
    d, users = model
    users = [*users, "a stranger"]  # a cold-start list too
    rec = Recommender.load(d)
    allowed = np.arange(5, 35)
    pipe = rec.pipeline("balanced")  # blend, re-ranking, reasons
    queries = [pipe.query(u) for u in users]
    expected = pipe.recommend_many(queries, 7, None, allowed)
    got = recommend_batch_ray(d, users, 7, "balanced", candidates=allowed, workers=2)
    _same(expected, got)
    assert all(set(x.items.tolist()) <= set(allowed.tolist()) for x in got)


def test_cli_recommend_ray_writes_the_same_file(local_ray, model, tmp_path, capsys):
    d, users = model
    (tmp_path / "users.txt").write_text("\n".join([*users[::-1], "nobody"]) + "\n")
    outs = []
    for extra in ([], ["--ray"]):
        out = tmp_path / f"recs{len(extra)}.jsonl"
        assert main(["-q", "recommend", "--model", str(d), "--users", str(tmp_path / "users.txt"),
                     "-k", "5", "--preset", "accurate", "--output", str(out), *extra]) == 0
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
    assert len(outs[0].splitlines()) == len(users) + 1


def test_evaluate_on_ray_equals_one_process(local_ray):
    data = make_blocks(n_users=300, n_items=30, seed=5)
    kw = {"models": ["popularity", "ease"], "presets": ["accurate", "balanced"], "k": 5,
          "sweep": (0.0, 0.5, 1.0), "fit_config": FIT, "progress": False}
    one = run_experiment(data, "random", **kw)  # type: ignore[arg-type]
    sharded = run_experiment_ray(data, "random", workers=2, **kw)
    timing = ["recommend_seconds", "fit_seconds"]
    assert len(one) == len(sharded) == 2 + 2 + 3  # models, presets, balanced's sweep
    pd.testing.assert_frame_equal(one.drop(columns=timing), sharded.drop(columns=timing),
                                  check_exact=True)


def test_order_dependent_presets_are_refused(model, tmp_path):
    d, users = model
    with pytest.raises(ConfigError, match="exploration"):
        recommend_batch_ray(d, users, 5, "balanced", explore=0.2)
    with pytest.raises(ConfigError, match="bandit"):
        recommend_batch_ray(d, users, 5, "adaptive")
    exposure = tmp_path / "exposure.toml"
    exposure.write_text('name = "spread"\n[blend]\nease = 1.0\n[[rerank]]\n'
                        'name = "multi_objective"\n[rerank.weights]\nexposure = 1.0\n')
    with pytest.raises(ConfigError, match="exposure"):
        recommend_batch_ray(d, users, 5, str(exposure))


def test_without_ray_the_option_says_how_to_install(model, monkeypatch, capsys):
    d, _ = model
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now fails
    with pytest.raises(ConfigError, match=r"pip install"):
        import_ray()
    assert main(["recommend", "--model", str(d), "--user", "u1", "--ray"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ray[data,client]" in err[0]


@pytest.mark.slow
def test_cli_evaluate_ray_writes_the_same_rows(local_ray, tmp_path, capsys):
    data = make_blocks(n_users=300, n_items=30, seed=7)
    inter = data.interactions
    pd.DataFrame({"user_id": data.user_ids[inter.user], "item_id": data.item_ids[inter.item],
                  "timestamp": inter.timestamp}).to_csv(tmp_path / "events.csv", index=False)
    data.items.to_csv(tmp_path / "items.csv", index=False)
    frames = []
    for extra in ([], ["--ray"]):
        out = tmp_path / f"results{len(extra)}.csv"
        assert main(["-q", "evaluate", "--interactions", str(tmp_path / "events.csv"),
                     "--items", str(tmp_path / "items.csv"), "--protocol", "random",
                     "--models", "popularity", "--presets", "balanced", "-k", "5",
                     "--csv", str(out), *extra]) == 0
        frames.append(pd.read_csv(out).drop(columns=["recommend_seconds", "fit_seconds"]))
    assert len(frames[0]) == 1 + 1 + 11  # the model, the preset, its knob sweep
    pd.testing.assert_frame_equal(frames[0], frames[1], check_exact=True)
