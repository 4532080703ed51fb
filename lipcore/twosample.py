"""The two-sample test behind every verdict: a permutation test of a witness on held-out samples.

The potential f is fitted on the training split only, so on the held-out samples it is a fixed
function. Under the null (source and target drawn from one distribution, each sample with its
weight) the pooled held-out pairs (f value, weight) are exchangeable: the statistic

    T = sum_i a_i f(x_i) / sum a - sum_j b_j f(y_j) / sum b     (held-out samples only)

recomputed on random relabellings of the pool has the same law as T itself, and the p-value
(1 + #{T_perm >= T}) / (1 + B) is valid in finite samples, for any n, d, f and weights. The test
is one-sided: f is trained to be high on the source, so a difference makes T large. A permutation
only re-weights sums of values already computed, so thousands cost little.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

F64 = NDArray[np.float64]

#: Relabellings drawn per block (bounds the temporary index array to BLOCK x pool size).
BLOCK = 64


@dataclass(frozen=True)
class TwoSampleTest:
    """A finished two-sample test: its statistic (data units), p-value, the number of random
    permutations, its name, and the median of the statistic under the permutation null (the
    noise floor of the statistic, in the same units)."""

    statistic: float
    p_value: float
    permutations: int
    method: str
    null_median: float

    def rejects(self, alpha: float) -> bool:
        """Whether the test rejects "same distribution" at level ``alpha``."""
        return self.p_value <= alpha

    def to_dict(self) -> dict[str, Any]:
        return {
            "statistic": self.statistic,
            "p_value": self.p_value,
            "permutations": self.permutations,
            "method": self.method,
            "null_median": self.null_median,
        }


def permutation_test(
    fx: F64,
    wx: F64,
    fy: F64,
    wy: F64,
    permutations: int,
    rng: np.random.Generator,
    method: str = "heldout-potential-permutation",
) -> TwoSampleTest:
    """One-sided permutation test of T = mean_w f(x) - mean_w f(y) (see the module doc).

    ``fx``, ``fy``: the witness on each set's held-out samples; ``wx``, ``wy``: their weights
    (any positive scale: each set's weights are renormalised within whatever group a
    relabelling gives it). ``permutations`` >= 1 random relabellings drawn from ``rng``.
    """
    if permutations < 1:
        raise ValueError(f"permutations: expected at least 1, got {permutations}")
    nx, ny = len(fx), len(fy)
    if nx < 1 or ny < 1:
        raise ValueError("permutation_test: both sets need at least one held-out sample")
    # Weights of each set on the scale of a probability on that set, so that a relabelled
    # group mixes samples of both sets on a common scale.
    wx = np.asarray(wx, dtype=np.float64) / float(np.sum(wx)) * nx
    wy = np.asarray(wy, dtype=np.float64) / float(np.sum(wy)) * ny
    values = np.concatenate([np.asarray(fx, np.float64), np.asarray(fy, np.float64)])
    weights = np.concatenate([wx, wy])
    weighted = values * weights
    total_w, total_wv = float(weights.sum()), float(weighted.sum())

    def statistic(idx: NDArray[np.intp]) -> F64:
        """T for relabellings whose source group is each row of ``idx`` (the rest: target)."""
        gw, gwv = weights[idx].sum(axis=1), weighted[idx].sum(axis=1)
        rest_w = total_w - gw
        out: F64 = gwv / np.where(gw > 0, gw, 1.0) - (total_wv - gwv) / np.where(
            rest_w > 0, rest_w, 1.0
        )
        return out

    k = nx + ny
    observed = statistic(np.arange(nx)[None, :])
    null = np.empty(permutations)
    base = np.broadcast_to(np.arange(k), (BLOCK, k))
    done = 0
    while done < permutations:
        size = min(BLOCK, permutations - done)
        order = rng.permuted(base[:size], axis=1)
        null[done : done + size] = statistic(order[:, :nx])
        done += size
    t = float(observed[0])
    # Ties count against rejection (>=), with a relative tolerance for float rounding.
    tol = 1e-12 * max(1.0, abs(t))
    exceed = int(np.count_nonzero(null >= t - tol))
    return TwoSampleTest(
        statistic=t,
        p_value=(1 + exceed) / (1 + permutations),
        permutations=int(permutations),
        method=method,
        null_median=float(np.median(null)),
    )


def summary(test: TwoSampleTest | None, alpha: float, distance: Any = None) -> str:
    """One sentence for people: the verdict first, then the distance and its interval."""
    if test is None:
        return "no two-sample test was run"
    p = test.p_value
    # The smallest p-value B relabellings can give is 1 / (B + 1) < 1 / B.
    floor = 1.0 / (1 + test.permutations)
    p_text = f"p < {_fmt(1.0 / test.permutations)}" if p <= floor else f"p = {_fmt(p)}"
    head = (
        f"differ ({p_text})"
        if test.rejects(alpha)
        else f"no detectable difference ({p_text}, alpha = {alpha:g})"
    )
    if distance is None:
        return head
    lo, hi = distance.ci95
    return f"{head}: distance {_fmt(distance.value)}, 95 % CI [{_fmt(lo)}, {_fmt(hi)}]"


def _fmt(v: float) -> str:
    if not math.isfinite(v):
        return str(v)
    return f"{v:.3g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"


def exact_permutation_test(
    x: np.ndarray,
    y: np.ndarray,
    a: F64,
    b: F64,
    observed: float,
    permutations: int,
    rng: np.random.Generator,
    max_pairs: int,
) -> TwoSampleTest:
    """The permutation test of the exact empirical W1 itself: ``observed`` = W1((x, a), (y, b))
    against the exact W1 of random relabellings of the pooled samples (each relabelled group
    keeps its size; weights travel with their samples). Valid at any n; costs one exact solve
    per permutation, so only for small sets. Its ``null_median`` is the noise floor of the
    empirical W1: how far apart two samples of one distribution are at this size."""
    from .exact import exact_w1

    if permutations < 1:
        raise ValueError(f"permutations: expected at least 1, got {permutations}")
    n, m = len(x), len(y)
    pool = np.concatenate([np.asarray(x, np.float64), np.asarray(y, np.float64)])
    w = np.concatenate([np.asarray(a, np.float64) * n, np.asarray(b, np.float64) * m])
    null = np.empty(permutations)
    for i in range(permutations):
        order = rng.permutation(n + m)
        gx, gy = order[:n], order[n:]
        wx, wy = w[gx], w[gy]
        null[i] = exact_w1(pool[gx], pool[gy], wx / wx.sum(), wy / wy.sum(), max_pairs=max_pairs)
    tol = 1e-12 * max(1.0, abs(observed))
    exceed = int(np.count_nonzero(null >= observed - tol))
    return TwoSampleTest(
        statistic=float(observed),
        p_value=(1 + exceed) / (1 + permutations),
        permutations=int(permutations),
        method="exact-w1-permutation",
        null_median=float(np.median(null)),
    )
