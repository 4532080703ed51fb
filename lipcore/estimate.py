"""estimate_w1: split, scale, train, export, certify. The Estimate it returns."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from .certify import evaluate, grad_norm_quantiles, lipschitz_constant, weighted_difference
from .config import EstimatorConfig
from .holdout import Holdout, holdout_estimate, split
from .network import LipschitzMLP
from .potential import save_potential
from .train import Progress, train
from .validation import validate_inputs


@dataclass
class Estimate:
    """The result of estimate_w1. See DESIGN.md section 2 for what each number guarantees."""

    lower_bound: float
    lipschitz_constant: float
    holdout: Holdout | None
    objective: float
    steps: int
    seconds: float
    device: str
    grad_norm: dict[str, float]
    config: EstimatorConfig
    potential: nn.Module = field(repr=False)
    history: list[tuple[int, float]] = field(default_factory=list, repr=False)
    d: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "lower_bound": self.lower_bound,
            "lipschitz_constant": self.lipschitz_constant,
            "holdout": None if self.holdout is None else self.holdout.to_dict(),
            "objective": self.objective,
            "steps": self.steps,
            "seconds": self.seconds,
            "device": self.device,
            "grad_norm": dict(self.grad_norm),
            "config": self.config.to_dict(),
        }

    def save(self, path: str | os.PathLike) -> None:
        """The potential as safetensors; architecture and certificate in the metadata."""
        save_potential(
            path,
            self.potential,
            {
                "d": self.d,
                "lipschitz_constant": self.lipschitz_constant,
                "lower_bound": self.lower_bound,
                "config": self.config.to_dict(),
                "holdout": None if self.holdout is None else self.holdout.to_dict(),
            },
        )


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device: {exc}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device: CUDA requested but not available")
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        dev = torch.device("cuda", index)
    return dev


def _rows(s: np.ndarray, idx: np.ndarray | None, i: int, j: int) -> np.ndarray:
    """Rows i:j of s, or of s[idx] without materialising s[idx] (a large set is not copied)."""
    return np.asarray(s[i:j] if idx is None else s[idx[i:j]], dtype=np.float64)


def _scaling(
    x: np.ndarray,
    a: np.ndarray,
    y: np.ndarray,
    b: np.ndarray,
    chunk: int,
    ix: np.ndarray | None = None,
    iy: np.ndarray | None = None,
) -> tuple[np.ndarray, float]:
    """Centre (weighted mean of the two sets, each weighing 1/2) and one global scale that gives
    the centred data unit variance per coordinate (1 when all points coincide). ``ix``, ``iy``:
    the rows to use (None: all); ``a``, ``b`` are the weights of those rows."""
    d = x.shape[1]

    def moments(s: np.ndarray, w: np.ndarray, idx: np.ndarray | None) -> np.ndarray:
        acc = np.zeros(d)
        for i in range(0, len(w), chunk):
            acc += w[i : i + chunk] @ _rows(s, idx, i, i + chunk)
        return acc

    mu = 0.5 * (moments(x, a, ix) + moments(y, b, iy))

    def second(s: np.ndarray, w: np.ndarray, idx: np.ndarray | None) -> float:
        acc = 0.0
        for i in range(0, len(w), chunk):
            c = _rows(s, idx, i, i + chunk) - mu
            acc += float(w[i : i + chunk] @ np.einsum("ij,ij->i", c, c))
        return acc

    ms = 0.5 * (second(x, a, ix) + second(y, b, iy)) / d
    scale = 1.0 / math.sqrt(ms) if ms > 1e-300 and math.isfinite(1.0 / math.sqrt(ms)) else 1.0
    return mu, scale


def estimate_w1(
    x: object,
    y: object,
    a: object = None,
    b: object = None,
    config: EstimatorConfig | dict | None = None,
    holdout: float = 0.2,
    seed: int = 0,
    device: str | torch.device | None = None,
    callback: Callable[[Progress], None] | None = None,
) -> Estimate:
    """Certified lower bound of the empirical W1 between (x, a) and (y, b), Euclidean cost.

    Trains a 1-Lipschitz potential f (high on the source x) on 1 - ``holdout`` of each set, then
    certifies: L from the exact spectral norms of the exported weights, and
    lower_bound = (sum a f(x) - sum b f(y)) / L over all samples in float64.
    ``callback(Progress)`` is called every few steps and may raise lipcore.Cancelled to abort.
    """
    t0 = time.perf_counter()
    xs, ys, aw, bw = validate_inputs(x, y, a, b)
    if config is None:
        config = EstimatorConfig()
    elif isinstance(config, dict):
        config = EstimatorConfig.from_dict(config)
    elif not isinstance(config, EstimatorConfig):
        raise ValueError(f"config: expected an EstimatorConfig or a dict, got {type(config)}")
    if isinstance(holdout, bool) or not isinstance(holdout, int | float | np.floating):
        raise ValueError(f"holdout: expected a fraction in [0, 1), got {holdout!r}")
    if not (0 <= holdout < 1):
        raise ValueError(f"holdout: expected a fraction in [0, 1), got {holdout!r}")
    holdout = float(holdout)
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed: expected a non-negative integer, got {seed!r}")
    if callback is not None and not callable(callback):
        raise ValueError(f"callback: expected a callable or None, got {type(callback).__name__}")
    dev = resolve_device(device)
    n, d = xs.shape
    m = ys.shape[0]

    rng = np.random.default_rng(int(seed))
    sx = split(n, aw, holdout, rng) if holdout > 0 else None
    sy = split(m, bw, holdout, rng) if holdout > 0 and sx is not None else None
    if sx is None or sy is None:
        sx = sy = None
        ix, a_tr, iy, b_tr = None, aw, None, bw
    else:
        ix, a_tr, iy, b_tr = sx.train, sx.w_train, sy.train, sy.w_train

    chunk = config.eval_chunk
    mu, scale = _scaling(xs, a_tr, ys, b_tr, chunk, ix, iy)
    mu_t = torch.from_numpy(mu)

    def to_z(s: np.ndarray, idx: np.ndarray | None) -> torch.Tensor:
        """Scaled float32 training inputs; centred in float64 first (data far from the origin
        would lose its digits in a float32 cast), chunk by chunk (bounded temporaries)."""
        k = s.shape[0] if idx is None else len(idx)
        z = np.empty((k, s.shape[1]), dtype=np.float32)
        for i in range(0, k, chunk):
            z[i : i + chunk] = (_rows(s, idx, i, i + chunk) - mu) * scale
        return torch.from_numpy(z).to(dev)

    gen_cpu = torch.Generator().manual_seed(int(seed))
    net = LipschitzMLP(d, config, gen_cpu).to(dev)
    gen_dev = torch.Generator(device=dev).manual_seed(int(seed) + 1)
    result = train(
        net,
        to_z(xs, ix),
        torch.from_numpy(a_tr).to(dev, torch.float32),
        to_z(ys, iy),
        torch.from_numpy(b_tr).to(dev, torch.float32),
        config,
        gen_dev,
        unit=1.0 / scale,
        callback=callback,
    )

    potential = net.export(mu_t, scale, torch.float64)
    lip = lipschitz_constant(potential)
    # L = 0 only if every weight vanished: then f is constant, every difference is exactly 0,
    # and dividing by 1 instead keeps the bound (0) valid.
    div = lip if lip > 0 else 1.0
    model_dev = potential.to(dev)
    fx = evaluate(model_dev, xs, config.eval_chunk, dev)
    fy = evaluate(model_dev, ys, config.eval_chunk, dev)
    lower = weighted_difference(fx, aw, fy, bw) / div
    held = None
    if sx is not None and sy is not None:
        held = holdout_estimate(fx[sx.held] / div, sx.w_held, fy[sy.held] / div, sy.w_held)
    grads = grad_norm_quantiles(model_dev, xs, ys, div, config.grad_samples, rng, dev)
    potential = model_dev.to("cpu")
    return Estimate(
        lower_bound=float(lower),
        lipschitz_constant=float(lip),
        holdout=held,
        objective=float(result.objective),
        steps=result.steps,
        seconds=time.perf_counter() - t0,
        device=str(dev),
        grad_norm=grads,
        config=config,
        potential=potential,
        history=result.history,
        d=d,
    )
