"""estimate_w1 and its stages: prepare -> fit -> certify -> hold_out. The Estimate it returns.

Each stage can be called on its own (a benchmark times them; data already on a device can build
its own ``TrainingData`` and go through the same fit and certificate):

- ``prepare``: validate the inputs, split off the held-out samples, centre and scale, and put the
  training sets on the device (``Prepared``, with its ``TrainingData``);
- ``fit``: build the network and train it (``Fitted``);
- ``certify``: export the potential, its certified Lipschitz constant L, the lower bound over all
  samples, the potential's weighted centre and the gradient-norm quantiles (``Certificate``);
- ``envelop``: the Lipschitz envelopes of that potential over the training samples of either set
  (lipcore.envelope), kept instead of the network when the validation samples prefer one;
- ``hold_out``: the held-out difference and its confidence interval (``Holdout`` or None);
- ``test``: the permutation two-sample test of the potential on the held-out samples.

The held-out samples never inform training: a validation part carved from the training split
(``config.validation``) decides when training stops and which weights are kept, so the test on
the held-out samples keeps its exact level.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from .accel import resolve_device
from .bracket import UpperBound, bracket_width, upper_bound
from .certify import (
    Rows,
    evaluate,
    grad_norm_quantiles,
    lipschitz_constant,
    weighted_center,
    weighted_difference,
)
from .config import EstimatorConfig
from .envelope import (
    Envelope,
    EnvelopeChoice,
    anchor_count,
    envelope_of,
    one_se_choice,
    pick_anchors,
    prefix_sizes,
)
from .errors import ConfigError
from .features import Feature, feature_table
from .holdout import Holdout, Split, holdout_estimate, split
from .network import LipschitzMLP
from .potential import save_potential
from .train import Progress, TrainResult, Validation, train
from .twosample import TwoSampleTest, permutation_test, summary
from .validation import validate_inputs

F64 = NDArray[np.float64]


@dataclass
class Estimate:
    """The result of estimate_w1: the certified lower bound of the empirical W1 and L, the
    held-out estimate, the training record, gradient-norm quantiles and the potential itself.

    ``center`` is the weighted centre (sum a f(x) + sum b f(y)) / 2 of the raw exported potential
    f over all samples: (f - center) / lipschitz_constant is the centred 1-Lipschitz potential.
    """

    lower_bound: float
    lipschitz_constant: float
    center: float
    holdout: Holdout | None
    test: TwoSampleTest | None
    objective: float
    steps: int
    seconds: float
    device: str
    grad_norm: dict[str, float]
    config: EstimatorConfig
    potential: nn.Sequential = field(repr=False)
    history: list[tuple[int, float]] = field(default_factory=list, repr=False)
    d: int = 0
    features: list[Feature] = field(default_factory=list)
    upper_bound: UpperBound | None = None
    envelope: EnvelopeChoice | None = None

    @property
    def bracket_width(self) -> float | None:
        """(upper_bound - lower_bound) / upper_bound: how tight the certified bracket of the
        empirical W1 is (None without an upper bound)."""
        if self.upper_bound is None:
            return None
        return bracket_width(self.lower_bound, self.upper_bound.value)

    def verdict(self, alpha: float = 0.05) -> dict[str, Any] | None:
        """Do the two distributions differ? The test's decision at level ``alpha``, its p-value
        and one sentence; None when no test ran (no held-out samples)."""
        if not 0 < alpha < 1:
            raise ValueError(f"alpha: expected a level in (0, 1), got {alpha!r}")
        if self.test is None:
            return None
        return {
            "differ": self.test.rejects(alpha),
            "alpha": alpha,
            "p_value": self.test.p_value,
            "test": self.test.method,
            "permutations": self.test.permutations,
            "summary": summary(self.test, alpha, self.holdout),
        }

    def to_dict(self) -> dict[str, Any]:
        """The numbers as JSON-ready values (no potential, no history)."""
        return {
            "test": None if self.test is None else self.test.to_dict(),
            "features": [f.to_dict() for f in self.features],
            "upper_bound": None if self.upper_bound is None else self.upper_bound.value,
            "bracket_width": self.bracket_width,
            "lower_bound": self.lower_bound,
            "lipschitz_constant": self.lipschitz_constant,
            "center": self.center,
            "holdout": None if self.holdout is None else self.holdout.to_dict(),
            "objective": self.objective,
            "steps": self.steps,
            "seconds": self.seconds,
            "device": self.device,
            "grad_norm": dict(self.grad_norm),
            "envelope": None if self.envelope is None else self.envelope.to_dict(),
            "config": self.config.to_dict(),
        }

    def save(self, path: str | os.PathLike[str]) -> None:
        """The potential as safetensors; architecture and certificate in the metadata."""
        save_potential(
            path,
            self.potential,
            {
                "d": self.d,
                "lipschitz_constant": self.lipschitz_constant,
                "lower_bound": self.lower_bound,
                "center": self.center,
                "config": self.config.to_dict(),
                "holdout": None if self.holdout is None else self.holdout.to_dict(),
                "envelope": None if self.envelope is None else self.envelope.to_dict(),
            },
        )


# --------------------------------------------------------------------------- stage 1: prepare


@dataclass(frozen=True)
class TrainingData:
    """The training sets as the network sees them: z = (x - shift) * scale in float32 on the
    device, with their weights (float32, summing to 1). ``shift`` (float64, (d,)) and ``scale``
    map the trained network back to data units when it is exported."""

    zx: torch.Tensor
    wx: torch.Tensor
    zy: torch.Tensor
    wy: torch.Tensor
    shift: F64
    scale: float
    validation: Validation | None = None


@dataclass(frozen=True)
class Prepared:
    """Stage 1's output: the validated inputs (x, y as given when float32/float64, a and b
    normalised float64), the resolved config and device, the held-out splits (None: no holdout)
    and the training data. ``rng`` continues the seeded stream after the split (the
    gradient-norm subsample of ``certify`` draws from it). ``carve_x``, ``carve_y``: the
    training rows (``train``) and validation rows (``held``) of each set, as row indices of the
    data with their weights (None: no validation part)."""

    x: np.ndarray
    y: np.ndarray
    a: F64
    b: F64
    config: EstimatorConfig
    seed: int
    device: torch.device
    split_x: Split | None
    split_y: Split | None
    data: TrainingData
    rng: np.random.Generator
    carve_x: Split | None = None
    carve_y: Split | None = None


def _rows(s: np.ndarray, idx: np.ndarray | None, i: int, j: int) -> F64:
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
) -> tuple[F64, float]:
    """Centre (weighted mean of the two sets, each weighing 1/2) and one global scale that gives
    the centred data unit variance per coordinate (1 when all points coincide). ``ix``, ``iy``:
    the rows to use (None: all); ``a``, ``b`` are the weights of those rows."""
    d = x.shape[1]

    def moments(s: np.ndarray, w: np.ndarray, idx: np.ndarray | None) -> F64:
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


def _scaled(
    s: np.ndarray,
    idx: np.ndarray | None,
    shift: F64,
    scale: float,
    chunk: int,
    device: torch.device,
) -> torch.Tensor:
    """Scaled float32 training inputs on the device; centred in float64 first (data far from
    the origin would lose its digits in a float32 cast), chunk by chunk (bounded temporaries)."""
    k = s.shape[0] if idx is None else len(idx)
    z = np.empty((k, s.shape[1]), dtype=np.float32)
    for i in range(0, k, chunk):
        z[i : i + chunk] = (_rows(s, idx, i, i + chunk) - shift) * scale
    return torch.from_numpy(z).to(device)


def _config(config: EstimatorConfig | dict[str, Any] | None) -> EstimatorConfig:
    if config is None:
        return EstimatorConfig()
    if isinstance(config, dict):
        return EstimatorConfig.from_dict(config)
    if not isinstance(config, EstimatorConfig):
        raise ConfigError(
            "config", f"config: expected an EstimatorConfig or a dict, got {type(config)}"
        )
    return config


def prepare(
    x: object,
    y: object,
    a: object = None,
    b: object = None,
    *,
    config: EstimatorConfig | dict[str, Any] | None = None,
    holdout: float = 0.2,
    seed: int = 0,
    device: str | torch.device | None = None,
) -> Prepared:
    """Stage 1: validates every argument (a ValueError naming the culprit), splits off the
    held-out fraction of each set (seeded), computes the centring and scaling on the training
    part, and moves the scaled training sets to the device."""
    xs, ys, aw, bw = validate_inputs(x, y, a, b)
    cfg = _config(config)
    if isinstance(holdout, bool) or not isinstance(holdout, int | float | np.floating):
        raise ValueError(f"holdout: expected a fraction in [0, 1), got {holdout!r}")
    if not (0 <= holdout < 1):
        raise ValueError(f"holdout: expected a fraction in [0, 1), got {holdout!r}")
    frac = float(holdout)
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed: expected a non-negative integer, got {seed!r}")
    dev = resolve_device(device)

    rng = np.random.default_rng(int(seed))
    sx = split(xs.shape[0], aw, frac, rng) if frac > 0 else None
    sy = split(ys.shape[0], bw, frac, rng) if frac > 0 and sx is not None else None
    if sx is None or sy is None:
        sx = sy = None
        ix, a_tr, iy, b_tr = None, aw, None, bw
    else:
        ix, a_tr, iy, b_tr = sx.train, sx.w_train, sy.train, sy.w_train
    # The validation part: carved from the training part only (the held-out samples stay
    # untouched by every decision of training).
    vx = _carve(ix, a_tr, xs.shape[0], cfg.validation, rng)
    vy = _carve(iy, b_tr, ys.shape[0], cfg.validation, rng) if vx is not None else None
    if vx is None or vy is None:
        vx = vy = None
    else:
        ix, a_tr, iy, b_tr = vx.train, vx.w_train, vy.train, vy.w_train

    chunk = cfg.eval_chunk
    shift, scale = _scaling(xs, a_tr, ys, b_tr, chunk, ix, iy)
    validation = None
    if vx is not None and vy is not None:
        validation = Validation(
            zx=_scaled(xs, vx.held, shift, scale, chunk, dev),
            wx=torch.from_numpy(vx.w_held).to(dev, torch.float32),
            zy=_scaled(ys, vy.held, shift, scale, chunk, dev),
            wy=torch.from_numpy(vy.w_held).to(dev, torch.float32),
        )
    data = TrainingData(
        zx=_scaled(xs, ix, shift, scale, chunk, dev),
        wx=torch.from_numpy(a_tr).to(dev, torch.float32),
        zy=_scaled(ys, iy, shift, scale, chunk, dev),
        wy=torch.from_numpy(b_tr).to(dev, torch.float32),
        shift=shift,
        scale=scale,
        validation=validation,
    )
    return Prepared(xs, ys, aw, bw, cfg, int(seed), dev, sx, sy, data, rng, vx, vy)


#: Enough validation samples per set for a steady objective (more only costs time).
VALIDATION_MAX = 16384
#: Below this many training samples per set no validation part is carved (too few to judge).
VALIDATION_MIN_TRAIN = 20


def _carve(
    idx: np.ndarray | None, w: F64, n: int, fraction: float, rng: np.random.Generator
) -> Split | None:
    """Split the training rows ``idx`` (None: all n) into training and validation parts;
    ``Split.train`` / ``Split.held`` are then row indices of the data set itself."""
    rows = np.arange(n) if idx is None else idx
    if fraction <= 0 or len(rows) < VALIDATION_MIN_TRAIN:
        return None
    frac = min(fraction, VALIDATION_MAX / len(rows))
    part = split(len(rows), w, frac, rng)
    if part is None:
        return None
    return Split(rows[part.train], rows[part.held], part.w_train, part.w_held)


# --------------------------------------------------------------------------- stage 2: fit


@dataclass(frozen=True)
class Fitted:
    """Stage 2's output: the trained network (on the training device, in the scaled space),
    its training record, and the affine map of its inputs (see ``TrainingData``)."""

    net: LipschitzMLP
    result: TrainResult
    shift: F64
    scale: float

    def export(self) -> nn.Sequential:
        """The potential as a plain float64 nn.Sequential on the CPU, taking data units."""
        return self.net.export(torch.from_numpy(self.shift), self.scale, torch.float64)


def fit(
    data: TrainingData,
    config: EstimatorConfig,
    *,
    seed: int = 0,
    callback: Callable[[Progress], None] | None = None,
) -> Fitted:
    """Stage 2: a seeded network (initial weights from a CPU generator, so every device starts
    alike) trained on ``data`` on its device. ``callback(Progress)`` is called every
    ``config.progress_every`` steps and may raise lipcore.Cancelled to abort."""
    if callback is not None and not callable(callback):
        raise ValueError(f"callback: expected a callable or None, got {type(callback).__name__}")
    dev = data.zx.device
    net = LipschitzMLP(int(data.zx.shape[1]), config, torch.Generator().manual_seed(seed)).to(dev)
    result = train(
        net,
        data.zx,
        data.wx,
        data.zy,
        data.wy,
        config,
        torch.Generator(device=dev).manual_seed(seed + 1),
        unit=1.0 / data.scale,
        callback=callback,
        validation=data.validation,
    )
    return Fitted(net, result, data.shift, data.scale)


# --------------------------------------------------------------------------- stage 3: certify


@dataclass(frozen=True)
class Certificate:
    """Stage 3's output. ``potential``: the exported network (float64, CPU); ``fx``, ``fy``: the
    raw potential on every sample (float64); ``lower_bound`` = (sum a fx - sum b fy) / L;
    ``center`` = (sum a fx + sum b fy) / 2; ``grad_norm``: quantiles of ||grad f|| / L."""

    potential: nn.Sequential
    lipschitz_constant: float
    lower_bound: float
    center: float
    grad_norm: dict[str, float]
    fx: F64
    fy: F64

    @property
    def divisor(self) -> float:
        """L, or 1 when L = 0: only if every weight vanished, then f is constant, every
        difference is exactly 0, and dividing by 1 instead keeps the bound (0) valid."""
        return self.lipschitz_constant if self.lipschitz_constant > 0 else 1.0


def certify(
    fitted: Fitted,
    x: Rows,
    y: Rows,
    a: F64,
    b: F64,
    *,
    config: EstimatorConfig,
    device: torch.device,
    rng: np.random.Generator,
) -> Certificate:
    """Stage 3: exports the potential and certifies it (``certify_potential``). ``a``, ``b``:
    normalised weights of all samples."""
    return certify_potential(fitted.export(), x, y, a, b, config=config, device=device, rng=rng)


def certify_potential(
    potential: nn.Sequential,
    x: Rows,
    y: Rows,
    a: F64,
    b: F64,
    *,
    config: EstimatorConfig,
    device: torch.device,
    rng: np.random.Generator,
) -> Certificate:
    """The certificate of an exported potential (a network, or an envelope): L from the exact
    spectral norms of its weights (an envelope's is exactly 1), f on every sample of x and y
    (numpy arrays, or tensors already on a device) in float64 on ``device``, and from those
    values the certified lower bound and the centre; the gradient-norm quantiles on
    ``config.grad_samples`` rows per set drawn by ``rng``."""
    lip = lipschitz_constant(potential)
    div = lip if lip > 0 else 1.0
    model = potential.to(device)
    fx = evaluate(model, x, chunk=config.eval_chunk, device=device)
    fy = evaluate(model, y, chunk=config.eval_chunk, device=device)
    lower = weighted_difference(fx, a, fy, b) / div
    grads = grad_norm_quantiles(model, x, y, div, config.grad_samples, rng, device)
    return Certificate(
        potential=model.to("cpu"),
        lipschitz_constant=float(lip),
        lower_bound=float(lower),
        center=weighted_center(fx, a, fy, b),
        grad_norm=grads,
        fx=fx,
        fy=fy,
    )


# --------------------------------------------------------------------------- stage 3b: envelope


def envelop(cert: Certificate, prep: Prepared) -> tuple[Certificate, EnvelopeChoice | None]:
    """Stage 3b: the envelopes of g = f / L over up to ``config.envelope_anchors`` training
    samples of the source (the lower one) and of the target (the upper one), each with all its
    anchors and with 1/2, ..., 1/32 of them, judged by their validation objective
    (``one_se_choice``: the most conservative within one standard error of the best, the
    network first); an envelope kept replaces the network, and the certificate is then the
    envelope's (L = 1 exactly). Returns the certificate of the potential kept and the choice
    (None when none was tried: no validation part, or ``envelope_anchors`` 0). Only training
    and validation samples decide: the held-out ones stay untouched."""
    cfg = prep.config
    cx, cy = prep.carve_x, prep.carve_y
    if cfg.envelope_anchors == 0 or cx is None or cy is None:
        return cert, None
    div, dev = cert.divisor, prep.device
    rng = np.random.default_rng([prep.seed, 0xE4E1])
    xv = torch.from_numpy(_rows(prep.x, cx.held, 0, len(cx.held))).to(dev)
    yv = torch.from_numpy(_rows(prep.y, cy.held, 0, len(cy.held))).to(dev)
    # The candidates, the most conservative first: the network, then the envelopes from the
    # most anchors to the fewest (both sides at each count).
    found: list[tuple[int, str, Envelope, F64, F64]] = []  # count, name, its side's envelope, f
    rows = int(prep.x.shape[0] + prep.y.shape[0])  # what a kept envelope is evaluated on
    for side, data, f, part in (
        ("source", prep.x, cert.fx, cx),
        ("target", prep.y, cert.fy, cy),
    ):
        count = anchor_count(cfg.envelope_anchors, int(prep.x.shape[1]), len(part.train), rows)
        idx = pick_anchors(part.train, part.w_train, count, rng)
        sizes = prefix_sizes(len(idx))
        if not sizes:
            continue
        env = envelope_of(_rows(data, idx, 0, len(idx)), f[idx] / div, side).to(dev)
        fx = env.prefix_values(xv, sizes).cpu().numpy()
        fy = env.prefix_values(yv, sizes).cpu().numpy()
        found += [(k, f"{side}:{k}", env, fx[j], fy[j]) for j, k in enumerate(sizes)]
    found.sort(key=lambda c: -c[0])  # stable: the source before the target at each count
    candidates = [("network", cert.fx[cx.held] / div, cert.fy[cy.held] / div)]
    candidates += [(name, fx, fy) for _, name, _, fx, fy in found]
    kept_at, scores = one_se_choice(candidates, cx.w_held, cy.w_held)
    if kept_at == 0:
        return cert, EnvelopeChoice(None, 0, scores)
    k, _, env, _, _ = found[kept_at - 1]
    best = Envelope(env.anchors[:k], env.values[:k], env.side)
    kept = certify_potential(
        nn.Sequential(best), prep.x, prep.y, prep.a, prep.b, config=cfg, device=dev, rng=prep.rng
    )
    return kept, EnvelopeChoice(best.side, int(best.anchors.shape[0]), scores)


# --------------------------------------------------------------------------- stage 4: hold out


def hold_out(cert: Certificate, split_x: Split | None, split_y: Split | None) -> Holdout | None:
    """Stage 4: sum w f(x) - sum w f(y) of f / L on the held-out samples (weights renormalised
    within them) with its 95 % confidence interval; None without a split."""
    if split_x is None or split_y is None:
        return None
    div = cert.divisor
    return holdout_estimate(
        cert.fx[split_x.held] / div, split_x.w_held, cert.fy[split_y.held] / div, split_y.w_held
    )


def two_sample_test(
    cert: Certificate,
    split_x: Split | None,
    split_y: Split | None,
    permutations: int,
    seed: int,
) -> TwoSampleTest | None:
    """Stage 5: the permutation two-sample test of f on the held-out samples (lipcore.twosample),
    seeded apart from the other stages; None without a split."""
    if split_x is None or split_y is None:
        return None
    rng = np.random.default_rng([int(seed), 0x7E57])
    div = cert.divisor
    return permutation_test(
        cert.fx[split_x.held] / div,
        split_x.w_held,
        cert.fy[split_y.held] / div,
        split_y.w_held,
        permutations,
        rng,
    )


def estimate_w1(
    x: object,
    y: object,
    a: object = None,
    b: object = None,
    config: EstimatorConfig | dict[str, Any] | None = None,
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
    prep = prepare(x, y, a, b, config=config, holdout=holdout, seed=seed, device=device)
    fitted = fit(prep.data, prep.config, seed=prep.seed, callback=callback)

    def phase(name: str) -> None:
        if callback is not None:
            r = fitted.result
            callback(Progress(r.steps, r.steps, r.objective, time.perf_counter() - t0, name))

    phase("certifying")
    cert = certify(
        fitted, prep.x, prep.y, prep.a, prep.b, config=prep.config, device=prep.device, rng=prep.rng
    )
    cert, choice = envelop(cert, prep)
    phase("testing")
    verdict_test = two_sample_test(
        cert, prep.split_x, prep.split_y, prep.config.permutations, prep.seed
    )
    phase("bracketing")
    features = feature_table(
        cert.potential,
        prep.x,
        prep.y,
        prep.a,
        prep.b,
        lipschitz=cert.divisor,
        chunk=prep.config.eval_chunk,
        seed=prep.seed,
    )
    # The bracket costs at most what the estimate cost so far (its first pass always runs).
    upper = upper_bound(
        prep.x, prep.y, prep.a, prep.b, fx=cert.fx, fy=cert.fy,
        max_seconds=time.perf_counter() - t0,
    )  # fmt: skip
    return Estimate(
        lower_bound=cert.lower_bound,
        lipschitz_constant=cert.lipschitz_constant,
        center=cert.center,
        holdout=hold_out(cert, prep.split_x, prep.split_y),
        test=verdict_test,
        features=features,
        upper_bound=upper,
        objective=float(fitted.result.objective),
        steps=fitted.result.steps,
        seconds=time.perf_counter() - t0,
        device=str(prep.device),
        grad_norm=cert.grad_norm,
        config=prep.config,
        potential=cert.potential,
        history=fitted.result.history,
        d=int(prep.x.shape[1]),
        envelope=choice,
    )
