"""Orthonormalisation math, pure functions on tensors (no modules, no state).

The training-time weight of a hidden layer is ``bjorck(W, iters)``: W pre-normalised with a cheap,
exact upper bound of its spectral norm, then a few iterations of Björck's (cubic Newton-Schulz)
polar iteration W <- W (3/2 I - 1/2 W^T W). The pre-normalisation uses the Gram matrix that the
first iteration needs anyway: sigma_max(W)^2 = sigma_max(W^T W) <= ||W^T W||_inf. It guarantees
every singular value lies in (0, 1.3] before iterating, where the iteration converges to 1, and
leaves a nearly orthogonal weight (the warm start keeps the raw weights there) as it is.

None of this is what certifies the network: the certificate is computed after training from the
exact spectral norms of the exported weights. This only has to be accurate for the bound to be
tight.
"""

from __future__ import annotations

import torch

# Björck's map s -> s (3 - s^2) / 2 sends (0, sqrt(3)) into (0, 1] and 1 is its attracting fixed
# point; below SAFE = 1.3^2 one step already brings every singular value to >= 0.85.
SAFE = 1.69


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
    # sigma_max^2 <= bound. Scale so that sigma_max^2 <= SAFE (where the iteration converges
    # fast), but leave a near-orthogonal weight (1 <= bound <= SAFE) untouched: shrinking it
    # would only slow convergence; scale a small weight up so that its bound is 1.
    c2 = torch.minimum(bound, torch.clamp(bound / SAFE, min=1.0))
    w = w / c2.sqrt()
    g = g / c2
    for i in range(iters):
        if i > 0:
            g = _gram(w, tall)
        p = g * -0.5
        p.diagonal().add_(1.5)  # 3/2 I - 1/2 G without materialising I
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
