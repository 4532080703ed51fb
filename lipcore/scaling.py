"""Per-feature scaling: put features measured in different units on one footing before the
Euclidean cost compares them, and fold the scaling into a potential so that it still takes the
data as it was given."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from .envelope import Envelope

Mode = Literal["none", "standardize", "robust"]
MODES: tuple[str, ...] = ("none", "standardize", "robust")

#: Rows per chunk when computing moments of large (possibly memory-mapped) sets.
CHUNK = 65536


def feature_scales(
    x: np.ndarray, y: np.ndarray, a: NDArray[np.float64], b: NDArray[np.float64], mode: str
) -> NDArray[np.float64]:
    """One positive factor per feature, from both sets pooled (each weighing 1/2): the
    standard deviation ("standardize"), the interquartile range ("robust"), or 1 ("none").
    A feature constant on both sets keeps factor 1. Divide the data by these factors."""
    if mode not in MODES:
        raise ValueError(f"scale: expected one of {', '.join(MODES)}, got {mode!r}")
    d = x.shape[1]
    if mode == "none":
        return np.ones(d)
    if mode == "standardize":
        mean = 0.5 * (_moment(x, a, 1) + _moment(y, b, 1))
        var = 0.5 * (_moment(x, a, 2) + _moment(y, b, 2)) - mean**2
        s = np.sqrt(np.maximum(var, 0.0))
    else:
        values = np.concatenate([np.asarray(x, np.float64), np.asarray(y, np.float64)])
        weights = np.concatenate([0.5 * a, 0.5 * b])
        s = np.array([_iqr(values[:, j], weights) for j in range(d)])
    return np.where(np.isfinite(s) & (s > 0), s, 1.0)


def _moment(s: np.ndarray, w: NDArray[np.float64], k: int) -> NDArray[np.float64]:
    acc = np.zeros(s.shape[1])
    for i in range(0, s.shape[0], CHUNK):
        acc += w[i : i + CHUNK] @ np.asarray(s[i : i + CHUNK], np.float64) ** k
    return acc


def _iqr(v: NDArray[np.float64], w: NDArray[np.float64]) -> float:
    """Weighted interquartile range: the 75 % minus the 25 % quantile of the weighted values."""
    order = np.argsort(v, kind="stable")
    cum = np.cumsum(w[order])
    cum /= cum[-1]
    q = np.searchsorted(cum, [0.25, 0.75], side="left").clip(0, len(v) - 1)
    return float(v[order][q[1]] - v[order][q[0]])


def fold_scales(potential: nn.Sequential, scales: NDArray[np.float64]) -> nn.Sequential:
    """The potential of scaled inputs x / scales as a potential of x itself (in place): the first
    linear layer's columns are divided by the factors (an envelope divides its inputs by them).
    Values are unchanged; its Lipschitz constant, and every figure it certifies, stay those of
    the scaled space."""
    first = next(m for m in potential if isinstance(m, nn.Linear | Envelope))
    with torch.no_grad():
        if isinstance(first, Envelope):
            first.scales *= torch.as_tensor(scales, dtype=first.scales.dtype)
        else:
            first.weight /= torch.as_tensor(scales, dtype=first.weight.dtype)
    return potential
