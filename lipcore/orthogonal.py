"""Orthonormalisation math, pure functions on tensors (no modules, no state).

The training-time weight of a hidden layer is ``bjorck(W, iters)``: W pre-normalised by a cheap,
exact upper bound of its spectral norm, then a few iterations of Björck's (cubic Newton-Schulz)
polar iteration W <- W (3/2 I - 1/2 W^T W). The pre-normalisation uses the Gram matrix that the
first iteration needs anyway: sigma_max(W)^2 = sigma_max(W^T W) <= ||W^T W||_inf, which is tight
when W is close to orthogonal (the warm start keeps it there) and guarantees every singular value
lies in (0, 1] before iterating, where the iteration converges to 1.

None of this is what certifies the network: the certificate is computed after training from the
exact spectral norms of the exported weights. This only has to be accurate for the bound to be
tight.
"""

from __future__ import annotations

import torch


def _gram(w: torch.Tensor, tall: bool) -> torch.Tensor:
    return w.mT @ w if tall else w @ w.mT


def bjorck(w: torch.Tensor, iters: int) -> torch.Tensor:
    """Björck orthonormalisation of a 2-D weight (out, in) after pre-normalisation.

    Returns a matrix with orthonormal columns (out >= in) or rows (out < in), approximately:
    singular values converge quadratically to 1. ``iters`` >= 1 iterations; differentiable.
    """
    tall = w.shape[0] >= w.shape[1]
    g = _gram(w, tall)
    bound = g.abs().sum(dim=1).max().clamp_min(torch.finfo(w.dtype).tiny)
    w = w / bound.sqrt()
    g = g / bound
    eye = torch.eye(g.shape[0], dtype=w.dtype, device=w.device)
    for i in range(iters):
        if i > 0:
            g = _gram(w, tall)
        p = 1.5 * eye - 0.5 * g
        w = w @ p if tall else p @ w
    return w


def power_iteration(
    w: torch.Tensor, iters: int = 50, generator: torch.Generator | None = None
) -> torch.Tensor:
    """An estimate (from below) of sigma_max(w) by power iteration on W^T W. Diagnostic only."""
    v = torch.randn(w.shape[1], dtype=w.dtype, device=w.device, generator=generator)
    v = v / v.norm()
    for _ in range(iters):
        u = w @ v
        v = w.mT @ u
        v = v / v.norm().clamp_min(torch.finfo(w.dtype).tiny)
    return (w @ v).norm()


def spectral_norm_exact(w: torch.Tensor) -> float:
    """The exact (float64 SVD) spectral norm of a 2-D weight."""
    return float(torch.linalg.matrix_norm(w.detach().to(torch.float64), ord=2))


def frobenius_normalise(w: torch.Tensor) -> torch.Tensor:
    """w / ||w||_F: spectral norm <= 1, and == 1 for a single row (the last layer)."""
    return w / w.norm().clamp_min(torch.finfo(w.dtype).tiny)
