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

from typing import Any

import torch

# Björck's map s -> s (3 - s^2) / 2 sends (0, sqrt(3)) into (0, 1] and 1 is its attracting fixed
# point; below SAFE = 1.3^2 one step already brings every singular value to >= 0.85.
SAFE = 1.69


def _gram(w: torch.Tensor, tall: bool) -> torch.Tensor:
    return w.mT @ w if tall else w @ w.mT


Scalar = float | torch.Tensor


def _host_scalars(w: torch.Tensor) -> bool:
    """Whether the first step's scalars (bound, scale) are read back as Python floats: free on a
    CPU, where each 0-d tensor op costs microseconds of dispatch; on an accelerator that would be
    a device sync per layer and step, so they stay 0-d tensors there."""
    return w.device.type == "cpu"


def _scale(bound: Scalar) -> Scalar:
    """c = min(bound, max(bound / SAFE, 1)). sigma_max^2 <= bound: scale so that sigma_max^2 <=
    SAFE (where the iteration converges fast), but leave a near-orthogonal weight (1 <= bound <=
    SAFE) untouched (shrinking it would only slow convergence); scale a small weight up so that
    its bound is 1."""
    if isinstance(bound, float):
        return min(bound, max(bound / SAFE, 1.0))
    return torch.minimum(bound, torch.clamp(bound / SAFE, min=1.0))


def _scale_slope(bound: Scalar, dtype: torch.dtype) -> Scalar:
    """dc/dbound: 1 where c = bound (< 1), 1/SAFE where c = bound / SAFE (> 1), else 0 (as a 0-d
    tensor: in ``dtype``, since a Python 1/SAFE would round to float32)."""
    if isinstance(bound, float):
        return 1.0 if bound < 1 else 1 / SAFE if bound > SAFE else 0.0
    return (bound < 1).to(dtype) + (bound > SAFE).to(dtype) / SAFE


class _FirstStep(torch.autograd.Function):
    """Pre-normalisation and the first Björck iteration of a tall weight (rows >= columns), with a
    hand-written backward: 5 small matrix products and a few elementwise ops instead of autograd's
    6 products and a node per op (this runs at every training step, for every layer).

    With G = W^T W, bound = max_r sum_j |G_rj| (row r*), c = min(bound, max(bound / SAFE, 1)),
    q = c^-1/2 and P = 3/2 I - G / (2c): E = q W P. For an output gradient dE, with M = W^T dE:
    dW = q dE P + W (dG + dG^T), where dG = -q M / (2c) + dc dc/dbound sign(G_r*) on row r*, and
    dc = -q/(2c) (<M, P> - <M, G> / c). Checked against autograd and gradcheck (tests).
    """

    @staticmethod
    def forward(ctx: Any, w: torch.Tensor) -> torch.Tensor:
        # In w's dtype even under a bfloat16 autocast (precision "bf16" lowers the batch products,
        # not the orthonormalisation), so that the backward's dtypes match.
        if torch.is_autocast_enabled(w.device.type):
            with torch.autocast(w.device.type, enabled=False):
                return _FirstStep._forward(ctx, w)
        return _FirstStep._forward(ctx, w)

    @staticmethod
    def _forward(ctx: Any, w: torch.Tensor) -> torch.Tensor:
        g = w.mT @ w
        top, top_row = g.abs().sum(dim=1).max(dim=0)
        bound: Scalar
        row: int | torch.Tensor
        if _host_scalars(w):
            bound = max(float(top.item()), torch.finfo(w.dtype).tiny)
            row = int(top_row.item())
        else:
            bound, row = top.clamp_min(torch.finfo(w.dtype).tiny), top_row
        c = _scale(bound)
        q = c**-0.5
        p = g * (-0.5 * q / c)  # q P = q (3/2 I - G / (2c)), without materialising I
        p.diagonal().add_(1.5 * q)
        ctx.save_for_backward(w)
        ctx.g, ctx.qp, ctx.c, ctx.q, ctx.bound, ctx.row = g, p, c, q, bound, row
        return w @ p

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, de: torch.Tensor) -> torch.Tensor:
        w: torch.Tensor = ctx.saved_tensors[0]
        g, qp, c, q, bound, row = ctx.g, ctx.qp, ctx.c, ctx.q, ctx.bound, ctx.row
        m = w.mT @ de
        dw: torch.Tensor = de @ qp
        k = -0.5 * q / c
        dg = m * k
        slope = _scale_slope(bound, w.dtype)
        if not isinstance(slope, float) or slope != 0.0:  # the scale c depends on W here
            m_p = torch.dot(m.flatten(), qp.flatten()) / q
            dc = k * (m_p - torch.dot(m.flatten(), g.flatten()) / c)
            if isinstance(row, int):
                dg[row].add_(g[row].sign() * (dc * slope))
            else:
                r = row.reshape(1)
                dg.index_add_(0, r, g.index_select(0, r).sign_().mul_(dc * slope))
        return dw.addmm_(w, dg + dg.mT)


def _first_step(w: torch.Tensor) -> torch.Tensor:
    out: torch.Tensor = _FirstStep.apply(w)  # type: ignore[no-untyped-call]
    return out


def bjorck(w: torch.Tensor, iters: int) -> torch.Tensor:
    """Björck orthonormalisation of a 2-D weight (out, in) after pre-normalisation.

    Returns a matrix with orthonormal columns (out >= in) or rows (out < in), approximately:
    singular values converge quadratically to 1. ``iters`` >= 1 iterations; differentiable (once:
    the first iteration's backward is hand-written).
    """
    tall = w.shape[0] >= w.shape[1]
    w = _first_step(w) if tall else _first_step(w.mT).mT
    for _ in range(iters - 1):
        p = _gram(w, tall) * -0.5
        p.diagonal().add_(1.5)
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
    sigma: torch.Tensor = (w @ v).norm()
    return sigma


def spectral_norm_exact(w: torch.Tensor) -> float:
    """The exact (float64 SVD) spectral norm of a 2-D weight."""
    return float(torch.linalg.matrix_norm(w.detach().to(torch.float64), ord=2))


def frobenius_normalise(w: torch.Tensor) -> torch.Tensor:
    """w / ||w||_F: spectral norm <= 1, and == 1 for a single row (the last layer)."""
    out: torch.Tensor = w / w.norm().clamp_min(torch.finfo(w.dtype).tiny)
    return out
