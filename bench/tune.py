"""Choose preset weights on a validation split carved out of the training data.

    python bench/tune.py [--trials 120] [--write]

The outer split is the benchmark's per-user temporal 80/20 split; only its training part is
used here, split again (temporal 80/20 per user) into fit and validation parts.  The test
part is never read.  Searches:

- accurate:  blend weights maximising validation NDCG@10;
- balanced:  the highest validation NDCG@10 among settings meeting the discovery targets
             (tail share, coverage, novelty, serendipity vs EASE) with a 5% margin
             (novelty: shifted by the bits that the smaller training part adds);
- discovery: the most discovery (tail share + novelty / 10) keeping NDCG@10 >= 0.85 x EASE
             and the balanced coverage target, with a tail share at least 0.15 above
             balanced's, so it sits past balanced on the frontier.

With ``--write`` the chosen values are written to ``src/serendip/presets/*.toml``.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np
from tqdm import tqdm

from serendip.data import load_movielens_100k, temporal_split
from serendip.eval.runner import evaluate_pipeline, truth_of
from serendip.pipeline import FitConfig, Preset, Recommender
from serendip.text import Encoder, EncoderConfig

PRESET_DIR = Path(__file__).resolve().parents[1] / "src" / "serendip" / "presets"
MARGIN = 1.05  # aim 5% past each discovery target on validation


def _toml_value(v: object) -> str:
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, float):
        return f"{v:g}" if "." in f"{v:g}" or "e" in f"{v:g}" else f"{v:g}.0"
    return str(v)


def write_preset(name: str, preset: Preset, header: list[str]) -> None:
    lines = [f"# {h}" for h in header]
    lines.append(f'description = "{preset.description}"')
    lines.append(f"candidates = {preset.candidates}")
    lines.append(f"discovery = {_toml_value(preset.discovery)}")
    lines.append(f"tail_boost = {_toml_value(preset.tail_boost)}")
    lines.append("")
    lines.append("[blend]")
    lines += [f"{k} = {_toml_value(float(v))}" for k, v in preset.blend.items() if v > 0]
    for stage in preset.rerank:
        lines += ["", "[[rerank]]"]
        lines += [f"{k} = {_toml_value(v)}" for k, v in stage.items() if not isinstance(v, dict)]
        for k, v in stage.items():
            if isinstance(v, dict):
                lines += ["", f"[rerank.{k}]"]
                lines += [f"{kk} = {_toml_value(float(vv))}" for kk, vv in v.items()]
    (PRESET_DIR / f"{name}.toml").write_text("\n".join(lines) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--trials", type=int, default=120)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()

    data = load_movielens_100k()
    data = data.with_item_vectors(Encoder(EncoderConfig()).encode_items(data))
    outer = temporal_split(data, 0.2)
    val = temporal_split(outer.train, 0.2)
    truth = truth_of(val)
    rec = Recommender.fit(val.train, FitConfig(), progress=False)

    def ev(p: Preset, d: float | None = None) -> dict[str, float]:
        return evaluate_pipeline(rec.pipeline(p), val, 10, d, truth)

    ease = ev(Preset(name="ease", blend={"ease": 1.0}))
    print(f"validation EASE: ndcg {ease['ndcg']:.4f} serendipity {ease['serendipity']:.4f}")

    # accurate: grid over the blend ------------------------------------------------------
    best_acc: tuple[float, dict[str, float]] = (-1.0, {})
    # a text model always keeps a weight, so cold items (no interactions) stay reachable
    grid = list(itertools.product([0.0, 0.25, 0.5, 1.0], [0.0, 0.2, 0.5], [0.05, 0.1, 0.2],
                                  [0.0, 0.2]))
    for tr, kn, tc, al in tqdm(grid, desc="accurate"):
        blend = {"ease_recent": 1.0, "transition": tr, "knn": kn, "textcf": tc, "als": al}
        m = ev(Preset(name="a", blend={k: v for k, v in blend.items() if v > 0}))
        if m["ndcg"] > best_acc[0]:
            best_acc = (m["ndcg"], blend)
    acc_blend = {k: v for k, v in best_acc[1].items() if v > 0}
    print(f"accurate: val ndcg {best_acc[0]:.4f} ({best_acc[0] / ease['ndcg']:.3f} x EASE) {acc_blend}")

    # balanced and discovery: random search over re-ranking ------------------------------
    rng = np.random.default_rng(args.seed)
    # popularity counted on the smaller validation-training part makes every item look rarer
    # by about log2(|train| / |validation train|) bits, so the novelty target moves up by that
    shift = float(np.log2(len(outer.train.interactions) / len(val.train.interactions)))
    targets = {"tail_share": 0.30 * MARGIN, "coverage": 0.60 * MARGIN,
               "novelty": 3.5 + shift + 0.05, "serendipity": 1.3 * MARGIN * ease["serendipity"]}
    print(f"validation targets: {targets}")
    best_bal: tuple[float, Preset | None, dict[str, float]] = (-1.0, None, {})
    best_dis: tuple[float, Preset | None, dict[str, float]] = (-1.0, None, {})
    fallback: tuple[float, Preset | None, dict[str, float]] = (-np.inf, None, {})
    trials: list[tuple[float, Preset]] = []
    pool: list[tuple[Preset, dict[str, float]]] = []

    def consider(p: Preset, m: dict[str, float]) -> None:
        nonlocal best_bal, fallback
        ok = all(m[k] >= v for k, v in targets.items()) and m["ndcg"] >= 0.97 * MARGIN * ease["ndcg"]
        if ok and m["ndcg"] > best_bal[0]:
            best_bal = (m["ndcg"], p, m)
        # closeness to the targets, for the case none is met
        short = sum(min(0.0, m[k] / v - 1) for k, v in targets.items()) + min(
            0.0, m["ndcg"] / (0.97 * ease["ndcg"]) - 1)
        if short > fallback[0]:
            fallback = (short, p, m)
        pool.append((p, m))

    for _ in tqdm(range(args.trials), desc="balanced/discovery"):
        w = {o: float(rng.choice([0.0, 0.25, 0.5, 1.0]))
             for o in ("novelty", "tail", "diversity", "unexpectedness", "calibration")}
        if sum(w.values()) == 0:
            w["tail"] = 1.0
        blend = dict(acc_blend)
        blend["textcf"] = float(rng.choice([0.05, 0.1, 0.2, 0.4]))
        p = Preset(
            name="trial", description="", candidates=int(rng.choice([100, 200, 400])),
            discovery=float(rng.choice([0.5, 0.6, 0.7, 0.8, 0.9, 1.0])),
            tail_boost=float(rng.choice([0.0, 1.0, 2.0])),
            blend={k: v for k, v in blend.items() if v > 0},
            rerank=[{"name": "multi_objective", "strength": float(rng.choice([0.4, 0.6, 0.8, 1.0])),
                     "weights": w}],
        )
        m = ev(p)
        trials.append((m["ndcg"], p))
        consider(p, m)
    # refine: the most accurate trials, with the knob swept finely
    trials.sort(key=lambda t: -t[0])
    refine = [(p, d) for _, p in trials[:10] for d in np.arange(0.5, 1.0001, 0.05)]
    for p, d in tqdm(refine, desc="refine"):
        q = p.model_copy(update={"discovery": round(float(d), 2)})
        consider(q, ev(q))
    if best_bal[1] is None:
        print("no trial met every balanced target on validation; taking the closest")
        best_bal = (fallback[2]["ndcg"], fallback[1], fallback[2])
    # discovery: clearly past balanced (tail share at least 0.15 higher), still accurate
    # enough and covering the catalog; the most tail share + novelty / 10 among those
    for min_gain in (0.15, 0.0):
        for p, m in pool:
            disc = m["tail_share"] + m["novelty"] / 10
            if (m["ndcg"] >= 0.85 * ease["ndcg"] and m["coverage"] >= targets["coverage"]
                    and m["tail_share"] >= best_bal[2]["tail_share"] + min_gain
                    and disc > best_dis[0]):
                best_dis = (disc, p, m)
        if best_dis[1] is not None:
            break
    for label, (_, p, m) in (("balanced", best_bal), ("discovery", best_dis)):
        if p is None:
            continue
        print(f"{label}: val ndcg {m['ndcg']:.4f} ({m['ndcg'] / ease['ndcg']:.3f} x EASE) "
              f"tail {m['tail_share']:.3f} cov {m['coverage']:.3f} nov {m['novelty']:.2f} "
              f"ser {m['serendipity'] / ease['serendipity']:.2f} x EASE :: {p.model_dump()}")

    if args.write:
        src = "chosen by bench/tune.py on a validation split carved from the training data"
        write_preset("accurate", Preset(
            name="accurate", description="Highest accuracy: relevance blend, no re-ranking",
            candidates=10, discovery=0.0, blend=acc_blend), [
            "accurate: the strongest relevance blend, no discovery re-ranking.",
            f"Weights {src} (validation NDCG@10 {best_acc[0]:.4f}).",
        ])
        for label, desc, (_, p, m) in (
            ("balanced", "Default: near-accurate relevance with long-tail, novel, serendipitous picks",
             best_bal),
            ("discovery", "Discovery first: the long tail and the unexpected, kept relevant", best_dis),
        ):
            if p is None:
                continue
            write_preset(label, p.model_copy(update={"name": label, "description": desc}), [
                f"{label}: {desc}.",
                f"Values {src} (validation NDCG@10 {m['ndcg']:.4f}, tail share "
                f"{m['tail_share']:.3f}, coverage {m['coverage']:.3f}).",
            ])
        print(f"wrote presets to {PRESET_DIR}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
