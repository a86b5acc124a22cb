"""Robustness of the collaborative statistics: a fit-time defence against fake profiles
(shilling) and a differentially private item-item Gram matrix.

**Profile defence** (``ProfileDefense``).  Fake profiles injected to push an item share traits
that genuine users rarely have together.  ``detect`` scores every user on five features, each
turned into a robust z-score against the whole population (median and MAD, so a few percent
of fakes cannot shift the reference):

- ``degsim``: mean cosine similarity to the user's ``neighbors`` most similar users (DegSim,
  Chirita et al. 2005): near-duplicate profiles, as made by one script, have close twins;
- ``incoherence``: how little the user's items co-occur in other users' profiles (the mean,
  over pairs of the user's items, of their cosine co-occurrence leaving the user out): filler
  items drawn at random do not belong together;
- ``popularity``: how far the mean log-popularity of the profile is from the population's,
  either way (random filler is mostly tail, bandwagon filler mostly head);
- ``rdma``: Rating Deviation from Mean Agreement (Chirita et al. 2005), mean over the user's
  items of ``|r_ui - mean_i| / n_i``, when the data has ratings;
- ``burst``: events per unit of time on the user's busiest stretch, relative to the data,
  when the data has time.

The combined score sums each feature's positive z-score, capped at ``cap``: a fake profile is
odd on several features at once, while a genuine outlier (a fan of rare films, a heavy rater)
is mostly odd on one, and the cap keeps one heavy-tailed feature from flagging it alone.  A
user whose combined score reaches ``threshold`` is suspicious on its own, and so is every
member of a near-duplicate cluster: a user with at least ``min_group - 1`` other users at
cosine ``duplicate`` or more (one script's output; such a group co-occurs with itself, so it
looks coherent and the features alone can miss it).  Fakes also act in
groups pushing one item, so a second, group stage looks at items: an item with at least
``min_group`` users whose audience's mean score is far above the population's (z-test on the
mean: ``(mean - mu) sqrt(n) / sd >= group_z``) is a suspected target, and every user holding a
suspected target whose own score reaches ``candidate`` is flagged too.  This catches a large
group of individually mild profiles (short profiles carry little evidence each).

``apply`` returns the training data without the flagged users' interactions (the users stay
in the vocabulary, so indices are unchanged).  Dropping rather than weighting: the dense
item-item models read the binary matrix (``Dataset.matrix``) and no scorer takes per-event
weights, so removing a profile is the one form of down-weighting every model obeys.

**Differential privacy** (``private_gram``).  The item-item Gram matrix ``G = X'X`` of a binary
user x item matrix is made (epsilon, delta)-differentially private with respect to adding or
removing one user: each user keeps at most ``clip`` interactions (sampled), so one user adds
``x x'`` with ``x`` a 0/1 vector of at most ``clip`` ones, and the upper triangle of ``G``
(diagonal included) changes by a vector with at most ``clip (clip + 1) / 2`` entries equal to 1:
L2 sensitivity ``Delta = sqrt(clip (clip + 1) / 2)``.  Gaussian noise ``N(0, sigma^2)`` is added to
each upper-triangle entry and mirrored, with ``sigma`` the smallest value for which the
Gaussian mechanism is (epsilon, delta)-DP (the analytic calibration of Balle & Wang 2018):

    Phi(Delta / (2 sigma) - epsilon sigma / Delta)
        - exp(epsilon) Phi(-Delta / (2 sigma) - epsilon sigma / Delta) <= delta.

For epsilon < 1 this is below the classic ``Delta sqrt(2 ln(1.25 / delta)) / epsilon``.  Anything
computed from the noisy Gram alone (EASE's weights, ItemKNN's similarities) is covered by the
same guarantee (post-processing).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
from pydantic import Field
from scipy.special import log_ndtr, ndtr

from serendip.component import ComponentConfig
from serendip.data.dataset import Dataset
from serendip.errors import ConfigError

__all__ = [
    "ProfileDefense", "DefenseResult", "FEATURES",
    "PrivateGram", "private_gram", "clip_rows", "gram_sensitivity", "gaussian_sigma",
    "classic_gaussian_sigma", "gaussian_delta", "symmetric_noise",
]

log = logging.getLogger(__name__)

FEATURES = ("degsim", "incoherence", "popularity", "rdma", "burst")


# =========================================================================== differential privacy
def gaussian_delta(sigma: float, epsilon: float, sensitivity: float) -> float:
    """The smallest delta for which Gaussian noise of scale ``sigma`` on a query of L2
    ``sensitivity`` is (epsilon, delta)-DP (Balle & Wang 2018, Theorem 8)."""
    a = sensitivity / (2.0 * sigma)
    b = epsilon * sigma / sensitivity
    first = float(ndtr(a - b))
    second = math.exp(epsilon + float(log_ndtr(-a - b)))
    return max(first - second, 0.0)


def _check_privacy(epsilon: float, delta: float, sensitivity: float) -> None:
    if not (math.isfinite(epsilon) and epsilon > 0):
        raise ConfigError(f"dp epsilon must be a positive finite number, got {epsilon!r}")
    if not 0.0 < delta < 1.0:
        raise ConfigError(f"dp delta must be between 0 and 1 (exclusive), got {delta!r}")
    if not sensitivity > 0:
        raise ConfigError(f"sensitivity must be positive, got {sensitivity!r}")


def gaussian_sigma(epsilon: float, delta: float, sensitivity: float) -> float:
    """Smallest noise scale making the Gaussian mechanism (epsilon, delta)-DP (analytic
    calibration: bisection on ``gaussian_delta``, which falls as sigma grows)."""
    _check_privacy(epsilon, delta, sensitivity)
    lo, hi = 0.0, sensitivity
    while gaussian_delta(hi, epsilon, sensitivity) > delta:
        lo, hi = hi, hi * 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid <= 0:
            break
        if gaussian_delta(mid, epsilon, sensitivity) > delta:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * hi:
            break
    return hi


def classic_gaussian_sigma(epsilon: float, delta: float, sensitivity: float) -> float:
    """The classic calibration ``Delta sqrt(2 ln(1.25/delta)) / epsilon`` (Dwork & Roth 2014,
    Theorem A.1), valid for epsilon < 1; kept for comparison."""
    _check_privacy(epsilon, delta, sensitivity)
    return sensitivity * math.sqrt(2.0 * math.log(1.25 / delta)) / epsilon


def gram_sensitivity(clip: int) -> float:
    """L2 sensitivity of the upper triangle (diagonal included) of ``X'X`` when one user with
    at most ``clip`` binary interactions is added or removed: ``sqrt(clip (clip + 1) / 2)``."""
    if clip < 1:
        raise ConfigError(f"dp clip must be at least 1, got {clip!r}")
    return math.sqrt(clip * (clip + 1) / 2.0)


def clip_rows(matrix: sp.csr_matrix, clip: int, rng: np.random.Generator) -> sp.csr_matrix:
    """Binary copy of ``matrix`` with at most ``clip`` nonzeros per row, the kept ones sampled
    uniformly without replacement (rows with fewer are kept whole)."""
    if clip < 1:
        raise ConfigError(f"dp clip must be at least 1, got {clip!r}")
    m = sp.csr_matrix(matrix, copy=True)
    m.sum_duplicates()
    m.eliminate_zeros()
    counts = np.diff(m.indptr)
    keep = np.ones(m.nnz, dtype=bool)
    for r in np.flatnonzero(counts > clip):
        start, n = int(m.indptr[r]), int(counts[r])
        drop = rng.choice(n, size=n - clip, replace=False)
        keep[start + drop] = False
    rows = np.repeat(np.arange(m.shape[0]), counts)[keep]
    out = sp.csr_matrix(
        (np.ones(int(keep.sum()), dtype=np.float64), (rows, m.indices[keep])), shape=m.shape
    )
    return out


def symmetric_noise(n: int, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """An ``n x n`` symmetric matrix whose upper triangle (diagonal included) is i.i.d.
    ``N(0, sigma^2)`` and whose lower triangle mirrors it."""
    z = rng.normal(0.0, sigma, size=(n, n))
    upper = np.triu(z)
    return upper + np.triu(z, 1).T


@dataclass(frozen=True)
class PrivateGram:
    """A noisy Gram matrix and how it was made."""

    gram: np.ndarray
    sigma: float
    sensitivity: float
    clipped_rows: int  # users who had more than ``clip`` interactions


def private_gram(matrix: sp.csr_matrix, epsilon: float, delta: float, clip: int,
                 seed: int = 0) -> PrivateGram:
    """``X'X`` of the per-user clipped binary ``matrix`` plus symmetric Gaussian noise that makes
    it (epsilon, delta)-DP for adding or removing one user (see the module doc)."""
    sensitivity = gram_sensitivity(clip)
    sigma = gaussian_sigma(epsilon, delta, sensitivity)
    rng = np.random.default_rng(seed)
    x = clip_rows(matrix, clip, rng)
    counts = np.diff(sp.csr_matrix(matrix).indptr)
    g = (x.T @ x).toarray().astype(np.float64)
    g += symmetric_noise(g.shape[0], sigma, rng)
    log.info("private Gram: epsilon=%g, delta=%g, clip=%d, sensitivity %.2f, sigma %.2f",
             epsilon, delta, clip, sensitivity, sigma)
    return PrivateGram(g, sigma, sensitivity, int((counts > clip).sum()))


# =========================================================================== profile defence
@dataclass(frozen=True)
class DefenseResult:
    """Per-user output of ``ProfileDefense.detect`` (arrays of length ``n_users``)."""

    #: combined suspicion score (sum of the positive robust z-scores of the features)
    scores: np.ndarray
    #: flagged users (score above ``threshold``, in a near-duplicate cluster, or above
    #: ``candidate`` and holding a suspected target)
    suspicious: np.ndarray
    #: training weight of each user: 0 for flagged users, 1 otherwise
    weights: np.ndarray
    #: robust z-score of each feature (name -> array), for inspection
    features: dict[str, np.ndarray]
    #: items whose audience's mean score is far above the population's (suspected targets)
    target_items: np.ndarray

    @property
    def n_flagged(self) -> int:
        return int(self.suspicious.sum())


def _robust_z(v: np.ndarray, valid: np.ndarray, groups: np.ndarray | None = None
              ) -> np.ndarray:
    """(v - median) / (1.4826 MAD) over ``valid`` users, within each group of ``groups``
    (profile-size bins) when given; 0 elsewhere and for a flat feature."""
    out = np.zeros_like(v, dtype=np.float64)
    if groups is None:
        groups = np.zeros(v.size, dtype=np.int64)
    for g in np.unique(groups[valid]):
        sel = valid & (groups == g)
        if sel.sum() < 3:
            continue
        x = v[sel]
        med = float(np.median(x))
        mad = 1.4826 * float(np.median(np.abs(x - med)))
        if not mad > 0:
            mad = float(np.std(x))
            if not mad > 0:
                continue
        out[sel] = (x - med) / mad
    return out


def _size_bins(deg: np.ndarray, valid: np.ndarray, n_bins: int) -> np.ndarray:
    """Quantile bins of profile size among ``valid`` users (0 .. n_bins - 1)."""
    if n_bins <= 1 or valid.sum() < 3 * n_bins:
        return np.zeros(deg.size, dtype=np.int64)
    edges = np.unique(np.quantile(deg[valid], np.linspace(0, 1, n_bins + 1)[1:-1]))
    return np.searchsorted(edges, deg, side="right").astype(np.int64)


class ProfileDefense(ComponentConfig):
    """Detect and remove suspicious (fake-looking) profiles before training (module doc)."""

    neighbors: int = Field(10, ge=1, le=1000, description="neighbours for DegSim")
    min_items: int = Field(5, ge=2, le=10_000,
                           description="users with fewer items are never flagged")
    threshold: float = Field(
        8.0, gt=0, le=1000, description="combined score that flags a user on its own")
    candidate: float = Field(
        3.0, gt=0, le=1000, description="combined score that makes a user a group candidate")
    cap: float = Field(
        4.0, gt=0, le=1000,
        description="most one feature adds to the combined score (fakes are odd on several "
                    "features at once; a genuine outlier is mostly odd on one)",
    )
    min_group: int = Field(
        5, ge=2, le=100_000,
        description="users an item needs to be a suspected target; also the size of a "
                    "near-duplicate cluster that is flagged whole")
    duplicate: float = Field(
        0.9, gt=0, le=1, description="cosine above which two profiles are near-duplicates")
    group_z: float = Field(
        12.0, gt=0, le=1e6,
        description="z-score of an item's audience mean score that makes it a suspected target")
    feature_weights: dict[str, float] = Field(
        default_factory=lambda: {"degsim": 1.0, "incoherence": 1.0, "popularity": 1.0,
                                 "rdma": 1.0, "burst": 1.0},
        description="weight of each feature's positive z-score in the combined score",
    )
    size_bins: int = Field(
        1, ge=1, le=100,
        description="compare features among users of similar profile size (this many "
                    "quantile bins; 1 = the whole population)")
    block: int = Field(1024, ge=16, le=1_000_000, description="users per block of X X'")

    def model_post_init(self, __context: object) -> None:
        bad = sorted(set(self.feature_weights) - set(FEATURES))
        if bad:
            raise ConfigError(
                f"defense.feature_weights has unknown feature(s) {bad}; valid: {list(FEATURES)}")
        neg = {k: v for k, v in self.feature_weights.items() if not (math.isfinite(v) and v >= 0)}
        if neg:
            raise ConfigError(f"defense.feature_weights must be non-negative numbers, got {neg}")

    # ------------------------------------------------------------------ features
    def _similarity_features(self, x: sp.csr_matrix
                             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(DegSim, profile coherence, number of near-duplicates) per user, from blocks of
        ``X X'`` (exact, no dense users x users matrix: ``block`` rows at a time)."""
        n_users = x.shape[0]
        deg = np.asarray(x.sum(axis=1)).ravel()
        pop = np.asarray(x.sum(axis=0)).ravel()
        inv_sqrt_pop = np.where(pop > 0, 1.0 / np.sqrt(np.maximum(pop, 1.0)), 0.0)
        xt = x.T.tocsr()
        xs = (x @ sp.diags(inv_sqrt_pop)).tocsr()
        # the diagonal terms (i = j) of x S x' without the user's own contribution
        diag_term = np.asarray(x @ np.where(pop > 0, (pop - 1) / np.maximum(pop, 1.0), 0.0)
                               ).ravel()
        norms = np.sqrt(np.maximum(deg, 1.0))
        k = min(self.neighbors, n_users - 1)
        degsim = np.zeros(n_users)
        coherence = np.zeros(n_users)
        twins = np.zeros(n_users, dtype=np.int64)
        for start in range(0, n_users, self.block):
            stop = min(start + self.block, n_users)
            rows = np.arange(start, stop)
            if k >= 1:
                co = np.asarray((x[start:stop] @ xt).todense(), dtype=np.float64)
                cos = co / norms[rows, None] / norms[None, :]
                cos[np.arange(stop - start), rows] = -np.inf  # not one's own neighbour
                top = -np.partition(-cos, k - 1, axis=1)[:, :k]
                degsim[start:stop] = top.mean(axis=1)
                twins[start:stop] = (cos >= self.duplicate).sum(axis=1)
            # coherence: sum over other users v of (sum_{i in u and v} 1/sqrt(n_i))^2
            m = np.asarray((xs[start:stop] @ xt).todense(), dtype=np.float64)
            m[np.arange(stop - start), rows] = 0.0  # leave the user out
            total = (m * m).sum(axis=1) - diag_term[rows]
            pairs = deg[rows] * (deg[rows] - 1)
            coherence[start:stop] = np.where(pairs > 0, total / np.maximum(pairs, 1.0), 0.0)
        return degsim, coherence, twins

    @staticmethod
    def _popularity(x: sp.csr_matrix) -> np.ndarray:
        pop = np.asarray(x.sum(axis=0)).ravel()
        logpop = np.log1p(pop)
        deg = np.asarray(x.sum(axis=1)).ravel()
        return np.asarray(x @ logpop).ravel() / np.maximum(deg, 1.0)

    @staticmethod
    def _rdma(data: Dataset) -> np.ndarray | None:
        inter = data.interactions
        if "rating" not in inter.columns or len(inter) == 0:
            return None
        r = inter["rating"].to_numpy(dtype=np.float64)
        if np.unique(r).size < 2:
            return None
        items = inter["item"].to_numpy()
        users = inter["user"].to_numpy()
        n_i = np.bincount(items, minlength=data.n_items).astype(np.float64)
        mean_i = np.bincount(items, weights=r, minlength=data.n_items) / np.maximum(n_i, 1.0)
        dev = np.abs(r - mean_i[items]) / np.maximum(n_i[items], 1.0)
        tot = np.bincount(users, weights=dev, minlength=data.n_users)
        cnt = np.bincount(users, minlength=data.n_users)
        return tot / np.maximum(cnt, 1)

    @staticmethod
    def _burst(data: Dataset) -> np.ndarray | None:
        """log of the densest rate: the user's events per second over their shortest stretch
        of ``m = min(n, 10)`` consecutive events, with a floor of one median gap."""
        if not data.has_time or len(data.interactions) == 0:
            return None
        inter = data.interactions.sort_values(["user", "timestamp"], kind="stable")
        ts = inter["timestamp"].to_numpy(dtype=np.float64)
        users = inter["user"].to_numpy()
        gaps = np.diff(ts)[users[1:] == users[:-1]]
        floor = float(np.median(gaps[gaps > 0])) if (gaps > 0).any() else 1.0
        out = np.zeros(data.n_users)
        ptr = np.searchsorted(users, np.arange(data.n_users + 1))
        for u in range(data.n_users):
            t = ts[ptr[u]:ptr[u + 1]]
            n = t.size
            if n < 2:
                continue
            m = min(n, 10)
            span = float((t[m - 1:] - t[: n - m + 1]).min())
            out[u] = math.log(m / (span + floor))
        return out

    # ------------------------------------------------------------------ API
    def detect(self, data: Dataset) -> DefenseResult:
        """Score every user and flag the suspicious ones (see the module doc)."""
        x = data.matrix.astype(np.float64).tocsr()
        deg = np.asarray(x.sum(axis=1)).ravel()
        valid = deg >= self.min_items
        degsim, coherence, twins = self._similarity_features(x)
        raw: dict[str, np.ndarray | None] = {
            "degsim": degsim,
            "incoherence": -coherence,
            "popularity": self._popularity(x),
            "rdma": self._rdma(data),
            "burst": self._burst(data),
        }
        bins = _size_bins(deg, valid, self.size_bins)
        z: dict[str, np.ndarray] = {}
        for name, v in raw.items():
            if v is None:
                continue
            zz = _robust_z(v, valid, bins)
            z[name] = np.abs(zz) if name == "popularity" else zz
        scores = np.zeros(data.n_users)
        for name, zz in z.items():
            scores += self.feature_weights.get(name, 0.0) * np.clip(zz, 0.0, self.cap)
        scores[~valid] = 0.0
        # a cluster of near-identical profiles (min_group of them) is one script's output
        alone = (scores >= self.threshold) | (valid & (twins >= self.min_group - 1))
        cand = valid & (scores >= self.candidate)
        targets = np.zeros(0, dtype=np.int64)
        group = np.zeros(data.n_users, dtype=bool)
        n_valid = int(valid.sum())
        if cand.sum() >= 1 and n_valid > 0:
            # an item whose audience's mean score is far above the population's (a z-test on
            # the mean of its audience) is a suspected push target
            xv = x[valid]
            pop = np.asarray(xv.sum(axis=0)).ravel()
            mu = float(scores[valid].mean())
            sd = float(scores[valid].std())
            total = np.asarray(xv.T @ scores[valid]).ravel()
            mean_i = np.divide(total, pop, out=np.full_like(total, mu), where=pop > 0)
            tz = (mean_i - mu) * np.sqrt(pop) / max(sd, 1e-12)
            targets = np.flatnonzero((pop >= self.min_group) & (tz >= self.group_z))
            if targets.size:
                holds = np.asarray(x[:, targets].sum(axis=1)).ravel() > 0
                group = cand & holds
        suspicious = alone | group
        weights = np.where(suspicious, 0.0, 1.0)
        log.info("profile defence: %d of %d users flagged (%d alone, %d in groups over %d "
                 "suspected target item(s))", int(suspicious.sum()), data.n_users,
                 int(alone.sum()), int((group & ~alone).sum()), targets.size)
        return DefenseResult(scores, suspicious, weights, z, targets)

    def apply(self, data: Dataset, result: DefenseResult | None = None) -> Dataset:
        """The training data without the flagged users' interactions (same vocabularies)."""
        result = result if result is not None else self.detect(data)
        if not result.suspicious.any():
            return data
        users = data.interactions["user"].to_numpy()
        keep = ~result.suspicious[users]
        return data.with_interactions(pd.DataFrame(data.interactions[keep]))

