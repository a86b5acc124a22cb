"""The HTML report: the decision rule on hand-made results, the title, K and the plots it skips."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest

from serendip.data import Dataset
from serendip.errors import ConfigError, DataError
from serendip.eval.report import (
    DatasetInfo,
    choose_preset,
    frontier_figure,
    group_figure,
    knob_figure,
    new_items_figure,
    primary_protocol,
    write_report,
)

KNOBS = [round(0.05 * i, 2) for i in range(21)]


def _row(protocol: str, split: str, kind: str, name: str, discovery: float, ndcg: float,
         tail: float, **extra: float) -> dict[str, object]:
    row: dict[str, object] = {
        "protocol": protocol, "split": split, "kind": kind, "name": name,
        "discovery": discovery, "k": 10, "ndcg": ndcg, "recall": ndcg / 2, "tail_share": tail,
        "coverage": 0.2 + tail / 4, "novelty": 2.0 + 4 * tail, "hit_rate": 2 * ndcg,
        "ndcg_head": ndcg * 1.2, "ndcg_mid": ndcg * 0.5, "ndcg_tail": ndcg * 0.3,
        "ndcg_users_low": ndcg * 0.9, "ndcg_users_mid": ndcg, "ndcg_users_high": ndcg * 1.1,
        "new_item_share": math.nan, "new_item_test_share": math.nan, "recall_new": math.nan,
    }
    row.update(extra)
    return row


def _balanced(d: float) -> tuple[float, float]:
    """Flat to 0.5, then a cliff: NDCG 0.200 - 0.012 d, and 0.300 per unit faster past 0.5."""
    ndcg = 0.2 - 0.012 * d if d <= 0.5 else 0.194 - 0.3 * (d - 0.5)
    return ndcg, 0.10 + 0.44 * d


def _discovery(d: float) -> tuple[float, float]:
    return 0.2 - 0.0625 * d, 0.10 + 0.625 * d


def synthetic_results() -> pd.DataFrame:
    """Three protocols of hand-made rows, 21 knob points per re-ranking preset.

    On ``time``: accurate NDCG 0.200 / tail 0.10, balanced (knob 0.5) 0.194 / 0.32,
    discovery (knob 0.8) 0.150 / 0.60.  cold-items has one tail share for every row and
    only the tail popularity group, as a cold-item holdout does.
    """
    rows: list[dict[str, object]] = []
    for protocol, split, scale in (("time", "time-0.8", 1.0), ("loo", "loo", 0.5)):
        new = ({"new_item_share": 0.01, "new_item_test_share": 0.03, "recall_new": 0.02}
               if protocol == "time" else {})
        for name, nd, tail in (("popularity", 0.15, 0.01), ("ease", 0.17, 0.12),
                               ("semantic", 0.02, 0.9)):
            rows.append(_row(protocol, split, "model", name, 0.5, nd * scale, tail, **new))
        rows.append(_row(protocol, split, "preset", "accurate", 0.0, 0.2 * scale, 0.1, **new))
        for name, curve, setting in (("balanced", _balanced, 0.5), ("discovery", _discovery, 0.8)):
            nd, tail = curve(setting)
            rows.append(_row(protocol, split, "preset", name, setting, nd * scale, tail, **new))
            for d in KNOBS:
                nd, tail = curve(d)
                rows.append(_row(protocol, split, "sweep", name, d, nd * scale, tail, **new))
    cold = {"tail_share": 1.0, "novelty": 9.88, "ndcg_head": math.nan, "ndcg_mid": math.nan}
    for kind, name, d, nd in (("model", "popularity", 0.5, 0.25), ("model", "semantic", 0.5, 0.07),
                              ("preset", "accurate", 0.0, 0.25), ("preset", "balanced", 0.5, 0.23)):
        rows.append(_row("cold-items", "cold-items-0.2", kind, name, d, nd, 1.0, **cold))
    for d in KNOBS:
        rows.append(_row("cold-items", "cold-items-0.2", "sweep", "balanced", d, 0.25 - 0.02 * d,
                         1.0, **cold))
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------- the rule
def test_rule_ships_the_most_discovery_within_the_accuracy_budget():
    choice = choose_preset(synthetic_results())
    assert choice.protocol == "time" and choice.k == 10
    assert choice.reference.name == "accurate" and choice.chosen.name == "balanced"
    # 0.194 / 0.200 = 97 %; 0.32 / 0.10 = 3.2 x; discovery (75 %) is outside the 10 % budget
    assert choice.ndcg_ratio == pytest.approx(0.97)
    assert choice.tail_ratio == pytest.approx(3.2)
    assert choice.headline() == (
        "Ship `balanced`: it keeps 97% of `accurate`'s NDCG@10 (0.194 vs 0.200) and shows "
        "3.2× as many long-tail items (tail share 0.32 vs 0.10)."
    )
    # the knob points within budget never beat balanced's own setting by > 0.01 tail share
    assert choice.knob is None and choice.knob_sentence() is None
    assert "at least 90% of the most accurate preset's" in choice.rule()
    assert "K = 10" in choice.rule()


def test_a_larger_budget_ships_discovery_and_a_tiny_one_keeps_accurate():
    results = synthetic_results()
    loose = choose_preset(results, max_ndcg_loss=0.30)
    assert loose.chosen.name == "discovery"
    assert loose.headline() == (
        "Ship `discovery`: it keeps 75% of `accurate`'s NDCG@10 (0.150 vs 0.200) and shows "
        "6.0× as many long-tail items (tail share 0.60 vs 0.10)."
    )
    tight = choose_preset(results, max_ndcg_loss=0.02)
    assert tight.chosen.name == "accurate"
    assert tight.headline() == (
        "Ship `accurate`: it is the most accurate preset (NDCG@10 0.200), and every preset "
        "with more discovery loses more than 2% of that accuracy."
    )
    assert tight.costs() == (
        "`discovery` keeps 75% (0.150) and shows 6.0× as many long-tail items (tail share "
        "0.60 vs 0.10); `balanced` keeps 97% (0.194) and shows 3.2× as many long-tail items "
        "(tail share 0.32 vs 0.10)."
    )
    assert loose.costs() is None
    with pytest.raises(ConfigError, match=r"max_ndcg_loss must be in \[0, 1\), got 1.0"):
        choose_preset(results, max_ndcg_loss=1.0)
    with pytest.raises(DataError, match="no results for protocol 'random'"):
        choose_preset(results, "random")


def test_a_knob_setting_with_more_discovery_in_budget_is_named():
    results = synthetic_results()
    # balanced at knob 0.6 now keeps 92 % (0.184) with tail share 0.45
    at = (results["protocol"] == "time") & (results["kind"] == "sweep") & (
        results["name"] == "balanced") & (results["discovery"] == 0.6)
    results.loc[at, ["ndcg", "tail_share"]] = [0.184, 0.45]
    choice = choose_preset(results)
    assert choice.chosen.name == "balanced"
    assert choice.knob is not None and choice.knob.discovery == 0.6
    assert choice.knob_sentence().startswith(
        "Worth trying: `balanced` with the discovery knob at 0.6 keeps 92% of `accurate`'s "
        "NDCG@10 (0.184) and shows 4.5× as many long-tail items (tail share 0.45 vs 0.10)"
    )


def test_zero_tail_share_and_models_only():
    rows = [_row("loo", "loo", "model", "popularity", 0.5, 0.10, 0.0),
            _row("loo", "loo", "model", "semantic", 0.5, 0.095, 0.5),
            _row("loo", "loo", "model", "als", 0.5, 0.05, 0.9)]
    choice = choose_preset(pd.DataFrame(rows))
    assert choice.kind == "model" and choice.chosen.name == "semantic"
    assert choice.headline() == (
        "Ship `semantic`: it keeps 95% of `popularity`'s NDCG@10 (0.095 vs 0.100) and gives "
        "50% of its list slots to long-tail items where `popularity` gives none "
        "(tail share 0.50 vs 0)."
    )


def test_primary_protocol_prefers_the_time_cut():
    def frame(*protocols: str) -> pd.DataFrame:
        return pd.DataFrame({"protocol": list(protocols)})

    assert primary_protocol(frame("loo", "time", "cold-items")) == "time"
    assert primary_protocol(frame("time@0.7", "time@0.8", "time, mean of 2 cuts")) == \
        "time, mean of 2 cuts"
    assert primary_protocol(frame("cold-items", "temporal")) == "temporal"
    assert primary_protocol(frame("cold-items")) == "cold-items"


# ---------------------------------------------------------------------------- the page
def test_report_names_the_data_states_k_and_marks_the_choice(tmp_path):
    data = DatasetInfo("MovieLens-100K", 943, 1682, 100_000)
    path = write_report(synthetic_results(), tmp_path / "r.html", dataset=data)
    page = path.read_text()
    title = re.search(r"<title>(.*?)</title>", page).group(1)
    h1 = re.search(r"<h1>(.*?)</h1>", page).group(1)
    assert "MovieLens-100K" in title and "MovieLens-100K" in h1
    assert "Dataset(" not in page
    assert "MovieLens-100K: 943 users, 1,682 items, 100,000 events" in page
    assert "K = 10" in page and "NDCG@10" in page and "NDCG@K" not in page
    # the summary comes first, with the decision in words and numbers
    summary = page.index("id='summary'")
    assert summary < page.index("Protocol: time")
    assert ("Ship <code>balanced</code>: it keeps 97% of <code>accurate</code>&#x27;s NDCG@10"
            in page)
    assert "<code>balanced</code> (recommended)" in page
    assert "The same rule picks <code>balanced</code> on loo too." in page
    # every metric is still there, folded away
    assert "recall@10" in page
    time_part = page[page.index("Protocol: time"):page.index("Protocol: loo")]
    assert "hit_rate" not in time_part[:time_part.index("<details>")]  # not a main column
    assert "hit_rate" in time_part  # but in the folded table
    # cold-items: no accuracy/discovery plot, no popularity-group plot, and why
    cold = page[page.index("Protocol: cold-items"):]
    assert "every row has the same tail share" in cold
    assert "NDCG by item-popularity group is left out" in cold
    assert "tail share = 1.000" in cold
    # time: frontier, knob, new items, 2 groups; loo: frontier, knob, 2 groups (folded);
    # cold-items: knob, user groups
    assert page.count("<img ") == 5 + 4 + 2


def test_report_without_names_never_shows_a_repr(tmp_path):
    results = synthetic_results()
    results = results[(results["protocol"] == "loo") & (results["kind"] != "sweep")]
    results = results.drop(columns=["k", "ndcg_users_low", "ndcg_users_mid", "ndcg_users_high"])
    path = write_report(results, tmp_path / "r.html",
                        title="serendip evaluation (Dataset(943 users, 1682 items, 100000 "
                              "interactions))", k=20)
    page = path.read_text()
    assert "Dataset(" not in page
    assert "serendip evaluation (943 users, 1,682 items, 100,000 events)" in page
    assert "K = 20" in page and "NDCG@20" in page
    # without k at all the page says it was not recorded rather than guessing
    page = write_report(results, tmp_path / "s.html").read_text()
    assert "K (the list length) was not recorded" in page


def test_dataset_info_from_a_dataset():
    inter = pd.DataFrame({"user_id": ["a", "a", "b", "c"], "item_id": ["x", "y", "x", "z"],
                          "timestamp": [1.0, 2.0, 3.0, 4.0]})
    info = DatasetInfo.of(Dataset.from_frames(inter), "movielens")
    assert info == DatasetInfo("MovieLens-100K", 3, 3, 4, True)
    assert DatasetInfo.of(Dataset.from_frames(inter), "events.csv").describe() == \
        "events.csv: 3 users, 3 items, 4 events"


def test_degenerate_plots_are_skipped():
    results = synthetic_results()
    assert frontier_figure(results, "cold-items") is None  # one tail share for every row
    assert group_figure(results, "cold-items", "ndcg_", ["head", "mid", "tail"], "t") is None
    assert new_items_figure(results, "loo") is None
    fig = knob_figure(results, "cold-items")  # NDCG moves along the knob, tail share does not
    assert fig is not None and len(fig.axes) == 1
    fig = frontier_figure(results, "time", 10, "balanced")
    assert fig is not None and len(fig.axes) == 2
    # every knob point is drawn as its own marker: 21 per swept preset
    counts = sorted(len(c.get_offsets()) for c in fig.axes[0].collections)
    assert counts.count(21) == 2
    w, h = fig.get_size_inches() * fig.dpi
    assert 900 <= w <= 1100 and h < 600


def test_report_degrades_without_presets_or_sweeps(tmp_path):
    rows = [_row("random", "random-0.2", "model", n, 0.5, nd, t)
            for n, nd, t in (("a", 0.1, 0.2), ("b", 0.2, 0.1))]
    page = write_report(pd.DataFrame(rows), tmp_path / "r.html").read_text()
    assert "Ship <code>b</code>" in page and "most accurate model" in page
    assert not np.isnan(choose_preset(pd.DataFrame(rows)).reference.ndcg)
    with pytest.raises(ConfigError, match="max_ndcg_loss"):  # a bad budget is not swallowed
        write_report(pd.DataFrame(rows), tmp_path / "s.html", max_ndcg_loss=-0.1)


# ---------------------------------------------------------------------------- layout, header, time
def _outside(fig) -> list[str]:
    """Texts cut by the figure's edge (axis and tick labels) or leaving their axes (point
    labels), after drawing."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    page = fig.bbox
    bad = []
    for ax in fig.axes:
        box = ax.get_window_extent(renderer)
        ticks = []  # the tick labels drawn: those inside the axis' view
        for labels, values, (lo, hi) in ((ax.get_yticklabels(), ax.get_yticks(), ax.get_ylim()),
                                         (ax.get_xticklabels(), ax.get_xticks(), ax.get_xlim())):
            ticks += [t for t, v in zip(labels, values, strict=True)
                      if min(lo, hi) - 1e-9 <= v <= max(lo, hi) + 1e-9]
        for t in [ax.xaxis.label, ax.yaxis.label, ax.title, *ticks]:
            e = t.get_window_extent(renderer)
            if t.get_text() and (e.x0 < page.x0 or e.x1 > page.x1 or e.y0 < page.y0
                                 or e.y1 > page.y1):
                bad.append(f"{t.get_text()!r} past the figure's edge")
        for t in ax.texts:
            e = t.get_window_extent(renderer)
            if e.x0 < box.x0 or e.x1 > box.x1 or e.y0 < box.y0 or e.y1 > box.y1:
                bad.append(f"{t.get_text()!r} outside its axes")
    return bad


def test_plot_labels_stay_inside_the_figure():
    results = synthetic_results()
    # accurate ships and sits at the right-hand edge of the coverage axis, at the top
    on_time = results["protocol"] == "time"
    results.loc[on_time & (results["name"] == "accurate"), "coverage"] = 0.47
    choice = choose_preset(results, max_ndcg_loss=0.02)
    assert choice.chosen.name == "accurate"
    figures = {
        "frontier": frontier_figure(results, "time", 10, "accurate"),
        "knob": knob_figure(results, "time", 10, 0.196, "98% of accurate's NDCG@10"),
        "groups": group_figure(results, "time", "ndcg_", ["head", "mid", "tail"], "groups", 10),
        "new items": new_items_figure(results, "time", 10),
    }
    for name, fig in figures.items():
        assert fig is not None, name
        assert _outside(fig) == [], name
    front = figures["frontier"]
    labels = [t.get_text() for t in front.axes[1].texts]
    assert "accurate (recommended)" in labels and "NDCG@10" == front.axes[0].get_ylabel()


def test_header_names_only_the_protocols_run(tmp_path):
    results = synthetic_results()
    time_only = results[results["protocol"] == "time"]
    page = write_report(time_only, tmp_path / "r.html").read_text()
    assert "cold-items" not in page and "Protocol: time." in page
    page = write_report(results, tmp_path / "s.html").read_text()
    header = re.search(r"<p class='meta'>(.*?)</p>", page).group(1)
    assert "Protocols: time, loo, cold-items." in header
    assert "(cold-items: of the held-out items)" in header


def test_time_to_produce_the_lists_is_shown_and_a_slow_preset_named(tmp_path):
    results = synthetic_results()
    seconds = {"accurate": 1.2, "balanced": 2.0, "discovery": 3.0, "popularity": 0.1}
    results["recommend_seconds"] = results["name"].map(seconds).fillna(0.5)
    choice = choose_preset(results)
    assert choice.timing_reference().name == "accurate"
    # 3.0 / 1.2 = 2.5x: named; balanced 2.0 / 1.2 = 1.7x: not
    assert choice.slow_sentence() == ("Time to produce the lists: `discovery` takes 2.5× as "
                                      "long as `accurate` (3.0 s vs 1.2 s).")
    page = write_report(results, tmp_path / "r.html").read_text()
    summary = page[page.index("id='summary'"):page.index("</section>")]
    assert "<th scope='col'>time to produce the lists</th>" in summary
    for name, shown in (("accurate", "1.2 s"), ("balanced", "2.0 s"), ("discovery", "3.0 s")):
        row = re.search(rf"<tr[^>]*><td><code>{name}</code>.*?</tr>", summary).group(0)
        assert row.endswith(f"<td>{shown}</td></tr>"), row
    assert ("<code>discovery</code> takes 2.5× as long as <code>accurate</code> "
            "(3.0 s vs 1.2 s)") in summary
    assert "<code>balanced</code> takes" not in summary

    # nobody slow: said so; no times recorded: no column and no sentence
    results["recommend_seconds"] = 1.0
    page = write_report(results, tmp_path / "s.html").read_text()
    assert "No preset takes more than 2× as long as <code>accurate</code>" in page
    page = write_report(synthetic_results(), tmp_path / "t.html").read_text()
    assert "time to produce the lists</th>" not in page and "as long as" not in page
