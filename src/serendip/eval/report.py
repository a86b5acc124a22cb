"""HTML evaluation report: a decision summary, the accuracy/discovery trade-off and the tables.

The report opens with the preset to ship and what it costs, computed from the results by one
stated rule (``choose_preset``), then shows, per protocol, the presets and models on a few
columns that matter, every other metric folded away, and plots sized for a laptop screen.
Plots are rendered with matplotlib (Agg) and embedded as base64 PNGs, so the report is one
self-contained file that opens anywhere.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from serendip.errors import ConfigError, DataError  # noqa: E402

if TYPE_CHECKING:
    from serendip.data.dataset import Dataset

__all__ = [
    "DATASET_NAMES",
    "DatasetInfo",
    "Choice",
    "Point",
    "choose_preset",
    "primary_protocol",
    "write_report",
    "frontier_figure",
    "knob_figure",
    "group_figure",
    "new_items_figure",
    "MAIN_COLUMNS",
    "TABLE_COLUMNS",
    "SLOW_FACTOR",
]

#: readable names of the data sets ``serendip.data.load_dataset`` knows
DATASET_NAMES = {"movielens": "MovieLens-100K", "goodbooks": "goodbooks-10k", "lastfm": "Last.fm"}

#: every metric column the "all metrics" table shows, in order
TABLE_COLUMNS = [
    "ndcg", "recall", "hit_rate", "mrr", "map", "novelty", "arp", "tail_share",
    "tail_share_elliot", "coverage", "gini", "max_list_share_tail", "ild", "ild_genre",
    "unexpectedness", "serendipity", "calibration_kl", "ndcg_head", "ndcg_mid", "ndcg_tail",
    "new_item_share", "new_item_test_share", "recall_new", "recommend_seconds",
]
#: the columns of each protocol's main table ("@K" is replaced by the list length)
MAIN_COLUMNS = [
    ("ndcg", "NDCG@K"), ("recall", "recall@K"), ("tail_share", "tail share"),
    ("coverage", "coverage"), ("novelty", "novelty"),
    ("new_item_share", "new-item share"), ("recall_new", "new-item recall@K"),
]
FRONTIER_AXES = [("tail_share", "tail share (long-tail items / list slots)"),
                 ("coverage", "catalog coverage")]
#: default accuracy the recommended preset may give up against the most accurate one
MAX_NDCG_LOSS = 0.10

_FIG_WIDTH = 10.0  # inches at 100 dpi: 1000 px, the width of the page's content
_DPI = 100
_REPR = re.compile(r"Dataset\((\d+) users, (\d+) items, (\d+) interactions(, no time)?\)")


# ---------------------------------------------------------------------------- data set
@dataclass(frozen=True)
class DatasetInfo:
    """What the report says about the evaluated data: its name and size."""

    name: str
    users: int
    items: int
    events: int
    has_time: bool = True

    @classmethod
    def of(cls, data: Dataset, name: str) -> DatasetInfo:
        """From a Dataset; ``name`` is a ``load_dataset`` name (made readable) or any label,
        such as the interactions file's name."""
        return cls(DATASET_NAMES.get(name, name), data.n_users, data.n_items,
                   len(data.interactions), data.has_time)

    def describe(self) -> str:
        """``MovieLens-100K: 943 users, 1,682 items, 100,000 events``."""
        time_note = "" if self.has_time else " (no timestamps)"
        return (f"{self.name}: {self.users:,} users, {self.items:,} items, "
                f"{self.events:,} events{time_note}")


def _readable_title(title: str) -> str:
    """A title that embeds a Dataset repr gets the data set's size in words instead."""

    def words(m: re.Match[str]) -> str:
        users, items, events = (int(m.group(i)) for i in (1, 2, 3))
        note = ", no timestamps" if m.group(4) else ""
        return f"{users:,} users, {items:,} items, {events:,} events{note}"

    return _REPR.sub(words, title)


# ---------------------------------------------------------------------------- the decision
@dataclass(frozen=True)
class Point:
    """One evaluated configuration on one protocol."""

    name: str
    kind: str  # model | preset | sweep
    discovery: float
    ndcg: float
    tail_share: float
    coverage: float = math.nan
    novelty: float = math.nan
    seconds: float = math.nan  # time to produce every test user's list (recommend_seconds)


#: a preset slower than this many times the reference preset is called out in the summary
SLOW_FACTOR = 2.0


@dataclass(frozen=True)
class Choice:
    """The preset ``choose_preset`` recommends, against the most accurate preset."""

    protocol: str
    k: int | None
    max_ndcg_loss: float
    reference: Point  # the most accurate preset
    chosen: Point
    others: list[Point] = field(default_factory=list)  # the other presets, most discovery first
    knob: Point | None = None  # a knob setting with more discovery than ``chosen``, in budget
    kind: str = "preset"  # what was compared: presets, or models when no preset was evaluated

    @property
    def ndcg_label(self) -> str:
        return f"NDCG@{self.k}" if self.k else "NDCG@K"

    @property
    def ndcg_ratio(self) -> float:
        return _ratio(self.chosen.ndcg, self.reference.ndcg)

    @property
    def tail_ratio(self) -> float:
        return _ratio(self.chosen.tail_share, self.reference.tail_share)

    def headline(self) -> str:
        """The decision in one sentence, numbers included (``code`` in backticks)."""
        c, r, nd = self.chosen, self.reference, self.ndcg_label
        if c.name != r.name:
            return (f"Ship `{c.name}`: it keeps {_pct(self.ndcg_ratio)} of `{r.name}`'s {nd} "
                    f"({c.ndcg:.3f} vs {r.ndcg:.3f}) and {_tail_gain(c, r)}.")
        if not self._richer():
            return (f"Ship `{r.name}`: it is the most accurate {self.kind} ({nd} {r.ndcg:.3f}) "
                    f"and no other {self.kind} shows more long-tail items "
                    f"(tail share {r.tail_share:.2f}).")
        return (f"Ship `{r.name}`: it is the most accurate {self.kind} ({nd} {r.ndcg:.3f}), and "
                f"every {self.kind} with more discovery loses more than "
                f"{_pct(self.max_ndcg_loss)} of that accuracy.")

    def _richer(self) -> list[Point]:
        return [o for o in self.others if o.tail_share > self.reference.tail_share]

    def costs(self) -> str | None:
        """When the most accurate preset is chosen: what each one with more discovery costs."""
        r = self.reference
        if self.chosen.name != r.name or not self._richer():
            return None
        return "; ".join(
            f"`{o.name}` keeps {_pct(_ratio(o.ndcg, r.ndcg))} ({o.ndcg:.3f}) and "
            f"{_tail_gain(o, r)}" for o in self._richer()) + "."

    def knob_sentence(self) -> str | None:
        """A knob setting of a preset that beats the chosen one within the same budget."""
        if self.knob is None:
            return None
        p, r = self.knob, self.reference
        return (f"Worth trying: `{p.name}` with the discovery knob at {p.discovery:g} keeps "
                f"{_pct(_ratio(p.ndcg, r.ndcg))} of `{r.name}`'s {self.ndcg_label} "
                f"({p.ndcg:.3f}) and {_tail_gain(p, r)}: more discovery than "
                f"`{self.chosen.name}` within the same accuracy budget. It is a setting "
                f"between the shipped presets, so check it on a second cut before shipping it.")

    def timing_reference(self) -> Point:
        """What times are compared with: the preset named ``accurate`` when there is one,
        else the most accurate row."""
        for p in (self.reference, self.chosen, *self.others):
            if p.name == "accurate":
                return p
        return self.reference

    def slow_sentence(self) -> str | None:
        """Those taking more than ``SLOW_FACTOR`` times the reference's time to produce the
        lists, in words; None when none does or the times were not recorded."""
        ref = self.timing_reference()
        if not (ref.seconds > 0):
            return None
        slow = sorted((p for p in (self.chosen, *self.others)
                       if p.name != ref.name and p.seconds > SLOW_FACTOR * ref.seconds),
                      key=lambda p: -p.seconds)
        if not slow:
            return None
        said = "; ".join(f"`{p.name}` takes {p.seconds / ref.seconds:.1f}× as long as "
                         f"`{ref.name}` ({_duration(p.seconds)} vs {_duration(ref.seconds)})"
                         for p in slow)
        return f"Time to produce the lists: {said}."

    def rule(self) -> str:
        k = f"K = {self.k}" if self.k else "K (the list length) was not recorded"
        return (f"Rule: among the {self.kind}s, the one with the highest tail share (the share "
                f"of list slots given to long-tail items, i.e. items outside the 20% most used "
                f"in training) whose {self.ndcg_label} is at least "
                f"{_pct(1 - self.max_ndcg_loss)} of the most accurate {self.kind}'s. "
                f"{k}: every metric reads the top {self.k or 'K'} items of each list.")


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else (math.inf if a > 0 else 1.0)


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def _duration(seconds: float) -> str:
    """``0.35 s``, ``12 ms``, ``3.4 s``, ``2 min 5 s``; ``–`` when unknown."""
    if seconds is None or math.isnan(seconds):
        return "–"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms" if seconds < 0.1 else f"{seconds:.2f} s"
    if seconds < 100:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s"


def _tail_gain(p: Point, ref: Point) -> str:
    if ref.tail_share <= 0:
        if p.tail_share <= 0:
            return "shows no long-tail items either"
        return (f"gives {_pct(p.tail_share)} of its list slots to long-tail items where "
                f"`{ref.name}` gives none (tail share {p.tail_share:.2f} vs 0)")
    return (f"shows {_ratio(p.tail_share, ref.tail_share):.1f}× as many long-tail items "
            f"(tail share {p.tail_share:.2f} vs {ref.tail_share:.2f})")


def _point(row: pd.Series) -> Point:
    def num(col: str) -> float:
        v = row.get(col, math.nan)
        return float(v) if v is not None and pd.notna(v) else math.nan

    tail = num("tail_share")
    return Point(str(row["name"]), str(row["kind"]), num("discovery"), num("ndcg"),
                 0.0 if math.isnan(tail) else tail, num("coverage"), num("novelty"),
                 num("recommend_seconds"))


def primary_protocol(results: pd.DataFrame) -> str:
    """The protocol a decision is read from: the time cut (as deployed), its mean over several
    cuts when there are some, else the first protocol that ranks the whole catalog."""
    names = [str(p) for p in results["protocol"].unique()]
    for test in (lambda p: p.startswith("time, mean"), lambda p: p == "time",
                 lambda p: p.startswith("time"), lambda p: p != "cold-items"):
        found = [p for p in names if test(p)]
        if found:
            return found[0]
    return names[0]


def _k_of(results: pd.DataFrame, k: int | None) -> int | None:
    if k is not None:
        return int(k)
    if "k" in results.columns:
        ks = results["k"].dropna().unique()
        if len(ks) == 1:
            return int(ks[0])
    return None


def choose_preset(results: pd.DataFrame, protocol: str | None = None, *,
                  max_ndcg_loss: float = MAX_NDCG_LOSS, k: int | None = None) -> Choice:
    """The preset to ship, by one rule: on ``protocol`` (default ``primary_protocol``), among
    the presets whose NDCG is at least ``1 - max_ndcg_loss`` of the most accurate preset's,
    the one with the highest tail share (ties: the more accurate).

    Without preset rows the models are compared instead.  ``knob`` is the best knob setting
    (sweep row) by the same rule when its tail share beats the chosen preset's by more than
    0.01.  Raises ``ConfigError`` for a budget outside [0, 1), ``DataError`` when the protocol
    has no row with an NDCG.
    """
    if not 0.0 <= max_ndcg_loss < 1.0:
        raise ConfigError(f"max_ndcg_loss must be in [0, 1), got {max_ndcg_loss}")
    protocol = protocol if protocol is not None else primary_protocol(results)
    sub = results[results["protocol"] == protocol]
    if sub.empty:
        raise DataError(f"no results for protocol {protocol!r}")
    kind = "preset" if (sub["kind"] == "preset").any() else "model"
    rows = [_point(r) for _, r in sub[sub["kind"] == kind].iterrows()]
    rows = [p for p in rows if not math.isnan(p.ndcg)]
    if not rows:
        raise DataError(f"no {kind} with an NDCG on protocol {protocol!r}")
    reference = max(rows, key=lambda p: p.ndcg)  # first of equals: the order evaluated
    floor = (1.0 - max_ndcg_loss) * reference.ndcg
    eligible = [p for p in rows if p.ndcg >= floor - 1e-12]
    chosen = max(eligible, key=lambda p: (p.tail_share, p.ndcg))
    others = sorted((p for p in rows if p is not chosen), key=lambda p: -p.tail_share)
    knob = None
    sweeps = [_point(r) for _, r in sub[sub["kind"] == "sweep"].iterrows()]
    good = [p for p in sweeps if not math.isnan(p.ndcg) and p.ndcg >= floor - 1e-12]
    if good:
        best = max(good, key=lambda p: (p.tail_share, p.ndcg))
        if best.tail_share > chosen.tail_share + 0.01:
            knob = best
    return Choice(protocol, _k_of(results, k), max_ndcg_loss, reference, chosen, others, knob,
                  kind)


# ---------------------------------------------------------------------------- protocols
def _share(split: str, default: str) -> str:
    m = re.search(r"-(0?\.\d+)$", split)
    return _pct(float(m.group(1))) if m else default


def describe_protocol(protocol: str, split: str = "") -> str:
    """One sentence on what a protocol holds out."""
    if protocol.startswith("time, mean"):
        return ("the time protocol at several cuts (rolling origin), averaged: each cut fits "
                "on the events before it and predicts what returning users did after it.")
    if protocol.startswith("time"):
        cut = protocol.split("@", 1)[1] if "@" in protocol else split.removeprefix("time-")
        at = f" (cut {cut})" if cut else ""
        return (f"fit on every event before a cut in time{at}, then predict what returning "
                "users did after it, as a deployed model would; items first seen after the "
                "cut stay in the catalog. This protocol mirrors deployment.")
    if protocol == "temporal":
        return f"each user's last {_share(split, '20%')} of events (by time) are held out."
    if protocol == "loo":
        return "each user's last event is held out (leave one out)."
    if protocol == "random":
        return f"a random {_share(split, '20%')} of each user's events is held out."
    if protocol == "cold-items":
        return (f"a random {_share(split, '20%')} of the items is never seen in training and "
                "the lists rank only those items, so only their text can place them; every "
                "candidate is unseen, so tail share and novelty say nothing here.")
    return f"split {split or protocol}."


# ---------------------------------------------------------------------------- figures
def _png(fig: plt.Figure) -> str:
    buf = io.BytesIO()
    # "tight": whatever a layout left outside the figure is kept rather than cut off
    fig.savefig(buf, format="png", dpi=_DPI, bbox_inches="tight", pad_inches=0.12)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


#: matplotlib settings for every plot: fonts that read at 1000 px
_STYLE: Any = {"font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11,
               "legend.fontsize": 9, "xtick.labelsize": 10, "ytick.labelsize": 10}


def _varies(values: pd.Series) -> bool:
    v = pd.to_numeric(values, errors="coerce").dropna()
    return len(v) > 1 and float(v.max() - v.min()) > 1e-9


def _colors(names: Sequence[str]) -> dict[str, object]:
    cmap = plt.get_cmap("tab10")
    return {n: cmap(i % 10) for i, n in enumerate(names)}


def _layout(fig: plt.Figure, rect: tuple[float, float, float, float] = (0, 0, 1, 1)) -> None:
    """Fit the axes, their tick labels and axis labels inside ``rect`` of the figure (the rest
    is left to a figure legend or title), so no label is cut at the figure's edge."""
    fig.tight_layout(rect=rect, w_pad=1.5)


def _annotate(ax: Any, labels: list[tuple[str, float, float, dict[str, Any]]]) -> None:
    """Label points inside the axes, once the layout is final: right of a point, or left of
    it when the label would run past the right edge; below it near the top edge."""
    renderer = ax.figure.canvas.get_renderer()
    box = ax.get_window_extent(renderer)
    for text, x, y, style in labels:
        ann = ax.annotate(text, (x, y), textcoords="offset points", xytext=(7, 5),
                          ha="left", va="bottom", **style)
        ext = ann.get_window_extent(renderer)
        dx, dy = 7, 5
        if ext.x1 > box.x1 - 2:
            dx = -7
            ann.set_horizontalalignment("right")
        if ext.y1 > box.y1 - 2:
            dy = -5
            ann.set_verticalalignment("top")
        ann.xyann = (dx, dy)


def frontier_figure(results: pd.DataFrame, protocol: str, k: int | None = None,
                    chosen: str | None = None) -> plt.Figure | None:
    """NDCG against each discovery measure: every knob point of each preset as a marker (so a
    cliff shows as a gap), the presets as large stars, the single models as grey squares.

    None when tail share (or NDCG) is the same for every row of this protocol.
    """
    sub = results[results["protocol"] == protocol]
    if "tail_share" not in sub.columns or not _varies(sub["tail_share"]):
        return None  # every candidate equally rare (cold items): discovery is not measured
    axes_cols = [(c, lbl) for c, lbl in FRONTIER_AXES if c in sub.columns and _varies(sub[c])]
    if not _varies(sub["ndcg"]):
        return None
    presets = [str(n) for n in sub.loc[sub["kind"] == "preset", "name"].unique()]
    colors = _colors(presets)
    nd = f"NDCG@{k}" if k else "NDCG@K"
    models = sub[sub["kind"] == "model"]
    with plt.rc_context(_STYLE):
        fig, axes = plt.subplots(1, len(axes_cols), figsize=(_FIG_WIDTH, 5.0), squeeze=False)
        all_labels: list[tuple[Any, list[tuple[str, float, float, dict[str, Any]]]]] = []
        for ax, (col, label) in zip(axes[0], axes_cols, strict=True):
            labels: list[tuple[str, float, float, dict[str, Any]]] = []
            ax.scatter(models[col], models["ndcg"], marker="s", s=30, color="0.55", zorder=2,
                       label="single models")
            for _, r in models.iterrows():
                labels.append((str(r["name"]), r[col], r["ndcg"],
                               {"fontsize": 8, "color": "0.35"}))
            for name in presets:
                grp = sub[(sub["kind"] == "sweep") & (sub["name"] == name)].sort_values("discovery")
                if len(grp):
                    ax.plot(grp[col], grp["ndcg"], color=colors[name], linewidth=0.8, alpha=0.35)
                    ax.scatter(grp[col], grp["ndcg"], color=colors[name], s=18, zorder=3,
                               label=f"{name}: knob 0 to 1")
                    last = grp.iloc[-1]
                    labels.append((f"knob {last['discovery']:g}", last[col], last["ndcg"],
                                   {"fontsize": 8, "color": colors[name]}))
                for _, r in sub[(sub["kind"] == "preset") & (sub["name"] == name)].iterrows():
                    star = name == chosen
                    ax.scatter([r[col]], [r["ndcg"]], marker="*", s=260 if star else 170,
                               color=colors[name], edgecolor="black", linewidth=0.8, zorder=4)
                    labels.append((f"{name}{' (recommended)' if star else ''}", r[col],
                                   r["ndcg"], {"fontsize": 10, "fontweight": "bold"}))
            ax.set_xlabel(label)
            ax.set_ylabel(nd)
            ax.grid(alpha=0.3)
            ax.margins(x=0.05, y=0.1)  # room for the labels of the points at the edges
            all_labels.append((ax, labels))
        handles, names = axes[0][0].get_legend_handles_labels()
        star_handle = plt.Line2D([], [], marker="*", linestyle="", markersize=13, color="0.3",
                                 markeredgecolor="black", label="preset as shipped")
        fig.legend(handles + [star_handle], names + [star_handle.get_label()],
                   loc="lower center", ncol=len(handles) + 1, frameon=False)
        fig.suptitle(f"Accuracy against discovery, {protocol} protocol (up and right is better)")
        _layout(fig, (0, 0.07, 1, 1))  # the legend below
        for ax, labels in all_labels:
            _annotate(ax, labels)
    return fig


def knob_figure(results: pd.DataFrame, protocol: str, k: int | None = None,
                floor: float | None = None, floor_label: str = "accuracy the rule accepts",
                ) -> plt.Figure | None:
    """NDCG and tail share against the discovery knob, one line of markers per preset, its
    shipped setting starred; ``floor`` draws the accuracy the summary's rule accepts.

    None without knob points or when neither measure moves along the knob.
    """
    sub = results[results["protocol"] == protocol]
    sweep = sub[sub["kind"] == "sweep"]
    panels = [(c, lbl) for c, lbl in (("ndcg", f"NDCG@{k}" if k else "NDCG@K"),
                                      ("tail_share", "tail share"))
              if c in sweep.columns and _varies(sweep[c])]
    if sweep.empty or not panels:
        return None
    names = [str(n) for n in sub.loc[sub["kind"] == "preset", "name"].unique()]
    colors = _colors(names)
    with plt.rc_context(_STYLE):
        fig, axes = plt.subplots(1, len(panels), figsize=(_FIG_WIDTH, 3.9), squeeze=False)
        for ax, (col, label) in zip(axes[0], panels, strict=True):
            for name in names:
                grp = sweep[sweep["name"] == name].sort_values("discovery")
                if grp.empty:
                    continue
                ax.plot(grp["discovery"], grp[col], marker="o", markersize=4, linewidth=1,
                        color=colors[name], label=name)
                for _, r in sub[(sub["kind"] == "preset") & (sub["name"] == name)].iterrows():
                    ax.scatter([r["discovery"]], [r[col]], marker="*", s=170, zorder=4,
                               color=colors[name], edgecolor="black", linewidth=0.8)
            if col == "ndcg" and floor is not None:
                ax.axhline(floor, color="black", linestyle="--", linewidth=0.9,
                           label=floor_label)
            ax.set_xlabel("discovery knob")
            ax.set_ylabel(label)
            ax.set_xlim(-0.03, 1.03)
            ax.grid(alpha=0.3)
        axes[0][0].legend(loc="best", framealpha=0.9)
        fig.suptitle(f"What the discovery knob does, {protocol} protocol "
                     "(star: the preset's shipped setting)")
        _layout(fig)
    return fig


def group_figure(results: pd.DataFrame, protocol: str, prefix: str, groups: list[str],
                 title: str, k: int | None = None) -> plt.Figure | None:
    """Grouped bars of NDCG per item-popularity or user-activity group.

    None when fewer than two groups have any value (one bar per row would repeat NDCG).
    """
    sub = results[(results["protocol"] == protocol) & (results["kind"] != "sweep")]
    present = [g for g in groups if f"{prefix}{g}" in sub.columns
               and sub[f"{prefix}{g}"].notna().any()]
    if len(present) < 2 or sub.empty:
        return None
    with plt.rc_context(_STYLE):
        fig, ax = plt.subplots(figsize=(_FIG_WIDTH, 3.6))
        width = 0.8 / len(present)
        xs = range(len(sub))
        for j, g in enumerate(present):
            ax.bar([x + j * width for x in xs], sub[f"{prefix}{g}"].fillna(0), width, label=g)
        ax.set_xticks([x + width * (len(present) - 1) / 2 for x in xs])
        ax.set_xticklabels(sub["name"], rotation=20, ha="right")
        ax.set_ylabel(f"NDCG@{k}" if k else "NDCG@K")
        ax.legend()
        ax.set_title(f"{title}, {protocol} protocol")
        ax.grid(alpha=0.3, axis="y")
        _layout(fig)
    return fig


def new_items_figure(results: pd.DataFrame, protocol: str, k: int | None = None,
                     ) -> plt.Figure | None:
    """Items first seen after the cut: their share of list slots against their share of the
    test interactions, and recall on them, per model and preset.

    None when the protocol has no new items in its test part.
    """
    sub = results[(results["protocol"] == protocol) & (results["kind"] != "sweep")]
    if "new_item_share" not in sub.columns or sub["new_item_share"].isna().all():
        return None
    if "new_item_test_share" not in sub.columns:
        return None
    test_share = sub["new_item_test_share"].dropna()
    if len(test_share) == 0 or float(test_share.iloc[0]) <= 0:
        return None
    kk = k or "K"
    with plt.rc_context(_STYLE):
        fig, (a, b) = plt.subplots(1, 2, figsize=(_FIG_WIDTH, 3.8))
        xs = list(range(len(sub)))
        a.bar(xs, sub["new_item_share"].fillna(0), color="#4a7")
        a.axhline(float(test_share.iloc[0]), color="black", linestyle="--",
                  label="their share of the test events")
        a.set_ylabel("share of list slots")
        a.set_title("slots given to new items")
        a.legend()
        b.bar(xs, sub["recall_new"].fillna(0), color="#47a")
        b.set_ylabel(f"recall@{kk}")
        b.set_title("recall on events with new items")
        for ax in (a, b):
            ax.set_xticks(xs)
            ax.set_xticklabels(sub["name"], rotation=30, ha="right")
            ax.grid(alpha=0.3, axis="y")
        fig.suptitle(f"New items (first seen after the cut), {protocol} protocol")
        _layout(fig)
    return fig


# ---------------------------------------------------------------------------- html
def _fmt(v: object, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, int | float):
        return f"{v:.{digits}f}"
    return html.escape(str(v))


def _code(text: str) -> str:
    """Escape, then render `name` as <code>name</code>."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def _table(header: Sequence[str], rows: Sequence[Sequence[str]],
           row_classes: Sequence[str] = ()) -> str:
    head = "".join(f"<th scope='col'>{html.escape(h)}</th>" for h in header)
    body = []
    for i, cells in enumerate(rows):
        cls = row_classes[i] if i < len(row_classes) and row_classes[i] else ""
        attr = f" class='{cls}'" if cls else ""
        body.append(f"<tr{attr}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return (f"<div class='scroll'><table><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table></div>")


def _img(fig: plt.Figure, alt: str) -> str:
    return f"<img alt='{html.escape(alt, quote=True)}' src='data:image/png;base64,{_png(fig)}'>"


def _summary_html(results: pd.DataFrame, choice: Choice) -> str:
    nd = choice.ndcg_label
    parts = ["<section id='summary' class='summary' data-testid='summary'>",
             "<h2>Summary: which preset to ship</h2>",
             f"<p class='headline'>{_code(choice.headline())}</p>"]
    costs = choice.costs()
    if costs:
        parts.append(f"<p>{_code(costs[:1].upper() + costs[1:])}</p>")
    knob = choice.knob_sentence()
    if knob:
        parts.append(f"<p>{_code(knob)}</p>")
    split = results.loc[results["protocol"] == choice.protocol, "split"]
    split_name = str(split.iloc[0]) if "split" in results and len(split) else ""
    parts.append(f"<p class='rule'>{_code(choice.rule())} Measured on the "
                 f"<b>{html.escape(choice.protocol)}</b> protocol: "
                 f"{html.escape(describe_protocol(choice.protocol, split_name))}</p>")
    ref = choice.reference
    pts = sorted([choice.chosen, *choice.others], key=lambda p: -p.ndcg)
    timed = any(not math.isnan(p.seconds) for p in pts)
    rows, classes = [], []
    for p in pts:
        mark = " (recommended)" if p.name == choice.chosen.name else ""
        rows.append([
            f"<code>{html.escape(p.name)}</code>{mark}", _fmt(p.discovery, 2),
            _fmt(p.ndcg), _pct(_ratio(p.ndcg, ref.ndcg)), _fmt(p.tail_share, 2),
            "–" if ref.tail_share <= 0 else f"{_ratio(p.tail_share, ref.tail_share):.1f}×",
            _fmt(p.coverage, 2), _fmt(p.novelty, 2),
            *([_duration(p.seconds)] if timed else []),
        ])
        classes.append("chosen" if mark else "")
    parts.append(_table(
        [choice.kind, "knob", nd, f"of {ref.name}", "tail share", f"× {ref.name}",
         "coverage", "novelty", *(["time to produce the lists"] if timed else [])],
        rows, classes))
    slow = choice.slow_sentence()
    if slow:
        parts.append(f"<p class='slow' data-testid='slow'>{_code(slow)}</p>")
    elif timed:
        tref = choice.timing_reference()
        if tref.seconds > 0:
            parts.append(f"<p class='note'>No {choice.kind} takes more than "
                         f"{SLOW_FACTOR:g}× as long as <code>{html.escape(tref.name)}</code> "
                         "to produce the lists.</p>")
    if timed:
        parts.append("<p class='note'>The time column is the wall-clock time to produce "
                     "every test user's list on this machine, scoring included.</p>")
    # does the same rule give the same answer elsewhere?
    same, differ = [], []
    for protocol in results["protocol"].unique():
        protocol = str(protocol)
        if protocol in (choice.protocol, "cold-items"):
            continue
        try:
            other = choose_preset(results, protocol, max_ndcg_loss=choice.max_ndcg_loss,
                                  k=choice.k)
        except DataError:
            continue
        c, r = other.chosen, other.reference
        if c.name == choice.chosen.name:
            same.append(html.escape(protocol))
            continue
        what = f"<code>{html.escape(c.name)}</code> on {html.escape(protocol)}"
        if c.name != r.name:
            what += (f" (keeps {_pct(other.ndcg_ratio)} of <code>{html.escape(r.name)}</code>'s "
                     f"{nd}, tail share {c.tail_share:.2f} vs {r.tail_share:.2f})")
        differ.append(what)
    said = []
    if same:
        said.append(f"The same rule picks <code>{html.escape(choice.chosen.name)}</code> on "
                    f"{' and '.join(same)} too.")
    if differ:
        said.append(f"On other protocols it picks {'; '.join(differ)}.")
    if said:
        if "cold-items" in set(results["protocol"]):
            said.append("(cold-items is left out: it measures only how unseen items are "
                        "ranked.)")
        parts.append(f"<p>{' '.join(said)}</p>")
    parts.append("</section>")
    return "\n".join(parts)


def _main_table(results: pd.DataFrame, protocol: str, k: int | None, chosen: str | None) -> str:
    """Presets, then single models, on the columns that matter; constant columns noted."""
    sub = results[(results["protocol"] == protocol) & (results["kind"] != "sweep")]
    kk = str(k) if k else "K"
    cols, constant = [], []
    for col, label in MAIN_COLUMNS:
        label = label.replace("@K", "@" + kk)
        if col not in sub.columns or sub[col].isna().all():
            continue
        if col != "ndcg" and len(sub) > 1 and not _varies(sub[col]):
            constant.append(f"{label} = {_fmt(float(sub[col].iloc[0]))}")
            continue
        cols.append((col, label))
    header = ["name", "knob", *[lbl for _, lbl in cols]]
    rows: list[list[str]] = []
    classes: list[str] = []
    for kind, heading in (("preset", "Presets"), ("model", "Single models")):
        part = sub[sub["kind"] == kind]
        if part.empty:
            continue
        rows.append([f"<b>{heading}</b>"] + [""] * (len(header) - 1))
        classes.append("group")
        for _, r in part.iterrows():
            is_chosen = kind == "preset" and str(r["name"]) == chosen
            name = f"<code>{html.escape(str(r['name']))}</code>"
            if is_chosen:
                name += " (recommended)"
            knob = _fmt(float(r["discovery"]), 2) if kind == "preset" else "–"
            rows.append([name, knob] + [_fmt(float(r[c])) for c, _ in cols])
            classes.append("chosen" if is_chosen else "")
    out = _table(header, rows, classes)
    if constant:
        out += (f"<p class='note'>Left out because every row has the same value on this "
                f"protocol: {html.escape('; '.join(constant))}.</p>")
    return out


def _details_tables(results: pd.DataFrame, protocol: str) -> str:
    sub = results[(results["protocol"] == protocol) & (results["kind"] != "sweep")]
    cols = [c for c in TABLE_COLUMNS if c in sub.columns and sub[c].notna().any()]
    rows = [[f"<code>{html.escape(str(r['name']))}</code>", html.escape(str(r["kind"]))]
            + [_fmt(float(r[c]), 4) for c in cols] for _, r in sub.iterrows()]
    parts = ["<details><summary>All metrics (every column; the CSV has them too)</summary>",
             _table(["name", "kind", *cols], rows), "</details>"]
    sweep = results[(results["protocol"] == protocol) & (results["kind"] == "sweep")]
    if len(sweep):
        scols = [c for c in ("ndcg", "recall", "tail_share", "coverage", "novelty")
                 if c in sweep.columns]
        srows = [[f"<code>{html.escape(str(r['name']))}</code>", _fmt(float(r["discovery"]), 2)]
                 + [_fmt(float(r[c])) for c in scols] for _, r in sweep.iterrows()]
        parts += [f"<details><summary>Knob sweep points ({len(sweep)})</summary>",
                  _table(["preset", "knob", *scols], srows), "</details>"]
    return "\n".join(parts)


def _protocol_html(results: pd.DataFrame, protocol: str, k: int | None,
                   choice: Choice | None) -> str:
    """One protocol: what it holds out, the main table, the folded tables, the plots (those
    of a protocol the decision is not read from folded away too)."""
    sub = results[results["protocol"] == protocol]
    split = str(sub["split"].iloc[0]) if "split" in sub.columns and len(sub) else ""
    primary = choice is not None and protocol == choice.protocol
    chosen = choice.chosen.name if choice else None
    about = describe_protocol(protocol, split)
    parts = [f"<section class='protocol'><h2>Protocol: {html.escape(protocol)}"
             f"{' (the decision is read from this one)' if primary else ''}</h2>",
             f"<p>{html.escape(about[:1].upper() + about[1:])}</p>",
             _main_table(results, protocol, k, chosen), _details_tables(results, protocol)]
    plots: list[str] = []
    sweep = sub[sub["kind"] == "sweep"]
    if len(sweep):
        counts = sorted({int(n) for n in sweep.groupby("name").size()})
        n_points = " or ".join(str(n) for n in counts)
        fig = frontier_figure(results, protocol, k, chosen)
        if fig is not None:
            plots.append(f"<p>Each re-ranking preset's knob is swept from 0 to 1 in {n_points} "
                         "steps, each step drawn as a dot: a wide gap between neighbouring "
                         "dots is a cliff, where a small turn of the knob costs much "
                         "accuracy. Stars are the presets as shipped.</p>")
            plots.append(_img(fig, f"accuracy against discovery, {protocol}"))
        else:
            plots.append("<p class='note'>No accuracy/discovery plot: on this protocol every "
                         "row has the same tail share, so there is no discovery to trade.</p>")
        floor = (1 - choice.max_ndcg_loss) * choice.reference.ndcg if primary and choice else None
        fig = knob_figure(results, protocol, k, floor, "" if choice is None else
                          f"{_pct(1 - choice.max_ndcg_loss)} of {choice.reference.name}'s "
                          f"{choice.ndcg_label}: the rule's floor")
        if fig is not None:
            plots.append(_img(fig, f"the discovery knob, {protocol}"))
    fig = new_items_figure(results, protocol, k)
    if fig is not None:
        plots.append(_img(fig, f"new items, {protocol}"))
    groups: list[str] = []
    for prefix, names, ttl in (
        ("ndcg_", ["head", "mid", "tail"], "NDCG by item-popularity group"),
        ("ndcg_users_", ["low", "mid", "high"], "NDCG by user-activity group"),
    ):
        fig = group_figure(results, protocol, prefix, names, ttl, k)
        if fig is not None:
            groups.append(_img(fig, f"{ttl}, {protocol}"))
        elif any(c.startswith(prefix) for c in sub.columns):
            groups.append(f"<p class='note'>{html.escape(ttl)} is left out: on this protocol "
                          "at most one group has held-out items, so the bars would repeat "
                          "the NDCG column.</p>")
    if groups:
        plots.append("<details><summary>NDCG by item popularity and by user activity"
                     "</summary>" + "\n".join(groups) + "</details>")
    if primary:
        parts += plots
    elif plots:
        parts.append("<details><summary>Plots for this protocol</summary>"
                     + "\n".join(plots) + "</details>")
    parts.append("</section>")
    return "\n".join(parts)


_CSS = """
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#222;
 line-height:1.45;font-size:16px}
main{max-width:1080px;margin:0 auto;padding:1.5rem 2rem 3rem}
h1{font-size:1.7rem;margin:.2rem 0 .3rem}
h2{font-size:1.3rem;margin-top:2.2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem}
.meta{color:#555;margin:.2rem 0}
.summary{background:#f4f8f4;border:1px solid #b9d3b9;border-radius:6px;padding:.4rem 1.2rem 1rem}
.summary h2{border:0;margin-top:.6rem}
.headline{font-size:1.15rem;font-weight:600}
.rule,.note{color:#444;font-size:.93rem}
.slow{border-left:4px solid #b45309;padding:.2rem .6rem;background:#fff7e6}
code{background:#eef;padding:0 .25em;border-radius:3px}
.scroll{overflow-x:auto;max-width:100%;margin:.5rem 0}
table{border-collapse:collapse;font-size:14px}
td,th{padding:4px 9px;border-bottom:1px solid #ddd;text-align:right;white-space:nowrap}
th{white-space:normal;vertical-align:bottom;min-width:4.5em}
td:first-child,th:first-child{text-align:left}
th{background:#f3f3f3}
tr.chosen td{background:#e2f0e2;font-weight:600}
tr.group td{background:#fafafa;color:#555}
img{display:block;max-width:100%;height:auto;margin:.8rem 0}
details{margin:.6rem 0}
summary{cursor:pointer;color:#245}
dl{font-size:.93rem}dt{font-weight:600}dd{margin:0 0 .4rem 1rem}
"""

_GLOSSARY = [
    ("NDCG@K, recall@K", "accuracy: how high, and how many of, the items users went on to use "
     "appear in the top K (docs/metrics.md has every definition)"),
    ("tail share", "share of list slots given to long-tail items: items outside the 20% most "
     "used in training"),
    ("coverage", "share of the catalog that appears in at least one list"),
    ("novelty", "mean self-information of the listed items, -log2(share of users who used "
     "them): higher means less well-known"),
    ("new-item share", "time protocol: share of list slots given to items first seen after "
     "the cut"),
    ("knob", "the discovery knob, 0 (pure relevance) to 1 (most discovery); each re-ranking "
     "preset ships with its own setting"),
    ("time to produce the lists", "wall-clock time to produce every test user's list, "
     "scoring and re-ranking included (recommend_seconds in the CSV)"),
]


def write_report(results: pd.DataFrame, path: str | Path, title: str | None = None, *,
                 dataset: DatasetInfo | None = None, k: int | None = None,
                 max_ndcg_loss: float = MAX_NDCG_LOSS) -> Path:
    """Write the self-contained HTML report; returns its path.

    ``results`` are ``run_experiment`` rows (any number of protocols); ``dataset`` names the
    data and its size; ``k`` is the list length (default: the results' ``k`` column);
    ``max_ndcg_loss`` is the accuracy the recommended preset may give up (see
    ``choose_preset``).  ``title`` defaults to one naming the data set.
    """
    path = Path(path)
    kk = _k_of(results, k)
    if title is None:
        title = f"serendip evaluation: {dataset.name}" if dataset else "serendip evaluation"
    title = _readable_title(title)
    protocols = [str(p) for p in results["protocol"].unique()]
    choice: Choice | None = None
    try:
        choice = choose_preset(results, max_ndcg_loss=max_ndcg_loss, k=kk)
    except DataError:
        choice = None
    first = choice.protocol if choice else (protocols[0] if protocols else "")
    protocols = [first] + [p for p in protocols if p != first] if protocols else []
    meta = []
    if dataset is not None:
        meta.append(f"Data: <b>{html.escape(dataset.describe())}</b>.")
    meta.append(f"Lists of K = {kk} items; every metric reads the top {kk}." if kk
                else "The list length K was not recorded with these results.")
    ranking = "Full ranking of the items each user has not used"
    if "cold-items" in protocols:
        ranking += " (cold-items: of the held-out items)"
    meta.append(f"{'Protocol' if len(protocols) == 1 else 'Protocols'}: "
                f"{html.escape(', '.join(protocols))}. {ranking}.")
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body><main>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p class='meta'>{' '.join(meta)}</p>",
        f"<p class='meta'>Generated {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}.</p>",
    ]
    if choice is not None:
        parts.append(_summary_html(results, choice))
    else:
        parts.append("<section id='summary' class='summary' data-testid='summary'><h2>Summary"
                     "</h2><p>No preset or model has an NDCG in these results, so there is "
                     "nothing to recommend.</p></section>")
    for protocol in protocols:
        parts.append(_protocol_html(results, protocol, kk, choice))
    parts.append("<section><h2>What the columns mean</h2><dl>")
    for term, text in _GLOSSARY:
        parts.append(f"<dt>{html.escape(term.replace('@K', '@' + str(kk or 'K')))}</dt>"
                     f"<dd>{html.escape(text)}</dd>")
    parts.append("</dl></section></main></body></html>")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text("\n".join(parts))
    os.replace(tmp, path)
    return path
