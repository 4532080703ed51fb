"""The held-out split and the confidence interval of the held-out difference."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

Z95 = 1.959963984540054  # standard normal 97.5 % quantile


@dataclass(frozen=True)
class Holdout:
    """The difference of the certified-scale potential on held-out samples, with a 95 % CI."""

    value: float
    ci95: tuple[float, float]
    n_source: int
    n_target: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "ci95": [self.ci95[0], self.ci95[1]],
            "n_source": self.n_source,
            "n_target": self.n_target,
        }


@dataclass(frozen=True)
class Split:
    train: np.ndarray  # indices
    held: np.ndarray
    w_train: np.ndarray  # renormalised weights of the training part
    w_held: np.ndarray


def split(n: int, w: np.ndarray, fraction: float, rng: np.random.Generator) -> Split | None:
    """A random split of n samples; None when it leaves a part empty or without weight."""
    k = int(round(fraction * n))
    if fraction <= 0 or k < 1 or n - k < 1:
        return None
    perm = rng.permutation(n)
    held, train = np.sort(perm[:k]), np.sort(perm[k:])
    sw_t, sw_h = float(w[train].sum()), float(w[held].sum())
    if sw_t <= 0 or sw_h <= 0:
        return None
    return Split(train, held, w[train] / sw_t, w[held] / sw_h)


def _mean_and_var_of_mean(f: np.ndarray, w: np.ndarray) -> tuple[float, float]:
    """Weighted mean of f and the variance of that mean (sum w^2 * var, i.e. var / n_eff)."""
    mu = float(np.dot(w, f))
    var = float(np.dot(w, (f - mu) ** 2))
    return mu, var * float(np.dot(w, w))


def holdout_estimate(fx: np.ndarray, wx: np.ndarray, fy: np.ndarray, wy: np.ndarray) -> Holdout:
    """Held-out difference sum wx f(x) - sum wy f(y) and its normal 95 % confidence interval."""
    mx, vx = _mean_and_var_of_mean(fx, wx)
    my, vy = _mean_and_var_of_mean(fy, wy)
    value = mx - my
    half = Z95 * math.sqrt(vx + vy)
    return Holdout(value, (value - half, value + half), int(fx.shape[0]), int(fy.shape[0]))
