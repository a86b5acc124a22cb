"""The simulator: planted worlds whose answers are known by hand."""

from __future__ import annotations

import numpy as np
import pytest

from serendip.errors import ConfigError
from serendip.explore.policies import RandomSlate, RidgeSlate, ThompsonSlate
from serendip.explore.simulator import (
    FEATURES,
    Oracle,
    World,
    WorldConfig,
    build_world,
    calibrate_offset,
    run_policy,
    simulate,
    summarize,
    t_interval,
)
from tests.conftest import make_blocks


def planted(q: np.ndarray, *, popularity: np.ndarray | None = None,
            new_items: np.ndarray | None = None, release_at: np.ndarray | None = None,
            seed: int = 0, **cfg: float) -> World:
    """A world with no histories, uninformative base scores and random text vectors."""
    rng = np.random.default_rng(seed)
    n_u, n_i = q.shape
    config = WorldConfig(**{"base_candidates": n_i, "tail_candidates": 0,
                            "new_candidates": n_i, "shown_decay": 1.0,
                            "consumed_decay": 1.0, **cfg})
    pop = np.full(n_i, 5.0) if popularity is None else popularity
    return World(q, [np.zeros(0, dtype=np.int64)] * n_u, rng.normal(size=q.shape),
                 rng.normal(size=(n_i, 4)), pop, config, new_items=new_items,
                 release_at=release_at)


def test_position_bias_is_applied_as_configured():
    w = planted(np.ones((2, 6)), slots=3, position_decay=1.0)
    items = np.array([0, 1, 2])
    assert w.expected(0, items) == pytest.approx(1 + 1 / 2 + 1 / 3)
    # with every item certain to attract, slot p is clicked iff u < 1 / (p + 1)
    clicked = w.step(0, items, np.array([0.4, 0.4, 0.4]))
    assert clicked.tolist() == [1.0, 1.0, 0.0]
    w2 = planted(np.ones((2, 6)), slots=3, position_decay=0.5)
    np.testing.assert_allclose(w2.position, [1.0, 2**-0.5, 3**-0.5])


def test_satiation_reduces_a_repeated_item_by_the_configured_factors():
    w = planted(np.full((1, 4), 0.5), slots=1, shown_decay=0.8, consumed_decay=0.5)
    item = np.array([2])
    assert w.click_probability(0, item)[0] == pytest.approx(0.5)
    assert w.step(0, item, np.array([0.99]))[0] == 0.0  # shown, not clicked
    assert w.click_probability(0, item)[0] == pytest.approx(0.5 * 0.8)
    assert w.step(0, item, np.array([0.0]))[0] == 1.0  # shown and clicked
    assert w.click_probability(0, item)[0] == pytest.approx(0.5 * 0.8**2 * 0.5)
    assert w.click_probability(0, np.array([1]))[0] == pytest.approx(0.5)  # others untouched
    x = w.features(0, np.array([2, 1]))
    assert x[0, FEATURES.index("shown")] == pytest.approx(0.75)  # 1 - 0.5 ** 2 showings
    assert x[0, FEATURES.index("clicked")] == 1.0 and x[1, FEATURES.index("clicked")] == 0.0
    w.reset()
    assert w.click_probability(0, item)[0] == pytest.approx(0.5)


def test_new_items_are_invisible_before_their_release():
    q = np.full((3, 10), 0.3)
    w = planted(q, new_items=np.array([7, 8]), release_at=np.array([5, 9]))
    for visit in range(12):
        items = set(w.candidates(visit % 3, visit).tolist())
        assert (7 in items) == (visit >= 5) and (8 in items) == (visit >= 9)
        assert set(range(7)) <= items and 9 in items
    x = w.features(0, np.array([7, 0]))
    assert x[:, FEATURES.index("new")].tolist() == [1.0, 0.0]
    assert x[0, FEATURES.index("tail")] == 1.0  # a new item is never in the head
    rng = np.random.default_rng(0)
    n = 40
    trace = run_policy(w, RandomSlate(0), rng.integers(3, size=n), rng.random((n, 5)))
    assert trace.clicks.size == n
    # nothing ever clicked on an unreleased item: its showings start at its release
    w.reset()
    for visit in range(4):
        ctx = w.context(0, visit)
        assert not ctx.new.any()


def test_oracle_regret_is_zero_and_random_pays_some():
    rng = np.random.default_rng(3)
    q = rng.uniform(0.0, 0.6, size=(10, 25))
    w = planted(q, shown_decay=0.7, consumed_decay=0.3)
    users, uniforms = rng.integers(10, size=300), rng.random((300, 5))
    oracle = run_policy(w, Oracle(w), users, uniforms)
    assert np.all(oracle.regret == 0.0)
    rand = run_policy(w, RandomSlate(1), users, uniforms)
    assert rand.regret.sum() > 10 and oracle.clicks.sum() > rand.clicks.sum()


def test_a_learning_policy_finds_the_feature_that_decides_clicks():
    """Clicks depend only on novelty: obscure items attract (0.6), popular ones do not (0.02);
    the base scores say nothing.  Thompson sampling learns a large novelty weight, gets close
    to the oracle and well above random."""
    n_u, n_i = 30, 40
    obscure = np.arange(n_i) % 2 == 0
    pop = np.where(obscure, 1.0, 25.0)
    q = np.tile(np.where(obscure, 0.6, 0.02), (n_u, 1))
    w = planted(q, popularity=pop)
    rng = np.random.default_rng(5)
    n = 600
    users, uniforms = rng.integers(n_u, size=n), rng.random((n, 5))
    d = len(FEATURES)
    ts = ThompsonSlate(d, seed=1)
    learnt = run_policy(w, ts, users, uniforms)
    rand = run_policy(w, RandomSlate(1), users, uniforms)
    oracle = run_policy(w, Oracle(w), users, uniforms)
    last = slice(n // 2, n)
    assert learnt.clicks[last].sum() > 1.5 * rand.clicks[last].sum()
    assert learnt.regret[last].sum() < 0.2 * rand.regret[last].sum()
    assert learnt.clicks.sum() <= oracle.clicks.sum() + 3 * np.sqrt(oracle.clicks.sum())
    weights = dict(zip(FEATURES, ts.mean(), strict=True))
    assert weights["novelty"] > 0.2 and weights["novelty"] > abs(weights["relevance"])


def test_discovery_counts_distinct_relevant_tail_items_clicked():
    q = np.array([[0.9, 0.9, 0.1, 0.9]])
    pop = np.array([9.0, 1.0, 1.0, 1.0])  # head (share 0.25 of 4 items): item 0
    w = planted(q, popularity=pop, head_share=0.25, relevant=0.5, slots=4, position_decay=0.0,
                new_items=np.array([3]), release_at=np.array([0]))
    w.step(0, np.array([0, 1, 2, 3]), np.zeros(4))  # everything clicked
    w.step(0, np.array([1]), np.zeros(1))  # a second click on 1 is not a second discovery
    assert w.discovery() == (2.0, 1.0)  # 1 and 3; 0 is head, 2 is not relevant


def test_calibrated_offset_hits_the_click_rate():
    z = np.random.default_rng(0).normal(size=(50, 80))
    off = calibrate_offset(z, 1.5, 0.3, 10)
    top = -np.sort(-z, axis=1)[:, :10]
    assert float((1 / (1 + np.exp(-(off + 1.5 * top)))).mean()) == pytest.approx(0.3, abs=1e-6)


def test_t_interval_by_hand():
    mean, half = t_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(4.302653 / np.sqrt(3), rel=1e-6)
    assert t_interval([4.0]) == (4.0, 0.0)


def test_simulate_shares_visits_and_draws_and_rejects_bad_names():
    rng = np.random.default_rng(2)
    q = rng.uniform(0, 0.5, size=(8, 15))
    traces = simulate(lambda s: planted(q, seed=s), ["oracle", "greedy", "random"], [0, 1], 50,
                      checkpoints=5)
    assert [t.name for t in traces][:3] == ["oracle", "greedy", "random"]
    rows = summarize(traces, 5)
    assert [r["policy"] for r in rows] == ["oracle", "greedy", "random"]
    assert rows[0]["regret"] == 0.0 and rows[0]["seeds"] == 2
    with pytest.raises(ConfigError, match="nope"):
        simulate(lambda s: planted(q), ["nope"], [0], 10)


def test_greedy_never_explores_a_candidate_its_model_ranks_low():
    q = np.full((4, 12), 0.2)
    w = planted(q)
    g = RidgeSlate(len(FEATURES), prior_mean=np.eye(len(FEATURES))[1])
    ctx = w.context(0, 0)
    a, b = g.select(ctx, 5), g.select(ctx, 5)
    assert a.positions.tolist() == b.positions.tolist()
    order = np.argsort(-ctx.features[:, 1], kind="stable")[:5]
    assert a.positions.tolist() == order.tolist()


def test_build_world_from_ratings():
    data = make_blocks(n_users=40, n_items=20)
    inter = data.interactions.copy()
    inter["rating"] = np.where(inter["item"] % 3 == 0, 5.0, 3.0)
    data = data.with_interactions(inter)
    cfg = WorldConfig(rank=3, new_share=0.1, new_min_ratings=1, releases=2, top_click=0.3,
                      calibration_items=3)
    w = build_world(data, np.asarray(data.item_vectors), cfg, seed=0, visits=90)
    assert w.new_items.size == 2 and sorted(set(w.release_at.tolist())) == [30, 60]
    for h in w.histories:  # new items are nowhere in what the policies see
        assert not np.isin(h, w.new_items).any()
    assert np.all(w.popularity[w.new_items] == 0)
    sizes = inter.groupby("user").size().to_numpy()
    assert sum(h.size for h in w.histories) <= int(np.ceil(sizes / 2).sum())


def simulate_args(*argv: str):  # type: ignore[no-untyped-def]
    import argparse

    from serendip.explore.commands import add_simulate_parser

    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="command")
    add_simulate_parser(sub, lambda parent, name, help, *examples, **kw: parent.add_parser(
        name, help=help))
    return p.parse_args(["simulate", *argv])


@pytest.mark.parametrize(("argv", "message"), [
    (["--policies", "greedy,nope"], "unknown policy 'nope'"),
    (["--seeds", "0"], "--seeds must be a positive integer, got 0"),
    (["--policies", ","], "names no policy"),
])
def test_simulate_command_user_errors(argv, message):
    from serendip.explore.commands import cmd_simulate

    args = simulate_args(*argv)
    with pytest.raises(ConfigError, match=message):
        cmd_simulate(args)


def test_simulate_command_checks_world_settings_and_outputs(tmp_path):
    from serendip.explore.commands import cmd_simulate

    bad = tmp_path / "w.json"
    bad.write_text('{"novelty_share": 2.0}')
    with pytest.raises(ConfigError, match=r"--world: novelty_share: .*2\.0"):
        cmd_simulate(simulate_args("--world", str(bad)))
    bad.write_text('{"no_such_setting": 1}')
    with pytest.raises(ConfigError, match="no_such_setting"):
        cmd_simulate(simulate_args("--world", str(bad)))
    with pytest.raises(ConfigError, match="is a directory"):
        cmd_simulate(simulate_args("--json", str(tmp_path)))


def test_library_baselines_learn_a_planted_world():
    """VW and MABWiser on the planted novelty world: both beat random in the second half."""
    pytest.importorskip("vowpalwabbit")
    pytest.importorskip("mabwiser")
    from serendip.explore.simulator import make_policy

    n_u, n_i = 20, 30
    obscure = np.arange(n_i) % 2 == 0
    q = np.tile(np.where(obscure, 0.6, 0.02), (n_u, 1))
    w = planted(q, popularity=np.where(obscure, 1.0, 25.0))
    rng = np.random.default_rng(7)
    n = 400
    users, uniforms = rng.integers(n_u, size=n), rng.random((n, 5))
    rand = run_policy(w, RandomSlate(1), users, uniforms).clicks[n // 2:].sum()
    for name in ("vw-squarecb", "mab-linucb"):
        got = run_policy(w, make_policy(name, 0), users, uniforms).clicks[n // 2:].sum()
        assert got > 1.3 * rand, name


@pytest.mark.slow
def test_movielens_world_is_calibrated_and_hides_new_items():
    import warnings

    from serendip.data import load_movielens_100k

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = load_movielens_100k()
    vectors = np.random.default_rng(0).normal(size=(data.n_items, 16))
    cfg = WorldConfig()
    w = build_world(data, vectors, cfg, seed=3, visits=1000)
    plain = ~w.novelty_lover  # type: ignore[attr-defined]
    assert 0.2 < plain.mean() < 0.8
    top = -np.sort(-w.q[plain], axis=1)[:, : cfg.calibration_items]
    # calibrated on all people's hidden scores; the non-lovers are a random share of them
    assert float(top.mean()) == pytest.approx(cfg.top_click, abs=0.02)
    assert w.new_items.size == round(cfg.new_share * data.n_items)
    assert not np.isin(np.concatenate(w.histories), w.new_items).any()
    ctx = w.context(0, 0)
    assert not ctx.new.any() and ctx.features.shape == (ctx.items.size, len(FEATURES))
    assert w.context(0, 999).new.any()  # all released by the end


def test_verdict_by_hand():
    from serendip.explore.simulator import format_table, verdict

    def row(key: str, reward: list[float], disc: list[float]) -> dict:  # type: ignore[type-arg]
        r: dict = {"policy": key.upper(), "key": key, "seeds": 3}  # type: ignore[type-arg]
        for name, vals in (("reward", reward), ("regret", [0.0] * 3), ("discovery", disc),
                           ("new_discovery", [0.0] * 3)):
            r[name], r[name + "_ci"] = t_interval(vals)
            r[name + "_seeds"] = vals
        return r

    rows = [row("greedy", [10, 12, 14], [1.0, 1.2, 1.4]),
            row("hier", [20, 22, 24], [2.5, 2.5, 3.1]),
            row("lib", [21, 22, 23], [1.0, 1.0, 1.0]),
            row("lib2", [30, 32, 34], [3.0, 3.0, 3.0])]
    text = "\n".join(verdict(rows, ["hier"], ["lib", "lib2"]))
    # 22 - 4.97 = 17.03 > 12 + 4.97: apart; 2.7 >= 2 x 1.2
    assert "intervals apart: MET" in text and "2x greedy's: MET (2.700 vs 1.200, 2.25x)" in text
    assert "against LIB: serendip discovers more at equal or better clicks" in text
    assert "against LIB2: serendip does NOT discover more" in text  # 10 fewer clicks, less found
    assert "clicks minus greedy's +10 ± 0" in text
    table = format_table(rows)
    assert "| HIER | 22 ± 5 |" in table and "| 1.83 | 2.25 |" in table
    assert "exploration itself" not in text  # no ablation in the run: no line about it

    # greedy found nothing: twice nothing is nothing, so it takes some discovery to meet it
    nothing = [row("greedy", [10, 12, 14], [0.0, 0.0, 0.0]),
               row("hier", [20, 22, 24], [0.0, 0.0, 0.0])]
    text = "\n".join(verdict(nothing, ["hier"], []))
    assert "2x greedy's: NOT MET (0.000 vs 0.000, greedy found none)" in text
    nothing[1] = row("hier", [20, 22, 24], [0.0, 0.3, 0.0])
    assert "2x greedy's: MET (0.100 vs 0.000, greedy found none)" in "\n".join(
        verdict(nothing, ["hier"], []))
    # one seed: no interval, so the clicks target cannot be judged
    single = [dict(r, reward_ci=0.0, reward_seeds=r["reward_seeds"][:1]) for r in rows[:2]]
    text = "\n".join(verdict(single, ["hier"], []))
    assert "intervals apart: cannot be judged from one seed (no interval; 22 vs 12)" in text
    assert "MET (22" not in text

    # the ablations: hier minus the same model shown greedily, per seed (-6, -4, -8): mean -6,
    # sd 2, half-width 4.303 * 2 / sqrt(3) = 4.97; discovery (+1.5, +1.5, +2.1): sd 0.346,
    # half-width 0.861; greedy-pos minus greedy (+2, +2, +2)
    rows += [row("hier-greedy", [26, 26, 32], [1.0, 1.0, 1.0]),
             row("greedy-pos", [12, 14, 16], [1.0, 1.0, 1.0])]
    text = "\n".join(verdict(rows, ["hier"], []))
    assert ("exploration itself: HIER minus the same model shown greedily (HIER-GREEDY), "
            "paired by seed: clicks -6 ± 5, discovery +1.700 ± 0.861; in this world "
            "exploration costs clicks") in text
    assert ("position-aware learning alone: GREEDY-POS minus GREEDY, paired by seed: clicks "
            "+2 ± 0") in text
    # with the budget the comparison is of both together; one seed gives no interval
    one = {"policy": "H+N", "key": "hier+new", "reward": 30.0, "reward_ci": 0.0,
           "reward_seeds": [30.0], "discovery": 1.0, "discovery_seeds": [1.0]}
    alone = {"policy": "HG", "key": "hier-greedy", "reward": 20.0, "reward_ci": 0.0,
             "reward_seeds": [20.0], "discovery": 1.0, "discovery_seeds": [1.0]}
    from serendip.explore.simulator import _ablation_lines

    line = _ablation_lines({"hier-greedy": alone}, one, {"key": "greedy"})[0]
    assert line.startswith("- exploration and the new-item budget together: H+N minus")
    assert line.endswith("in this world exploration and the new-item budget cannot be "
                         "judged from one seed (no interval)")


def test_timing_in_world_times_what_the_world_taught():
    """One entry per policy (the oracle skipped), each run from a fresh world state: the
    world ends with exactly the last policy's 40 visits shown."""
    from serendip.explore.simulator import timing_in_world

    q = np.full((6, 10), 0.05)
    q[:, 3] = 0.9
    w = planted(q, seed=1)
    got = timing_in_world(w, ["oracle", "greedy", "hier"], learn=30, reps=10)
    assert list(got) == ["greedy", "serendip HierTS (shared + person + item)"]
    for sel, upd, sel90 in got.values():
        assert 0 < sel <= sel90 and upd > 0
    assert w.shows.sum() == 40 * w.config.slots  # the last policy's 40 visits, 5 slots each


def test_simulate_command_says_what_it_ran(capsys):
    """More people than MovieLens-100K has are capped and the header says so; one seed gives
    no interval, and the verdict does not judge the clicks target on it."""
    from serendip.explore.commands import cmd_simulate

    args = simulate_args("--policies", "greedy,hier", "--seeds", "1", "--visits", "30",
                         "--users", "5000")
    args.quiet = True
    assert cmd_simulate(args) == 0
    out = capsys.readouterr().out
    assert ("1 seed x 30 visits by 943 people (MovieLens-100K has 943); mean ± 95% t interval "
            "over seeds (one seed: no interval)") in out
    assert "intervals apart: cannot be judged from one seed" in out
