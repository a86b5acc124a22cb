"""Implicit-feedback matrix factorisation (Hu, Koren & Volinsky 2008) via the ``implicit``
package; new or anonymous users are folded in with the same closed-form ALS user step."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Sequence

import numpy as np
from pydantic import Field

from serendip.component import ComponentConfig
from serendip.data.dataset import Dataset
from serendip.models._util import rows_times
from serendip.models.base import BatchScorer
from serendip.types import Query

__all__ = ["ALS", "ALSConfig", "HalfStep", "cpu_solver"]

#: One half of an ALS iteration: ``half_step(C, X, Y)`` sets every row of ``X`` (in place)
#: from the fixed factors ``Y`` and the confidence rows ``C`` (CSR, one row per row of ``X``).
HalfStep = Callable[[object, np.ndarray, np.ndarray], None]

log = logging.getLogger(__name__)


class ALSConfig(ComponentConfig):
    factors: int = Field(64, ge=1, le=4096)
    regularization: float = Field(0.05, ge=0, le=1e4)
    alpha: float = Field(2.0, gt=0, le=1e4, description="confidence = 1 + alpha * interaction")
    iterations: int = Field(15, ge=1, le=500)
    seed: int = Field(42, ge=0)
    use_gpu: bool = Field(True, description="train on CUDA when present and implicit was built with it")


class ALS(BatchScorer):
    """Weighted ALS factors; score = user factors . item factors."""

    name = "als"
    config_class = ALSConfig
    config: ALSConfig

    def train(self, data: Dataset) -> None:
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # implicit's own advice
        import implicit
        from threadpoolctl import threadpool_limits

        c = self.config
        use_gpu = c.use_gpu and implicit.gpu.HAS_CUDA
        with threadpool_limits(1, "blas"), warnings.catch_warnings():
            # implicit warns about BLAS threads even inside the limit it asks for
            warnings.filterwarnings("ignore", message="OpenBLAS is configured")
            model = implicit.als.AlternatingLeastSquares(
                factors=c.factors, regularization=c.regularization, alpha=c.alpha,
                iterations=c.iterations, random_state=c.seed, use_gpu=use_gpu,
            )
            model.fit(data.matrix.tocsr(), show_progress=False)
        if use_gpu:
            model = model.to_cpu()
        self._set_state(
            user_factors=np.asarray(model.user_factors, dtype=np.float32),
            item_factors=np.asarray(model.item_factors, dtype=np.float32),
        )

    def train_in_half_steps(self, data: Dataset, half_step: HalfStep | None = None) -> None:
        """``train`` on the CPU with each half-step of every iteration done by ``half_step``
        (default: implicit's solver here, over all rows at once).

        The steps are implicit's own ``fit`` on the CPU, taken apart so that a half-step can
        be sharded by rows (``serendip.distributed.RayTrainer``): the same confidence
        matrix and its transpose, the same seeded start, users then items each iteration.
        Each row's solve reads only its own row of ``C``, its own start in ``X`` and all of
        ``Y``, so a half-step split over row ranges, each solved by ``cpu_solver`` with BLAS
        on one thread, gives the factors ``train`` gives, bit for bit.
        """
        from implicit.utils import check_csr, check_random_state
        from threadpoolctl import threadpool_limits

        c = self.config
        if half_step is None:
            with warnings.catch_warnings():  # as in ``train``: implicit's BLAS advice
                warnings.filterwarnings("ignore", message="OpenBLAS is configured")
                solver = cpu_solver(c)

            def half_step(rows: object, x: np.ndarray, y: np.ndarray) -> None:
                with threadpool_limits(1, "blas"):
                    solver(rows, x, y, c.regularization, num_threads=0)

        cui = check_csr(data.matrix.tocsr())
        if cui.dtype != np.float32:
            cui = cui.astype(np.float32)
        if c.alpha != 1.0:
            cui = c.alpha * cui
        ciu = cui.T.tocsr()
        rs = check_random_state(c.seed)
        x = rs.random((cui.shape[0], c.factors), dtype=np.float32) * 0.01
        y = rs.random((cui.shape[1], c.factors), dtype=np.float32) * 0.01
        for _ in range(c.iterations):
            half_step(cui, x, y)
            half_step(ciu, y, x)
        self._set_state(user_factors=np.asarray(x, dtype=np.float32),
                        item_factors=np.asarray(y, dtype=np.float32))

    def _fold_in(self, history: np.ndarray) -> np.ndarray:
        """Closed-form ALS user step for an unseen user (same objective as training)."""
        y = self._require_trained()["item_factors"].astype(np.float64)
        c = self.config
        a = y.T @ y + c.regularization * np.eye(y.shape[1])
        if len(history) == 0:
            return np.zeros(y.shape[1])
        yh = y[np.unique(history)]
        a += c.alpha * yh.T @ yh
        b = (1.0 + c.alpha) * yh.sum(axis=0)
        return np.linalg.solve(a, b)

    def factor_space(self) -> tuple[str | None, np.ndarray]:
        return None, self._require_trained()["item_factors"]

    def query_factors(self, queries: Sequence[Query]) -> tuple[np.ndarray, np.ndarray]:
        uf = self._require_trained()["user_factors"]
        vecs = np.stack(
            [uf[q.user] if q.user is not None and q.user < len(uf) else self._fold_in(q.history)
             for q in queries]
        ).astype(np.float64)
        return vecs, np.zeros(len(queries))

    def score_many(self, queries: Sequence[Query]) -> np.ndarray:
        vecs, _ = self.query_factors(queries)
        itf = self._require_trained()["item_factors"]
        return np.asarray(rows_times(vecs.astype(np.float32), itf.T), dtype=np.float64)


def cpu_solver(config: ALSConfig) -> Callable[..., None]:
    """implicit's CPU half-step for ``config`` (the one ``ALS.train`` runs there):
    ``solver(C, X, Y, regularization, num_threads=...)`` sets the rows of ``X`` in place."""
    from implicit.cpu.als import AlternatingLeastSquares

    model = AlternatingLeastSquares(
        factors=config.factors, regularization=config.regularization, alpha=config.alpha,
        iterations=config.iterations, random_state=config.seed)
    return model.solver  # type: ignore[no-any-return]
