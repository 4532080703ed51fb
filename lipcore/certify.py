"""The certificate: exact spectral norms, float64 evaluation of every sample, gradient norms.

``evaluate`` is the one chunked evaluation of a potential on rows of data: the certificate, the
service's ``/evaluate`` and report, the CLI and the benchmarks all call it.
"""

from __future__ import annotations

import copy
import math
from typing import Literal, overload

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from .orthogonal import spectral_norm_exact

F64 = NDArray[np.float64]
#: Rows to evaluate: a numpy array (float32 or float64, possibly a read-only memory map) or a
#: torch tensor (data that already lives on a device).
Rows = np.ndarray | torch.Tensor


def lipschitz_constant(model: nn.Sequential) -> float:
    """Product of the exact float64 spectral norms of the Linear weights and of the constants of
    modules that state theirs (``lipschitz``: an envelope's is exactly 1); activations are
    1-Lipschitz. An upper bound of the model's Lipschitz constant."""
    norms: list[float] = []
    for m in model:
        if isinstance(m, nn.Linear):
            norms.append(spectral_norm_exact(m.weight))
        elif isinstance(stated := getattr(m, "lipschitz", None), float):
            norms.append(stated)
    return math.prod(norms)


def _placement(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    """The device and dtype of the model's parameters, else of its floating buffers (CPU,
    float64 for a model without either)."""
    for p in model.parameters():
        return p.device, p.dtype
    for b in model.buffers():
        if b.is_floating_point():
            return b.device, b.dtype
    return torch.device("cpu"), torch.float64


def _chunk_tensor(
    x: Rows, i: int, j: int, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """Rows i:j of x as a tensor on ``device`` in ``dtype``. A numpy chunk is copied to float64
    first: x may be a read-only memory map (which torch will not wrap) or float32."""
    if isinstance(x, torch.Tensor):
        return x[i:j].to(device, dtype)
    return torch.from_numpy(np.array(x[i:j], dtype=np.float64, order="C")).to(device, dtype)


@overload
def evaluate(
    model: nn.Module,
    x: Rows,
    *,
    chunk: int,
    device: str | torch.device | None = None,
    grad: Literal[False] = False,
) -> F64: ...


@overload
def evaluate(
    model: nn.Module,
    x: Rows,
    *,
    chunk: int,
    device: str | torch.device | None = None,
    grad: Literal[True],
) -> tuple[F64, F64]: ...


def evaluate(
    model: nn.Module,
    x: Rows,
    *,
    chunk: int,
    device: str | torch.device | None = None,
    grad: bool = False,
) -> F64 | tuple[F64, F64]:
    """f on every row of x (n, d), as a float64 numpy array (n,), ``chunk`` rows at a time, so
    that memory stays bounded for any n and a memory-mapped dataset is read once, in order.

    The rows are fed in the model's dtype (a float64 potential sees them in float64). ``device``:
    where to compute (None: where the model is); the caller's model is not moved (a copy is, when
    it lies elsewhere), so one loaded potential can serve several threads. With ``grad``, returns
    (values, gradients) with the float64 gradients of f with respect to x, shape (n, d).
    """
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk: must be an integer >= 1, got {chunk!r}")
    if x.ndim != 2:
        raise ValueError(f"x: expected a 2-D array (n, d), got {x.ndim} dimensions")
    home, dtype = _placement(model)
    dev = home if device is None else torch.device(device)
    if dev.type != home.type or dev.index not in (None, home.index):
        model = copy.deepcopy(model).to(dev)
    n, d = int(x.shape[0]), int(x.shape[1])
    values = np.empty(n, dtype=np.float64)
    grads = np.empty((n, d), dtype=np.float64) if grad else None
    for i in range(0, n, chunk):
        xc = _chunk_tensor(x, i, i + chunk, dev, dtype)
        if grads is None:
            with torch.no_grad():
                f = model(xc).reshape(-1)
        else:
            xc.requires_grad_(True)
            with torch.enable_grad():
                f = model(xc).reshape(-1)
                (g,) = torch.autograd.grad(f.sum(), xc)
            grads[i : i + chunk] = g.detach().to(torch.float64).cpu().numpy()
            f = f.detach()
        values[i : i + chunk] = f.to(torch.float64).cpu().numpy()
    return values if grads is None else (values, grads)


def weighted_center(fx: np.ndarray, a: np.ndarray, fy: np.ndarray, b: np.ndarray) -> float:
    """c = (sum a f(x) + sum b f(y)) / 2 (a, b normalised): the weighted mean of f over both sets,
    each weighing 1/2. f - c is the centred potential that /evaluate serves (scaled by 1/L)."""
    return 0.5 * (float(np.dot(a, fx)) + float(np.dot(b, fy)))


def weighted_difference(fx: np.ndarray, a: np.ndarray, fy: np.ndarray, b: np.ndarray) -> float:
    """sum a f(x) - sum b f(y), with f centred first (f is defined up to a constant; centring
    keeps the rounding relative to the spread of f, not to its offset)."""
    c = weighted_center(fx, a, fy, b)
    return float(np.dot(a, fx - c)) - float(np.dot(b, fy - c))


def _take(s: Rows, idx: np.ndarray) -> F64:
    """Rows ``idx`` of s as a float64 numpy array (from a device tensor too)."""
    if isinstance(s, torch.Tensor):
        rows = s[torch.from_numpy(idx).to(s.device)]
        return np.asarray(rows.to(torch.float64).cpu().numpy(), dtype=np.float64)
    return np.asarray(s[idx], dtype=np.float64)


def grad_norm_quantiles(
    model: nn.Module,
    x: Rows,
    y: Rows,
    lipschitz: float,
    samples: int,
    rng: np.random.Generator,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """Quantiles (5 %, 50 %, 95 %) of ||grad (f / L)|| on a random subsample of both sets."""
    parts = []
    for s in (x, y):
        k = min(samples, int(s.shape[0]))
        idx = np.sort(rng.choice(int(s.shape[0]), size=k, replace=False))
        parts.append(_take(s, idx))
    pts = np.concatenate(parts)
    _, g = evaluate(model, pts, chunk=max(1, pts.shape[0]), device=device, grad=True)
    norms = np.linalg.norm(g, axis=1) / lipschitz
    q = np.quantile(norms, [0.05, 0.5, 0.95])
    return {"q05": float(q[0]), "q50": float(q[1]), "q95": float(q[2])}
