"""The two-tower model's surprise term: known answers on a planted pattern, the unexpectedness
it weights by (hand-computed), the plain model kept exactly at surprise = 0, config errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from serendip.data import Dataset
from serendip.errors import ConfigError
from serendip.models.two_tower import TwoTower, unexpectedness
from serendip.types import Query
from tests.conftest import make_blocks

#: tiny towers: the whole file trains in a few seconds
SMALL = {"dim": 8, "hidden": 16, "id_dim": 4, "batch_size": 64, "epochs": 15}


def _dataset(rows: list[tuple[str, str, float]], vectors: np.ndarray, ids: list[str],
             timed: bool = True) -> Dataset:
    cols = ["user_id", "item_id", "timestamp"]
    inter = pd.DataFrame(rows, columns=cols)
    if not timed:
        inter = inter.drop(columns="timestamp")
    data = Dataset.from_frames(inter, pd.DataFrame({"item_id": ids, "title": ids}))
    order = [ids.index(str(i)) for i in data.item_ids]  # vectors in the dataset's item order
    return data.with_item_vectors(vectors[order].astype(np.float32))


def planted(seed: int = 0) -> tuple[Dataset, dict[int, int]]:
    """Text cluster A (items a00..a11) and a far cluster F (f00..f11).

    Group-1 users choose six A items, then every other one f00 or f01 (the planted surprise:
    far in text, yet taken with A often enough to be learnt, but less often than an A item).  Group-2 users choose F items only, so F is familiar
    territory for them and its items are well trained.  The first ten group-1 users' F item
    is held out: returned as {user index: held-out item index}.
    """
    rng = np.random.default_rng(seed)
    ids = [f"a{i:02d}" for i in range(12)] + [f"f{i:02d}" for i in range(12)]
    vec = np.zeros((24, 8))
    vec[:12, 0] = 1.0
    vec[12:, 1] = 1.0
    vec += rng.normal(scale=0.05, size=vec.shape)
    rows, held = [], {}
    t = 0.0
    for u in range(40):
        for i in rng.choice(12, size=6, replace=False):
            rows.append((f"u{u:02d}", ids[i], t))
            t += 1
        far = ids[12 + int(rng.integers(0, 2))]
        if u < 10:
            held[f"u{u:02d}"] = far
        elif u % 2 == 0:
            rows.append((f"u{u:02d}", far, t))
        t += 1
    for u in range(40, 60):
        for i in rng.choice(12, size=6, replace=False):
            rows.append((f"u{u:02d}", ids[12 + i], t))
            t += 1
    data = _dataset(rows, vec, ids)
    users, items = list(data.user_ids), list(data.item_ids)
    return data, {users.index(u): items.index(i) for u, i in held.items()}


def _far_ranks(model: TwoTower, data: Dataset, held: dict[int, int]) -> np.ndarray:
    """Rank (1 = first) of each held-out far item among the items the user has not used."""
    ranks = []
    for u, item in held.items():
        h = data.history(u)
        s = model.score(Query(u, h)).astype(np.float64)
        s[h] = -np.inf
        ranks.append(int((s > s[item]).sum()) + 1)
    return np.array(ranks)


@pytest.fixture(scope="module")
def planted_data() -> tuple[Dataset, dict[int, int]]:
    return planted()


def test_surprise_ranks_the_planted_far_positives_higher(planted_data):
    data, held = planted_data
    ranks = {}
    for s in (0.0, 8.0):
        m = TwoTower({**SMALL, "surprise": s})
        m.train(data)
        ranks[s] = _far_ranks(m, data, held)
    # the held-out far item competes with 6 unused A items and 12 F items; plain training
    # puts the A items first (they are likelier), the surprise term the two far items
    assert ranks[8.0].mean() <= ranks[0.0].mean() - 3.0, ranks
    assert (ranks[8.0] <= 2).mean() >= (ranks[0.0] <= 2).mean() + 0.5, ranks


def test_surprise_zero_is_the_plain_model_whatever_the_other_knob(planted_data):
    """At surprise = 0 no weight is computed or applied: the popularity share changes nothing
    and the same seed gives the same network."""
    data, _ = planted_data
    small = {**SMALL, "epochs": 3}
    a = TwoTower(small)
    b = TwoTower({**small, "surprise": 0.0, "surprise_popularity": 0.7})
    a.train(data)
    b.train(data)
    for key, value in a._require_trained().items():
        np.testing.assert_array_equal(b._require_trained()[key], value, err_msg=key)
    c = TwoTower({**small, "surprise": 1.0})
    c.train(data)
    assert not np.array_equal(c._require_trained()["item_factors"],
                              a._require_trained()["item_factors"])


def test_unexpectedness_known_answer_ordered():
    """Items 0 and 1 point nearly the same way, 2 is orthogonal to 0, 3 lies between 0 and 2."""
    r = np.sqrt(0.5)
    vec = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [r, r]])
    data = _dataset([("u", "0", 0.0), ("u", "1", 1.0), ("u", "2", 2.0), ("u", "3", 3.0),
                     ("v", "2", 4.0)], vec, ["0", "1", "2", "3"])
    hist = [data.history(u) for u in range(data.n_users)]
    # 1 - max cosine to the earlier items: none (0), 1 - .8, 1 - max(0, .6), 1 - cos(3, 1);
    # user v's only item has no earlier one (0)
    np.testing.assert_allclose(unexpectedness(data, hist, max_history=50),
                               [0.0, 0.2, 0.4, 1.0 - 1.4 * r, 0.0], atol=1e-6)
    # a window of one earlier item: item 3 is compared with item 2 only
    window = [0.0, 0.2, 0.4, 1.0 - r, 0.0]
    np.testing.assert_allclose(unexpectedness(data, hist, max_history=1), window, atol=1e-6)
    # popularity: item 2 has both users (self-information 0), the others one (log 2 / log 2)
    mixed = unexpectedness(data, hist, max_history=1, popularity_share=0.25)
    np.testing.assert_allclose(mixed, 0.75 * np.array(window)
                               + 0.25 * np.array([1.0, 1.0, 0.0, 1.0, 0.0]), atol=1e-6)


def test_unexpectedness_without_order_uses_neighbouring_items():
    vec = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    data = _dataset([("u", "0", 0.0), ("u", "1", 0.0), ("u", "2", 0.0)], vec, ["0", "1", "2"],
                    timed=False)
    assert not data.time_quality.ordered
    h = data.history(0)
    cos = vec @ vec.T
    # max_history 2: one neighbour on each side in the (arbitrary) list order
    expected = [1.0 - max(cos[h[p], h[q]] for q in (p - 1, p + 1) if 0 <= q < 3)
                for p in range(3)]
    np.testing.assert_allclose(unexpectedness(data, [h], max_history=2), expected, atol=1e-6)


@pytest.mark.parametrize("bad", [{"surprise": -0.5}, {"surprise_popularity": 1.5}])
def test_config_errors_name_the_value(bad):
    key, value = next(iter(bad.items()))
    with pytest.raises(ConfigError, match=rf"two_tower\.{key}.*{value}"):
        TwoTower(bad)


def test_surprise_trained_model_saves_and_scores_like_any_other(tmp_path):
    data = make_blocks(n_users=20, n_items=12, seed=1)
    m = TwoTower({**SMALL, "epochs": 2, "surprise": 2.0, "surprise_popularity": 0.5})
    m.train(data)
    m.save(tmp_path / "tt")
    back = TwoTower.load(tmp_path / "tt")
    assert isinstance(back, TwoTower) and back.config.surprise == 2.0
    q = [Query(0, data.history(0)), Query(None, data.history(15))]
    np.testing.assert_allclose(back.score_many(q), m.score_many(q), rtol=1e-6)
