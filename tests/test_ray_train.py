"""Training ALS on Ray (``RayTrainer``, ``fit --ray``): each half-step's rows are solved in
shards, and the factors equal the single-process fit's bit for bit."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest
from threadpoolctl import threadpool_limits

from serendip.data import Dataset
from serendip.errors import ConfigError
from serendip.models import ALS
from serendip.models.als import cpu_solver
from serendip.models.popularity import Popularity
from serendip.pipeline import FitConfig, Recommender
from tests.conftest import local_ray_cluster

ray = pytest.importorskip("ray", reason="Ray is optional: pip install 'ray[data,client]'")

from serendip.distributed import RayTrainer  # noqa: E402


@pytest.fixture(scope="module")
def data() -> Dataset:
    """300 people, 200 items, 3 to 30 ratings each: rows of unequal length in both halves."""
    rng = np.random.default_rng(4)
    rows = [(f"u{u}", f"i{i}", float(rng.integers(1, 6)), k)
            for u in range(300)
            for k, i in enumerate(rng.choice(200, size=int(rng.integers(3, 30)), replace=False))]
    return Dataset.from_frames(pd.DataFrame(rows, columns=["user_id", "item_id", "rating",
                                                           "timestamp"]))


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    with local_ray_cluster(num_cpus=2):
        yield


def _als() -> ALS:
    return ALS(factors=8, iterations=4, regularization=0.1, use_gpu=False)


def _same_factors(a: ALS, b: ALS) -> None:
    for key in ("user_factors", "item_factors"):
        x, y = a._require_trained()[key], b._require_trained()[key]
        assert x.shape == y.shape and x.dtype == y.dtype == np.float32
        assert np.array_equal(x, y), key  # bit for bit


def test_half_steps_reproduce_implicits_fit(data: Dataset) -> None:
    """The iterations taken apart (default half-step) give ``train``'s factors; so do
    half-steps cut into three uneven row ranges solved one at a time on one thread."""
    one = _als()
    one.train(data)
    apart = _als()
    apart.train_in_half_steps(data)
    _same_factors(one, apart)

    solver = cpu_solver(one.config)
    calls = []

    def in_three(rows: object, x: np.ndarray, y: np.ndarray) -> None:
        cuts = [0, 7, x.shape[0] // 2, x.shape[0]]
        for a, b in zip(cuts[:-1], cuts[1:], strict=True):
            part = np.array(x[a:b], copy=True)
            with threadpool_limits(1, "blas"):
                solver(rows[a:b], part, np.array(y), one.config.regularization,  # type: ignore[index]
                       num_threads=1)
            x[a:b] = part
        calls.append(x.shape[0])

    sharded = _als()
    sharded.train_in_half_steps(data, in_three)
    _same_factors(one, sharded)
    assert calls == [data.n_users, data.n_items] * 4  # users then items, every iteration


def test_ray_trainer_gives_the_single_process_factors(local_ray: None, data: Dataset) -> None:
    one = _als()
    one.train(data)
    trainer = RayTrainer()
    on_ray = _als()
    trainer(on_ray, data)
    _same_factors(one, on_ray)
    assert trainer.sent_shards == 2 and trainer.sent_steps == 2 * 4  # one shard per CPU
    many = RayTrainer(shards=5)
    again = _als()
    many(again, data)
    _same_factors(one, again)
    assert many.sent_shards == 5


def test_ray_trainer_trains_other_models_here(local_ray: None, data: Dataset) -> None:
    trainer = RayTrainer()
    pop = Popularity()
    trainer(pop, data)
    assert trainer.sent_steps == 0
    want = Popularity()
    want.train(data)
    for key, value in want._require_trained().items():
        assert np.array_equal(pop._require_trained()[key], value)


def test_fit_with_the_ray_trainer_equals_a_plain_fit(local_ray: None, data: Dataset) -> None:
    vectors = np.random.default_rng(0).standard_normal((data.n_items, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    d = data.with_item_vectors(vectors)
    config = FitConfig(models={"popularity": {}, "als": {"factors": 8, "iterations": 3,
                                                          "use_gpu": False}})
    plain = Recommender.fit(d, config, progress=False)
    sharded = Recommender.fit(d, config, progress=False, trainer=RayTrainer())
    _same_factors(plain.scorers["als"], sharded.scorers["als"])  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_shards_are_checked(bad: object) -> None:
    with pytest.raises(ConfigError, match="shards must be a positive integer"):
        RayTrainer(shards=bad)  # type: ignore[arg-type]
