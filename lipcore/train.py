"""The Kantorovich-Rubinstein training loop.

Maximises sum_i a_i f(x_i) - sum_j b_j f(y_j) over the 1-Lipschitz network f (high on the source).
Mini-batches are drawn by weight, with replacement; a set no larger than the batch is used whole
with its weights. Adam, cosine learning-rate decay, and a stopping rule on the smoothed objective.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from .accel import (
    CompiledStep,
    check_precision,
    forward_autocast,
    training_precision,
    use_cuda_graphs,
)
from .config import EstimatorConfig
from .fused import Workspace
from .network import LipschitzMLP


@dataclass(frozen=True)
class Progress:
    """What a progress callback receives. ``objective`` is in the units of the input data;
    ``phase``: "training" (step of total_steps), then "certifying", "testing" and "bracketing"
    (once each, step = total_steps: the potential is trained, the rest follows)."""

    step: int
    total_steps: int
    objective: float
    elapsed_s: float
    phase: str = "training"


@dataclass
class TrainResult:
    """``objective``: the smoothed training objective at the end; ``validation``: the best
    validation objective and ``best_step`` the step whose weights were kept (None: no
    validation part, the last weights kept)."""

    steps: int
    objective: float
    seconds: float
    history: list[tuple[int, float]] = field(default_factory=list)
    validation: float | None = None
    best_step: int | None = None


@dataclass(frozen=True)
class Validation:
    """The validation part of each training set (scaled inputs on the training device) and
    its weights: the objective on it judges when training stops and which weights are kept."""

    zx: torch.Tensor
    wx: torch.Tensor
    zy: torch.Tensor
    wy: torch.Tensor

    @torch.no_grad()
    def objective(self, net: LipschitzMLP) -> float:
        fx = net(self.zx)[:, 0].to(self.wx.dtype)
        fy = net(self.zy)[:, 0].to(self.wy.dtype)
        return float(torch.dot(self.wx, fx) - torch.dot(self.wy, fy))


class _Sampler:
    """Draws one set's training batch: the whole set with its weights, or a weighted draw (with
    replacement) of ``batch`` rows that then count equally."""

    def __init__(
        self, z: torch.Tensor, w: torch.Tensor, batch: int, generator: torch.Generator
    ) -> None:
        self.z, self.generator, self.batch = z, generator, batch
        n = z.shape[0]
        self.full = n <= batch
        self.w = w.to(z.dtype)
        self.uniform = bool(torch.all(w == w[0]))
        if not self.full and not self.uniform:
            cum = torch.cumsum(w.to(torch.float64), 0)
            self.cum = (cum / cum[-1]).to(torch.float64)

    def weights(self) -> torch.Tensor:
        """The weights of the rows of every batch (the same at each draw)."""
        if self.full:
            return self.w
        return torch.full((self.batch,), 1.0 / self.batch, dtype=self.z.dtype, device=self.z.device)

    def draw(self) -> torch.Tensor:
        if self.full:
            return self.z
        dev = self.z.device
        if self.uniform:
            idx = torch.randint(
                self.z.shape[0], (self.batch,), device=dev, generator=self.generator
            )
        else:
            u = torch.rand(self.batch, device=dev, generator=self.generator, dtype=torch.float64)
            idx = torch.searchsorted(self.cum, u, right=True).clamp_max(self.z.shape[0] - 1)
        return self.z[idx]


def _objective(
    net: LipschitzMLP,
    z: torch.Tensor,
    s: torch.Tensor,
    precision: str,
    device_type: str,
    workspace: Workspace | None,
) -> torch.Tensor:
    """The batch objective s^T f(z): z stacks both batches (one forward, so one
    orthonormalisation per step), s holds their signed weights."""
    with forward_autocast(precision, torch.device(device_type)):
        return net.objective(z, s, workspace)


_COMPILED: dict[bool, CompiledStep] = {}


def _compiled_objective(graphs: bool) -> CompiledStep:
    """One compiled _objective per process (and CUDA-graph mode): the network is an argument, so
    a new network of the same architecture reuses the compiled code instead of recompiling
    (torch.compile gives up after a few recompilations of one function)."""
    if graphs not in _COMPILED:
        _COMPILED[graphs] = CompiledStep(_objective, graphs)
    return _COMPILED[graphs]


def make_objective(
    net: LipschitzMLP, config: EstimatorConfig, device: torch.device
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The training objective (z, s) -> s^T f(z) with the config's levers: compiled (CUDA graphs
    on CUDA), bfloat16 autocast, or by default the fused eager forward and backward of
    lipcore.fused, whose buffers live as long as the returned function."""
    precision = check_precision(config.precision)
    graphs = use_cuda_graphs(config.cuda_graphs, device)
    if graphs or config.compile:
        fn = _compiled_objective(graphs)
        return lambda z, s: fn(net, z, s, precision, device.type, None)
    workspace = None if precision == "bf16" else Workspace()
    return lambda z, s: _objective(net, z, s, precision, device.type, workspace)


def make_optimizer(net: LipschitzMLP, config: EstimatorConfig) -> torch.optim.Optimizer:
    """Adam, with its fused kernel (one for all parameters) where this torch has one for the
    device (CPUs and CUDA in recent versions), else the default implementation."""
    try:
        return torch.optim.Adam(net.parameters(), lr=config.lr, fused=True)
    except RuntimeError:  # "fused=True requires ... supported devices"
        return torch.optim.Adam(net.parameters(), lr=config.lr)


def train_step(
    net: LipschitzMLP,
    opt: torch.optim.Optimizer,
    objective: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    z: torch.Tensor,
    s: torch.Tensor,
) -> torch.Tensor:
    """One ascent step on s^T f(z), then the warm-start reprojection. Returns the objective."""
    obj = objective(z, s)
    opt.zero_grad(set_to_none=True)
    (-obj).backward()  # type: ignore[no-untyped-call]
    opt.step()
    net.reproject_()
    return obj


def train(
    net: LipschitzMLP,
    zx: torch.Tensor,
    wx: torch.Tensor,
    zy: torch.Tensor,
    wy: torch.Tensor,
    config: EstimatorConfig,
    generator: torch.Generator,
    unit: float = 1.0,
    callback: Callable[[Progress], None] | None = None,
    validation: Validation | None = None,
) -> TrainResult:
    """Trains ``net`` in place on scaled inputs. ``unit`` converts the objective to data units
    (objective / input scale), for progress reports and the returned objective. With a
    ``validation`` part, training stops when its objective stops improving, and ``net`` ends
    with the weights of its best check (less overfitted than the last ones)."""
    start = time.perf_counter()
    dev = zx.device
    sx = _Sampler(zx, wx, config.batch_size, generator)
    sy = _Sampler(zy, wy, config.batch_size, generator)
    objective = make_objective(net, config, dev)  # warns if cuda_graphs is asked off CUDA
    graphs = config.cuda_graphs and dev.type == "cuda"
    opt = make_optimizer(net, config)
    with training_precision(config.precision, dev):
        return _loop(net, sx, sy, objective, opt, config, unit, callback, start, graphs, validation)


class _Average:
    """An exponential moving average of the network's parameters (``decay`` per step; 0: the
    last weights). The averaged weights are less noisy than the last Adam iterate: they are the
    ones validated and kept."""

    def __init__(self, net: LipschitzMLP, decay: float) -> None:
        self.params: list[torch.Tensor] = list(net.parameters())
        self.decay = decay
        self.avg = [p.detach().clone() for p in self.params] if decay > 0 else []

    @torch.no_grad()
    def update(self) -> None:
        if self.avg:
            torch._foreach_lerp_(self.avg, [p.detach() for p in self.params], 1.0 - self.decay)

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """The averaged weights in the network for the duration (the training ones after)."""
        if not self.avg:
            yield
            return
        with torch.no_grad():
            current = [p.detach().clone() for p in self.params]
            torch._foreach_copy_(self.params, self.avg)
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_(self.params, current)


#: The learning rate an extension cycle restarts from, as a fraction of config.lr. A full warm
#: restart measured best on the MinFunnels pairs (bench/funnels.py: 2x64 -19 % at 1.0, -24 % at
#: 0.3); it never touches a run that stops within its first cycle.
RESTART_LR = 1.0


def _loop(
    net: LipschitzMLP,
    sx: _Sampler,
    sy: _Sampler,
    objective: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    opt: torch.optim.Optimizer,
    config: EstimatorConfig,
    unit: float,
    callback: Callable[[Progress], None] | None,
    start: float,
    graphs: bool,
    validation: Validation | None = None,
) -> TrainResult:
    """The steps: draw, objective, Adam, warm-start reprojection; a read-back (and the
    validation check) every progress_every steps only (no host sync in between).

    Training runs in cycles of ``config.cycle_steps`` steps, each with its cosine decay of the
    learning rate. A cycle that ends while the judged objective (validation, else the smoothed
    training objective) still climbs, by more than ``config.extend_gain`` (relative) over the
    cycle's second half, is followed by another, from ``config.lr * RESTART_LR``, up to
    ``config.steps`` in all; an extension is not stopped in its first half (the restart may first
    lose ground; the weights kept are still those of the best check). The steps go where the
    objective says they pay, and a run that stops within its first cycle is unchanged. With
    patience 0 (no stopping rule), or a patience of at least ``config.steps`` (no early stop
    possible), one cycle of ``config.steps`` steps: the run goes to its last step.
    """
    no_stop = config.patience == 0 or config.patience >= config.steps
    cycle = config.steps if no_stop else min(config.cycle_steps, config.steps)
    total = cycle
    cycle_start, cycle_lr = 0, config.lr
    mid_value = -math.inf  # the judged objective at the current cycle's midpoint
    grace = 0  # no stop before patience steps after this one (an extension's first half)
    lr_min = config.lr * config.lr_final
    ema = math.nan
    best = -math.inf
    best_step = 0
    history: list[tuple[int, float]] = []
    pending: list[torch.Tensor] = []  # batch objectives not yet read back (no sync per step)
    s = torch.cat([sx.weights(), -sy.weights()])  # the rows' signed weights, fixed
    best_val, best_val_step = -math.inf, 0
    kept: dict[str, torch.Tensor] | None = None
    average = _Average(net, config.averaging) if validation is not None else None
    step = 0
    while step < total:
        step += 1
        obj = train_step(net, opt, objective, torch.cat([sx.draw(), sy.draw()]), s)
        if average is not None:
            average.update()
        phase = (step - cycle_start) / (total - cycle_start)
        lr = lr_min + 0.5 * (cycle_lr - lr_min) * (1 + math.cos(math.pi * phase))
        for group in opt.param_groups:
            group["lr"] = lr
        # A CUDA graph's output is overwritten by its next replay: keep a copy.
        pending.append(obj.detach().clone() if graphs else obj.detach())
        if step % config.progress_every and step != total:
            continue

        # Every progress_every steps: read the objectives back, smooth, decide, report.
        values = torch.stack(pending).double().cpu().tolist()
        pending.clear()
        for k, v in enumerate(values, start=step - len(values) + 1):
            v *= unit
            if not math.isfinite(v):
                raise FloatingPointError(f"training diverged at step {k} (objective {v})")
            ema = v if math.isnan(ema) else ema + config.smoothing * (v - ema)
            if best == -math.inf or ema > best + config.tolerance * max(abs(best), abs(ema)):
                best, best_step = ema, k
        judged = best
        if validation is not None and average is not None:
            with average.applied():
                val = validation.objective(net) * unit
                if not math.isfinite(val):
                    raise FloatingPointError(f"training diverged at step {step} (validation {val})")
                if best_val == -math.inf or val > best_val + config.tolerance * abs(best_val):
                    best_val, best_val_step = val, step
                    kept = {k: t.detach().clone() for k, t in net.state_dict().items()}
            best_step, judged = best_val_step, best_val
        stop = (
            config.patience > 0
            and step >= config.min_steps
            and step - max(best_step, grace) >= config.patience
        )
        if mid_value == -math.inf and 2 * (step - cycle_start) >= total - cycle_start:
            mid_value = judged
        if step == total and not stop and total < config.steps:
            gain = (judged - mid_value) / max(abs(judged), 1e-300)
            if gain > config.extend_gain:
                cycle_start, total = total, min(total + cycle, config.steps)
                cycle_lr, mid_value = config.lr * RESTART_LR, -math.inf
                grace = (cycle_start + total) // 2  # the restart may first lose ground
        history.append((step, ema))
        if callback is not None:
            callback(Progress(step, total, ema, time.perf_counter() - start))
        if stop:
            break
    if kept is None:
        return TrainResult(step, ema, time.perf_counter() - start, history)
    net.load_state_dict(kept)
    return TrainResult(
        step,
        ema,
        time.perf_counter() - start,
        history,
        validation=best_val,
        best_step=best_val_step,
    )
