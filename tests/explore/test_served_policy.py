"""The simulator's "served" policy: the service's LinearTS itself, with the adaptive preset's
bandit settings, learning in a planted world; and ``LinearTS.choose`` as the request path."""

from __future__ import annotations

import numpy as np
import pytest

from serendip.errors import DataError
from serendip.explore.bandit import FEATURES as SERVED
from serendip.explore.bandit import LinearTS
from serendip.explore.policies import RandomSlate, SlateChoice
from serendip.explore.simulator import (
    FEATURES,
    POLICY_NAMES,
    SERENDIP_POLICIES,
    ServedLinearTS,
    make_policy,
    run_policy,
)
from serendip.pipeline import load_preset
from serendip.types import ItemList, Query
from tests.explore.test_bandit import with_new_items
from tests.explore.test_simulator import planted


def tail_world():  # type: ignore[no-untyped-def]
    """160 items, popularity falling with the index (novelty rises smoothly with it); the
    head is the first half.  Tail items attract with 0.5, head items with 0.02; the base scores
    (relevance) are noise.  Enough tail items that a person does not run out of unclicked ones
    (the served policy, as the service, never shows an item clicked before)."""
    n_u, n_i = 30, 160
    pop = np.linspace(60.0, 1.0, n_i)
    tail = np.arange(n_i) >= n_i // 2
    q = np.tile(np.where(tail, 0.5, 0.02), (n_u, 1))
    return planted(q, popularity=pop, head_share=0.5), tail


def test_the_served_policy_is_the_adaptive_presets_bandit():
    assert "served" in SERENDIP_POLICIES
    policy = make_policy("served", 3)
    assert isinstance(policy, ServedLinearTS)
    assert policy.name == "serendip adaptive preset (served LinearTS)"
    assert type(policy.bandit) is LinearTS
    settings = load_preset("adaptive").bandit
    assert settings is not None and settings["hierarchy"] is True
    config = policy.bandit.config.model_dump()
    for key, value in settings.items():
        assert config[key] == value, key
    assert config["seed"] == 3
    # where learning starts: the preset's prior mean (relevance 1, the rest 0)
    assert policy.bandit.weights() == pytest.approx(
        {f: settings["prior_mean"].get(f, 0.0) for f in SERVED})
    assert POLICY_NAMES["served"](len(FEATURES), 0).name == policy.name


def test_world_rows_become_the_served_features():
    w, _ = tail_world()
    w.profile[4] = w.vectors[[1, 2]].sum(axis=0)  # a history, so similarity is not neutral
    ctx = w.context(4, 0)
    x = ServedLinearTS(0).served_features(ctx.features)
    assert x.shape == (ctx.items.size, len(SERVED))
    for name in ("bias", "relevance", "novelty", "tail"):
        np.testing.assert_array_equal(x[:, SERVED.index(name)], ctx.features[:, FEATURES.index(name)])
    # unexpectedness as the service computes it: (1 - cosine(profile, item)) / 2
    centre = w.profile[4] / np.linalg.norm(w.profile[4])
    cos = w.vectors[ctx.items].astype(np.float64) @ centre
    np.testing.assert_allclose(x[:, SERVED.index("unexpectedness")], (1 - cos) / 2, atol=1e-6)
    with pytest.raises(DataError, match="world features"):
        ServedLinearTS(0).served_features(x)


def test_the_served_policy_learns_that_the_tail_pays():
    w, tail = tail_world()
    rng = np.random.default_rng(5)
    n = 500
    users, uniforms = rng.integers(w.n_users, size=n), rng.random((n, 5))
    served = ServedLinearTS(1)
    learnt = run_policy(w, served, users, uniforms, keep_propensities=True)
    rand = run_policy(w, RandomSlate(1), users, uniforms)
    last = slice(n // 2, n)
    assert learnt.clicks[last].sum() > 1.5 * rand.clicks[last].sum()
    # the shared weights: tail positive, and tail candidates scored above head ones (the item
    # offsets, fitted on the same residuals, take part of the 0.48 gap in attraction)
    assert served.bandit.weights()["tail"] > 0.0
    ctx = w.context(0, n)
    mean_score = served.served_features(ctx.features) @ served.bandit.posterior()[0]
    on_tail = tail[ctx.items]
    assert mean_score[on_tail].mean() - mean_score[~on_tail].mean() > 0.08
    # its list is now mostly tail items, whose item offsets have learnt from their showings
    shown = [w.context(u, n).items[served.select(w.context(u, n), 5).positions]
             for u in range(10)]
    assert tail[np.concatenate(shown)].mean() > 0.8
    props = np.concatenate(learnt.propensities)
    assert props.size == 5 * n and np.all((props > 0) & (props <= 1))


def test_the_worlds_new_items_get_the_presets_budget():
    """New items never attract, old ones do: the shared and item parts learn to rank new items
    low, yet the last slot keeps showing one with at least the preset's share (0.2), the other
    slots rarely."""
    n_u, n_i = 20, 130  # enough old items that nobody runs out of unclicked ones
    new = np.arange(120, 130)
    q = np.full((n_u, n_i), 0.3)
    q[:, new] = 0.0
    w = planted(q, new_items=new, release_at=np.zeros(new.size, dtype=np.int64))
    served = ServedLinearTS(0)
    share = load_preset("adaptive").bandit["new_item_share"]  # type: ignore[index]
    rng = np.random.default_rng(0)
    n = 400
    last_new, other_new = np.zeros(n), np.zeros(n)
    for t in range(n):
        u = int(rng.integers(n_u))
        ctx = w.context(u, t)
        choice = served.select(ctx, 5)
        shown_new = ctx.new[choice.positions]
        last_new[t], other_new[t] = shown_new[-1], shown_new[:-1].mean()
        served.update(ctx, choice, w.step(u, ctx.items[choice.positions], rng.random(5)))
    late = slice(n // 2, n)
    sd = np.sqrt(share * (1 - share) / (n // 2))
    assert share - 4 * sd < last_new[late].mean() < share + 0.1
    assert other_new[late].mean() < 0.06


def test_update_takes_only_the_slate_it_chose():
    w, _ = tail_world()
    served = ServedLinearTS(0)
    ctx = w.context(0, 0)
    choice = served.select(ctx, 5)
    with pytest.raises(DataError, match="chose last"):
        served.update(ctx, SlateChoice(choice.positions.copy(), choice.propensity), np.zeros(5))
    served.update(ctx, choice, np.array([1.0, 0, 0, 0, 0]))
    with pytest.raises(DataError, match="chose last"):  # learnt once, not twice
        served.update(ctx, choice, np.zeros(5))


# ---------------------------------------------------------------- LinearTS.choose
@pytest.fixture(scope="module")
def data():  # type: ignore[no-untyped-def]
    return with_new_items()


def trained(data, **cfg) -> LinearTS:  # type: ignore[no-untyped-def]
    b = LinearTS({"seed": 11, **cfg})
    b.train(data)
    return b


@pytest.mark.parametrize("cfg", [{}, {"hierarchy": True, "new_item_share": 0.5,
                                      "new_item_pool": 3}])
def test_call_and_choose_are_one_policy(data, cfg):
    """Two bandits with the same seed: ``__call__`` on a request and ``choose`` on the same
    request's features, keys and new-item mask give the same lists, propensities and rows,
    request after request, while both learn the same feedback."""
    a, b = trained(data, **cfg), trained(data, **cfg)
    st = b._state
    assert st is not None
    cands = ItemList(np.arange(24), np.linspace(1, 0, 24))
    rng = np.random.default_rng(0)
    for t in range(12):
        q = Query(t % 4, data.history(t % 4))  # a history: unexpectedness varies
        got = a(q, cands, 4)
        pos, prop, rows = b.choose(
            b.features(q, cands), 4,
            item_keys=st["item_keys"][cands.items] if "item_keys" in st else None,
            person_key=float(st["user_keys"][t % 4]) if "user_keys" in st else 0.0,
            new=st["new"][cands.items])
        assert got.items.tolist() == cands.items[pos].tolist()
        np.testing.assert_array_equal(got.fields["propensity"], prop)
        np.testing.assert_array_equal(got.fields["features"], rows)
        r = (rng.random(4) < 0.4).astype(float)
        a.update(got.fields["features"], r)
        b.update(rows, r)
    np.testing.assert_array_equal(a.statistics()[1], b.statistics()[1])


def test_plain_call_is_one_thompson_draw_by_hand(data):
    """Without hierarchy or budget a list is the top k under one draw from N(m, noise^2 A^-1)
    of the seeded generator, and its propensities come from the draws after it."""
    b = trained(data)
    cands = ItemList(np.arange(24), np.linspace(1, 0, 24))
    q = Query(2, data.history(2))
    x = b.features(q, cands)
    mean, cov = b.posterior()
    rng = np.random.default_rng(11)
    draw = rng.multivariate_normal(mean, cov, size=1, method="cholesky")[0]
    expect = np.argsort(-(x @ draw), kind="stable")[:5]
    got = b(q, cands, 5)
    assert got.items.tolist() == expect.tolist()
    np.testing.assert_allclose(got.scores, (x @ draw)[expect])
    again = trained(data)
    pos, prop, rows = again.choose(x, 5)
    assert pos.tolist() == expect.tolist()
    np.testing.assert_array_equal(prop, got.fields["propensity"])
    np.testing.assert_array_equal(rows, x[expect])


def test_choose_checks_its_inputs(data):
    plain, hier = trained(data), trained(data, hierarchy=True)
    x = np.random.default_rng(0).random((6, len(SERVED)))
    with pytest.raises(DataError, match=f"n x {len(SERVED)}"):
        plain.choose(x[:, :4], 2)
    with pytest.raises(DataError, match="item_keys"):
        hier.choose(x, 2)
    with pytest.raises(DataError, match="6 finite item_keys"):
        hier.choose(x, 2, item_keys=np.arange(5.0))
    with pytest.raises(DataError, match="person_key"):
        hier.choose(x, 2, item_keys=np.arange(6.0) + 1, person_key=float("nan"))
    with pytest.raises(DataError, match="new-item flags"):
        plain.choose(x, 2, new=np.zeros(3, dtype=bool))
    pos, prop, rows = hier.choose(x, 9, item_keys=np.arange(6.0) + 1, person_key=2.0)
    assert sorted(pos.tolist()) == list(range(6))  # k capped at the candidates
    assert rows.shape == (6, len(SERVED) + 2) and np.all(rows[:, -1] == 2.0)
    assert np.all((prop > 0) & (prop <= 1))
    fresh = LinearTS({"seed": 0})
    fresh.start()  # the prior alone: choose works, the catalogue path needs train
    assert fresh.choose(x, 2)[0].size == 2
    assert fresh.weights() == pytest.approx({f: 1.0 if f == "relevance" else 0.0 for f in SERVED})


def test_the_served_policy_never_shows_an_item_the_person_clicked():
    """As the service (a click is history, history is never listed): over many visits of a
    few people, no slate holds an item its person clicked before; other policies may."""
    w, _ = tail_world()
    served = ServedLinearTS(2)
    rng = np.random.default_rng(3)
    reshown = 0
    for t in range(300):
        u = int(rng.integers(3))  # three people, so clicks pile up
        ctx = w.context(u, t)
        choice = served.select(ctx, 5)
        items = ctx.items[choice.positions]
        reshown += int((w.clicks[u, items] > 0).sum())
        served.update(ctx, choice, w.step(u, items, rng.random(5)))
    assert reshown == 0
    assert w.clicks[:3].sum() > 50  # the people did click (the check above was not vacuous)
