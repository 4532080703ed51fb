"""The certificate: exact spectral norms, float64 evaluation of every sample, gradient norms."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from .orthogonal import spectral_norm_exact


def lipschitz_constant(model: nn.Sequential) -> float:
    """Product of the exact float64 spectral norms of the Linear weights (activations are
    1-Lipschitz): an upper bound of the model's Lipschitz constant."""
    norms = [spectral_norm_exact(m.weight) for m in model if isinstance(m, nn.Linear)]
    return math.prod(norms)


@torch.no_grad()
def evaluate(
    model: nn.Module, x: np.ndarray, chunk: int, device: torch.device | str = "cpu"
) -> np.ndarray:
    """f on every row of x, in float64, ``chunk`` rows at a time (bounded memory for any n)."""
    n = x.shape[0]
    out = np.empty(n, dtype=np.float64)
    for i in range(0, n, chunk):
        # a copy: x may be a read-only memory map, which torch will not wrap
        xc = torch.from_numpy(np.array(x[i : i + chunk], dtype=np.float64, order="C"))
        out[i : i + chunk] = model(xc.to(device)).reshape(-1).cpu().numpy()
    return out


def weighted_difference(fx: np.ndarray, a: np.ndarray, fy: np.ndarray, b: np.ndarray) -> float:
    """sum a f(x) - sum b f(y), with f centred first (f is defined up to a constant; centring
    keeps the rounding relative to the spread of f, not to its offset)."""
    c = 0.5 * (float(np.dot(a, fx)) + float(np.dot(b, fy)))
    return float(np.dot(a, fx - c)) - float(np.dot(b, fy - c))


def grad_norm_quantiles(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    lipschitz: float,
    samples: int,
    rng: np.random.Generator,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """Quantiles (5 %, 50 %, 95 %) of ||grad (f / L)|| on a random subsample of both sets."""
    parts = []
    for s in (x, y):
        k = min(samples, s.shape[0])
        idx = np.sort(rng.choice(s.shape[0], size=k, replace=False))
        parts.append(np.asarray(s[idx], dtype=np.float64))
    pts = torch.from_numpy(np.concatenate(parts)).to(device).requires_grad_(True)
    with torch.enable_grad():
        f = model(pts).sum()
        (g,) = torch.autograd.grad(f, pts)
    norms = (g.norm(dim=1) / lipschitz).cpu().numpy()
    q = np.quantile(norms, [0.05, 0.5, 0.95])
    return {"q05": float(q[0]), "q50": float(q[1]), "q95": float(q[2])}
