"""HTML evaluation report: the results table and the accuracy/discovery plots.

Plots are rendered with matplotlib (Agg) and embedded as base64 PNGs, so the report is one
self-contained file that opens anywhere.
"""

from __future__ import annotations

import base64
import html
import io
import os
from datetime import UTC, datetime
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

__all__ = ["write_report", "frontier_figure", "group_figure", "new_items_figure", "TABLE_COLUMNS"]

TABLE_COLUMNS = [
    "ndcg", "recall", "hit_rate", "mrr", "map", "novelty", "arp", "tail_share",
    "tail_share_elliot", "coverage", "gini", "max_list_share_tail", "ild", "ild_genre",
    "unexpectedness", "serendipity", "calibration_kl", "ndcg_head", "ndcg_mid", "ndcg_tail",
    "new_item_share", "new_item_test_share", "recall_new", "recommend_seconds",
]
FRONTIER_AXES = [("novelty", "novelty (bits)"), ("tail_share", "tail share (APLT)"),
                 ("coverage", "catalog coverage")]


def _png(fig: plt.Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def frontier_figure(results: pd.DataFrame, protocol: str) -> plt.Figure:
    """NDCG against each discovery measure: presets swept along the knob, models as points."""
    sub = results[results["protocol"] == protocol]
    fig, axes = plt.subplots(1, len(FRONTIER_AXES), figsize=(5 * len(FRONTIER_AXES), 4))
    for ax, (col, label) in zip(axes, FRONTIER_AXES, strict=True):
        for name, grp in sub[sub["kind"] == "sweep"].groupby("name", sort=False):
            grp = grp.sort_values("discovery")
            ax.plot(grp[col], grp["ndcg"], marker="o", label=f"{name} (knob 0→1)")
            for _, r in grp.iloc[[0, -1]].iterrows():
                ax.annotate(f"{r['discovery']:g}", (r[col], r["ndcg"]), fontsize=7,
                            textcoords="offset points", xytext=(3, 3))
        models = sub[sub["kind"] == "model"]
        ax.scatter(models[col], models["ndcg"], marker="s", color="black", zorder=3)
        for _, r in models.iterrows():
            ax.annotate(r["name"], (r[col], r["ndcg"]), fontsize=7, textcoords="offset points",
                        xytext=(3, -8))
        ax.set_xlabel(label)
        ax.set_ylabel("NDCG@K")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"Accuracy / discovery frontier — {protocol}")
    return fig


def group_figure(results: pd.DataFrame, protocol: str, prefix: str, groups: list[str],
                 title: str) -> plt.Figure | None:
    """Grouped bars of NDCG per item-popularity or user-activity group."""
    sub = results[(results["protocol"] == protocol) & (results["kind"] != "sweep")]
    cols = [f"{prefix}{g}" for g in groups]
    if not set(cols) <= set(sub.columns) or sub.empty:
        return None
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(sub)), 3.8))
    width = 0.8 / len(cols)
    xs = range(len(sub))
    for j, (c, g) in enumerate(zip(cols, groups, strict=True)):
        ax.bar([x + j * width for x in xs], sub[c].fillna(0), width, label=g)
    ax.set_xticks([x + width * (len(cols) - 1) / 2 for x in xs])
    ax.set_xticklabels(sub["name"], rotation=30, ha="right")
    ax.set_ylabel("NDCG@K")
    ax.legend(fontsize=8)
    ax.set_title(f"{title} — {protocol}")
    ax.grid(alpha=0.3, axis="y")
    return fig


def new_items_figure(results: pd.DataFrame, protocol: str) -> plt.Figure | None:
    """Items first seen after the cut: their share of list slots against their share of the
    test interactions, and recall on them, per model and preset."""
    sub = results[(results["protocol"] == protocol) & (results["kind"] != "sweep")]
    if "new_item_share" not in sub.columns or sub["new_item_share"].isna().all():
        return None
    fig, (a, b) = plt.subplots(1, 2, figsize=(max(8, 1.4 * len(sub)), 3.8))
    xs = list(range(len(sub)))
    a.bar(xs, sub["new_item_share"].fillna(0), color="#4a7")
    a.axhline(float(sub["new_item_test_share"].iloc[0]), color="black", linestyle="--",
              label="their share of the test interactions")
    a.set_ylabel("share of list slots on new items")
    a.legend(fontsize=8)
    b.bar(xs, sub["recall_new"].fillna(0), color="#47a")
    b.set_ylabel("recall@K on new-item interactions")
    for ax in (a, b):
        ax.set_xticks(xs)
        ax.set_xticklabels(sub["name"], rotation=30, ha="right")
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(f"New items (no training interaction) — {protocol}")
    return fig


def _table(results: pd.DataFrame) -> str:
    rows = results[results["kind"] != "sweep"]
    cols = ["protocol", "kind", "name", "discovery"] + [c for c in TABLE_COLUMNS if c in rows]
    return rows[cols].to_html(index=False, float_format=lambda x: f"{x:.4f}", border=0,
                              classes="results", na_rep="–")


def write_report(results: pd.DataFrame, path: str | Path, title: str = "serendip evaluation") -> Path:
    """Write the self-contained HTML report; returns its path."""
    path = Path(path)
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>",
        "body{font-family:system-ui,sans-serif;margin:2rem;max-width:1200px;color:#222}",
        "table.results{border-collapse:collapse;font-size:13px}",
        "table.results td,table.results th{padding:3px 8px;border-bottom:1px solid #ddd;text-align:right}",
        "table.results th{background:#f3f3f3}img{max-width:100%}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p>Generated {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}. "
        "Full ranking of unseen items; metric definitions in docs/metrics.md. The time "
        "protocol (fit on the past, predict the future, new items included) mirrors "
        "deployment; per-user protocols are secondary. "
        "Sweep rows (the discovery knob from 0 to 1) are in the plots and the CSV.</p>",
        "<h2>Results</h2>", _table(results),
    ]
    for protocol in results["protocol"].unique():
        parts.append(f"<h2>{html.escape(str(protocol))}</h2>")
        if (results[(results["protocol"] == protocol)]["kind"] == "sweep").any():
            parts.append(f"<img alt='frontier {protocol}' src='data:image/png;base64,"
                         f"{_png(frontier_figure(results, protocol))}'>")
        fig_new = new_items_figure(results, protocol)
        if fig_new is not None:
            parts.append(f"<img alt='new items {protocol}' src='data:image/png;base64,"
                         f"{_png(fig_new)}'>")
        for prefix, groups, ttl in (
            ("ndcg_", ["head", "mid", "tail"], "NDCG by item-popularity group"),
            ("ndcg_users_", ["low", "mid", "high"], "NDCG by user-activity group"),
        ):
            fig = group_figure(results, protocol, prefix, groups, ttl)
            if fig is not None:
                parts.append(f"<img alt='{ttl} {protocol}' src='data:image/png;base64,{_png(fig)}'>")
    parts.append("</body></html>")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text("\n".join(parts))
    os.replace(tmp, path)
    return path
