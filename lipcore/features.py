"""Which features moved: a per-feature table from the exact marginals and the fitted potential.

For each feature (column) j:

- ``marginal_w1``: the exact 1-D W1 between the two weighted marginals of column j (closed form,
  all rows, any n). It sees a change of each column alone, not of the joint (a rotation that keeps
  every marginal moves none of them).
- ``attribution``: the share of the potential's squared gradient mass on feature j,
  sum_s w_s (df/dx_j)^2 / sum_s w_s ||grad f||^2 over both sets (each weighing 1/2). The optimal
  plan moves mass along -grad f, so this is where the transport goes; the shares sum to 1.
- ``direction``: the weighted mean of -(df/dx_j) / L over both sets, in [-1, 1]: which way the
  target moved along feature j (f is high on the source, mass moves down its gradient: positive
  means the target lies at larger values of the feature). For a shift of the whole cloud by t,
  direction ~ t / ||t||.

Without a potential (the exact method) only the marginals are defined: attribution and direction
are None, and the table is sorted by marginal_w1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from torch import nn

from .certify import evaluate, lipschitz_constant
from .exact import w1_1d
from .validation import column_names, validate_inputs

F64 = NDArray[np.float64]

DEFAULT_MAX_ROWS = 20_000


@dataclass(frozen=True)
class Feature:
    """One row of the table (see the module's docstring). ``index``: the column's position."""

    name: str
    index: int
    marginal_w1: float
    attribution: float | None
    direction: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def marginal_w1(x: np.ndarray, y: np.ndarray, a: F64, b: F64) -> F64:
    """The exact 1-D W1 of every column's two weighted marginals (validated inputs)."""
    d = int(x.shape[1])
    out = np.empty(d, dtype=np.float64)
    for j in range(d):
        out[j] = w1_1d(np.asarray(x[:, j], np.float64), np.asarray(y[:, j], np.float64), a, b)
    return out


def _subsample(s: np.ndarray, w: F64, max_rows: int, rng: np.random.Generator) -> tuple[F64, F64]:
    """All rows with their weights, or ``max_rows`` rows drawn uniformly without replacement
    with their weights renormalised (the weighted means stay unbiased up to the ratio)."""
    n = int(s.shape[0])
    if n <= max_rows:
        return np.asarray(s, dtype=np.float64), w
    idx = np.sort(rng.choice(n, size=max_rows, replace=False))
    ws = w[idx]
    total = float(ws.sum())
    ws = ws / total if total > 0 else np.full(max_rows, 1.0 / max_rows)
    return np.asarray(s[idx], dtype=np.float64), ws


def gradient_shares(
    potential: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    a: F64,
    b: F64,
    *,
    lipschitz: float | None = None,
    chunk: int = 65536,
    max_rows: int = DEFAULT_MAX_ROWS,
    seed: int = 0,
) -> tuple[F64, F64]:
    """(attribution, direction) per feature from the gradients of ``potential`` on at most
    ``max_rows`` rows per set (validated inputs; see the module's docstring)."""
    rng = np.random.default_rng([int(seed), 0xFEA7])
    xs, wa = _subsample(x, a, max_rows, rng)
    ys, wb = _subsample(y, b, max_rows, rng)
    _, gx = evaluate(potential, xs, chunk=chunk, grad=True)
    _, gy = evaluate(potential, ys, chunk=chunk, grad=True)
    mass = 0.5 * (wa @ (gx * gx) + wb @ (gy * gy))
    total = float(mass.sum())
    d = int(x.shape[1])
    attribution = mass / total if total > 0 else np.full(d, 1.0 / d)
    if lipschitz is not None:
        lip = float(lipschitz)
    elif isinstance(potential, nn.Sequential):
        lip = lipschitz_constant(potential)
    else:
        raise ValueError("lipschitz: required when the potential is not an nn.Sequential")
    mean = 0.5 * (wa @ gx + wb @ gy)
    direction = -mean / lip if lip > 0 else np.zeros(d)
    return np.asarray(attribution, np.float64), np.asarray(direction, np.float64)


def feature_table(
    potential: nn.Module | None,
    x: object,
    y: object,
    a: object = None,
    b: object = None,
    *,
    names: Sequence[str] | None = None,
    lipschitz: float | None = None,
    chunk: int = 65536,
    max_rows: int = DEFAULT_MAX_ROWS,
    seed: int = 0,
) -> list[Feature]:
    """The per-feature table, sorted by importance: attribution (then marginal_w1) with a
    potential, marginal_w1 without one (``potential=None``: attribution and direction None).

    x, y, a, b: as ``estimate_w1`` takes them (arrays, tensors, data frames; weights None for
    uniform). names: the columns' names (default: a frame's column names, else "x0", "x1", ...).
    lipschitz: L of the potential (default: computed from its weights, as the certificate does);
    it scales ``direction`` only. max_rows: rows per set for the gradients (a seeded uniform
    subsample above it); the marginals always use every row.
    """
    frame_names = column_names(x)
    xs, ys, aw, bw = validate_inputs(x, y, a, b)
    d = int(xs.shape[1])
    if names is None:
        names = frame_names if frame_names is not None else [f"x{j}" for j in range(d)]
    names = [str(s) for s in names]
    if len(names) != d:
        raise ValueError(f"names: {len(names)} names for {d} features")
    if isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1:
        raise ValueError(f"max_rows: expected an integer >= 1, got {max_rows!r}")
    if potential is not None and not isinstance(potential, nn.Module):
        raise ValueError(f"potential: expected a torch nn.Module or None, got {type(potential)}")
    marg = marginal_w1(xs, ys, aw, bw)
    if potential is None:
        order = sorted(range(d), key=lambda j: (-marg[j], j))
        return [Feature(names[j], j, float(marg[j]), None, None) for j in order]
    att, dirn = gradient_shares(
        potential, xs, ys, aw, bw, lipschitz=lipschitz, chunk=chunk, max_rows=max_rows, seed=seed
    )
    order = sorted(range(d), key=lambda j: (-att[j], -marg[j], j))
    return [Feature(names[j], j, float(marg[j]), float(att[j]), float(dirn[j])) for j in order]
