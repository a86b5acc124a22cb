from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from serendip.errors import ConfigError, DataError, ModelFormatError
from serendip.text import Encoder, EncoderConfig


class CountingForward:
    """Wraps a model's forward to count the texts that really went through it."""

    def __init__(self, encoder: Encoder):
        model = encoder._load()
        self.inner = model.forward
        self.texts = 0
        model.forward = self

    def __call__(self, features: dict[str, Any], **kw: Any) -> Any:
        self.texts += int(features["input_ids"].shape[0])
        return self.inner(features, **kw)


def tiny(model_dir: Path, **kw: Any) -> Encoder:
    return Encoder(model=str(model_dir), device="cpu", **kw)


# ---------------------------------------------------------------- config
def test_config_validation() -> None:
    with pytest.raises(ConfigError, match="batch_size"):
        Encoder(batch_size=0)
    with pytest.raises(ConfigError, match="max_seq_length"):
        Encoder(max_seq_length=10**6)
    with pytest.raises(ConfigError, match="not_a_field"):
        Encoder(not_a_field=1)
    with pytest.raises(ConfigError, match="quantize"):
        Encoder(quantize=True, precision="bf16")
    with pytest.raises(ConfigError, match="CPU-only"):
        Encoder(quantize=True, device="cuda")
    cfg = EncoderConfig(batch_size=8, cache_dir="/tmp/x")
    assert EncoderConfig.model_validate_json(cfg.model_dump_json()) == cfg


def test_init_only_stores_config() -> None:
    enc = Encoder(model="/no/such/model")
    assert enc._model is None
    with pytest.raises(ModelFormatError, match="/no/such/model"):
        enc.encode(["x"])


def test_model_id_tracks_what_changes_vectors(tiny_model_dir: Path) -> None:
    ids = {
        tiny(tiny_model_dir, precision="fp32").model_id,
        tiny(tiny_model_dir, precision="bf16").model_id,
        tiny(tiny_model_dir, quantize=True).model_id,
        tiny(tiny_model_dir, precision="fp32", max_seq_length=64).model_id,
    }
    assert len(ids) == 4
    assert "int8" in tiny(tiny_model_dir, quantize=True).model_id
    # batch size, normalisation and the cache do not change the raw vectors
    assert (tiny(tiny_model_dir, precision="fp32", batch_size=3, normalize=False).model_id
            == tiny(tiny_model_dir, precision="fp32").model_id)
    assert Encoder().model_id.startswith("sentence-transformers/all-MiniLM-L6-v2|")


# ---------------------------------------------------------------- tiny model
def test_tiny_model_shape_norm_and_order(tiny_model_dir: Path) -> None:
    enc = tiny(tiny_model_dir, precision="fp32", batch_size=2)
    texts = ["a short one", "a much longer text with many more words in it", "mid length text"]
    v = enc.encode(texts, progress=False)
    assert v.shape == (3, 32) and v.dtype == np.float32
    assert enc.dim == 32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, rtol=1e-5)
    # length-sorted batching must not shuffle the output rows
    for i, t in enumerate(texts):
        np.testing.assert_allclose(enc.encode([t], progress=False)[0], v[i], atol=1e-5)
    raw = tiny(tiny_model_dir, precision="fp32", normalize=False).encode(texts, progress=False)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0)


def test_deduplication_keeps_order(tiny_model_dir: Path) -> None:
    enc = tiny(tiny_model_dir, precision="fp32")
    counter = CountingForward(enc)
    texts = ["b text", "a text", "b text", "c text", "a text"]
    v = enc.encode(texts, progress=False)
    assert counter.texts == 3
    np.testing.assert_array_equal(v[0], v[2])
    np.testing.assert_array_equal(v[1], v[4])
    assert not np.allclose(v[0], v[1])
    single = np.stack([enc.encode([t], progress=False)[0] for t in texts])
    np.testing.assert_allclose(v, single, atol=1e-5)


def test_second_encode_comes_from_cache(tiny_model_dir: Path, tmp_path: Path) -> None:
    texts = [f"item number {i}" for i in range(10)]
    enc = tiny(tiny_model_dir, precision="fp32", cache_dir=str(tmp_path))
    counter = CountingForward(enc)
    first = enc.encode(texts, progress=False)
    assert counter.texts == 10
    again = enc.encode(texts[::-1], progress=False)
    assert counter.texts == 10  # the model was not called
    np.testing.assert_array_equal(again, first[::-1])

    # a fresh encoder on the same directory: only the new text is encoded
    enc2 = tiny(tiny_model_dir, precision="fp32", cache_dir=str(tmp_path))
    counter2 = CountingForward(enc2)
    out = enc2.encode([*texts, "a brand new text"], progress=False)
    assert counter2.texts == 1
    np.testing.assert_array_equal(out[:10], first)

    # another precision is another cache key: encoded again
    enc3 = tiny(tiny_model_dir, precision="bf16", cache_dir=str(tmp_path))
    counter3 = CountingForward(enc3)
    enc3.encode(texts, progress=False)
    assert counter3.texts == 10


def test_bad_input(tiny_model_dir: Path) -> None:
    enc = tiny(tiny_model_dir)
    with pytest.raises(DataError, match="single string"):
        enc.encode("one text")
    with pytest.raises(DataError, match="strings only"):
        enc.encode(["ok", 3])  # type: ignore[list-item]
    assert enc.encode([], progress=False).shape == (0, 32)


def test_quantized_tiny_model_runs(tiny_model_dir: Path) -> None:
    v = tiny(tiny_model_dir, quantize=True).encode(["hello world", "bye"], progress=False)
    assert v.shape == (2, 32) and np.isfinite(v).all()


def test_encode_items_and_users(tiny_model_dir: Path, blocks: Any) -> None:
    enc = tiny(tiny_model_dir, precision="fp32")
    items = enc.encode_items(blocks, progress=False)
    assert items.shape == (blocks.n_items, 32)
    users = enc.encode_users(blocks, [0, 1], progress=False)
    assert users.shape == (2, 32)
    with pytest.raises(DataError, match="user indices"):
        enc.encode_users(blocks, [blocks.n_users])


# ---------------------------------------------------------------- real MiniLM
@pytest.mark.slow
def test_minilm_similar_texts_are_closer(minilm_fp32: Encoder) -> None:
    v = minilm_fp32.encode(
        [
            "A funny animated movie for children about toys",
            "A cartoon comedy for kids where toys come alive",
            "A grim documentary about tax law in the 1970s",
        ],
        progress=False,
    )
    assert v.shape == (3, 384)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.2
    assert v[0] @ v[1] > v[1] @ v[2] + 0.2


FIDELITY_TEXTS = [
    f"title: {t}; year: {y}; genres: {g}"
    for t, y, g in [
        ("Toy Story", 1995, "Animation, Children's, Comedy"),
        ("GoldenEye", 1995, "Action, Adventure, Thriller"),
        ("Four Rooms", 1995, "Thriller"),
        ("Get Shorty", 1995, "Action, Comedy, Drama"),
        ("Copycat", 1995, "Crime, Drama, Thriller"),
        ("Twelve Monkeys", 1995, "Drama, Sci-Fi"),
        ("Babe", 1995, "Children's, Comedy, Drama"),
        ("Dead Man Walking", 1995, "Drama"),
        ("Richard III", 1995, "Drama, War"),
        ("Seven (Se7en)", 1995, "Crime, Thriller"),
        ("Usual Suspects, The", 1995, "Crime, Thriller"),
        ("Mighty Aphrodite", 1995, "Comedy"),
        ("Postino, Il", 1994, "Drama, Romance"),
        ("French Twist (Gazon maudit)", 1995, "Comedy, Romance"),
        ("From Dusk Till Dawn", 1996, "Action, Comedy, Crime, Horror, Thriller"),
        ("Braveheart", 1995, "Action, Drama, War"),
        ("Taxi Driver", 1976, "Drama, Thriller"),
        ("Rumble in the Bronx", 1995, "Action, Adventure, Crime"),
        ("Apollo 13", 1995, "Action, Drama, Thriller"),
        ("Batman Forever", 1995, "Action, Adventure, Comedy, Crime"),
        ("Belle de jour", 1967, "Drama"),
        ("Crumb", 1994, "Documentary"),
        ("Star Wars", 1977, "Action, Adventure, Romance, Sci-Fi, War"),
        ("Pulp Fiction", 1994, "Crime, Drama"),
    ]
] + [
    "something light and funny for a rainy Sunday with the kids",
    "a dark, slow-burning thriller with an unreliable narrator",
    "space opera with big battles and a love story",
    "Recently watched: Heat, Casino, Goodfellas. Favourite genres: Crime (80%), Drama (60%).",
]


@pytest.mark.slow
def test_default_precision_is_faithful_to_fp32(minilm_fp32: Encoder) -> None:
    ref = minilm_fp32.encode(FIDELITY_TEXTS, progress=False)
    # bf16 explicitly (the default where the CPU runs bf16 natively)
    fast = Encoder(precision="bf16", device="cpu").encode(FIDELITY_TEXTS, progress=False)
    cos = np.sum(ref * fast, axis=1)
    assert cos.mean() >= 0.99, cos
    assert cos.min() >= 0.98, cos
    default = Encoder(device="cpu").encode(FIDELITY_TEXTS, progress=False)
    assert np.sum(ref * default, axis=1).mean() >= 0.99


@pytest.mark.slow
def test_minilm_matches_plain_sentence_transformers(minilm_fp32: Encoder, minilm_path: str) -> None:
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(minilm_path, device="cpu", local_files_only=True)
    ref = st.encode(FIDELITY_TEXTS[:8], normalize_embeddings=True)
    ours = minilm_fp32.encode(FIDELITY_TEXTS[:8], progress=False)
    np.testing.assert_allclose(ours, ref, atol=1e-4)
