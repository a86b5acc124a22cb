"""Do explanations name items the user disliked?  MovieLens-100K, every user, one list each.

    python bench/reasons.py [--preset balanced] [-k 10]

Fits on all of MovieLens-100K twice — low ratings as negative feedback (the default:
1-2 stars of 5) and with every rating counted as a like (``negative_below = "off"``) — and
counts, over the "because you liked X" reasons of every user's list, the share whose X the
user rated 1 or 2 stars.  Writes ``bench/results/reasons.md``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from serendip.data import load_movielens_100k
from serendip.pipeline import FitConfig, Recommender
from serendip.text import Encoder, EncoderConfig

RESULTS = Path(__file__).resolve().parent / "results"


def low_rated_share(rec: Recommender, data, preset: str, k: int) -> tuple[float, int]:  # type: ignore[no-untyped-def]
    """Share of 'because you liked' reasons naming an item the user rated below 3."""
    inter = data.interactions
    low = inter[inter["rating"] < 3]
    low_titles: dict[int, set[str]] = {}
    for u, i in zip(low["user"].to_numpy(), low["item"].to_numpy(), strict=True):
        low_titles.setdefault(int(u), set()).add(data.item_title(int(i)))
    pipe = rec.pipeline(preset)
    users = [str(u) for u in data.user_ids]
    lists = pipe.recommend_many([pipe.query(u) for u in users], k)
    named = bad = 0
    for u, lst in zip(range(len(users)), lists, strict=True):
        for reasons in lst.reason_lists():
            first = reasons[0] if reasons else ""
            if first.startswith("because you liked "):
                named += 1
                bad += first[len("because you liked "):] in low_titles.get(u, set())
    return bad / max(named, 1), named


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--preset", default="balanced")
    ap.add_argument("-k", type=int, default=10)
    args = ap.parse_args()
    data = load_movielens_100k()
    data = data.with_item_vectors(Encoder(EncoderConfig()).encode_items(data, progress=False))
    share_low = float(np.mean(data.interactions["rating"].to_numpy() < 3))
    rows = []
    for label, cfg in (("every rating is a like", FitConfig(negative_below="off")),
                       ("1-2 stars are negative (default)", FitConfig())):
        rec = Recommender.fit(data, cfg, progress=False)
        share, named = low_rated_share(rec, data, args.preset, args.k)
        rows.append(f"| {label} | {named:,} | {share:.1%} |")
        print(rows[-1], flush=True)
    md = [
        "# Reasons that name a disliked item", "",
        f"Written by `python bench/reasons.py --preset {args.preset} -k {args.k}`: MovieLens-100K, "
        f"every user's {args.preset} list of {args.k}; {share_low:.1%} of all ratings are 1-2 stars.",
        "", "| training | 'because you liked' reasons | naming a 1-2 star item |", "|---|---|---|",
        *rows, "",
    ]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "reasons.md").write_text("\n".join(md))
    print(f"wrote {RESULTS / 'reasons.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
