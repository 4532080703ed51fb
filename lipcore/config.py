"""EstimatorConfig: the network and training knobs, validated, JSON round-trippable."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from .accel import check_precision
from .errors import ConfigError
from .layers import ACTIVATIONS

#: The knobs that are floats (an integer given for one is taken as that float).
_FLOAT_FIELDS = (
    "lr",
    "lr_final",
    "tolerance",
    "smoothing",
    "validation",
    "averaging",
    "extend_gain",
)


@dataclass(frozen=True)
class EstimatorConfig:
    """Network and training knobs of estimate_w1. Defaults chosen by measurement (bench/).
    An invalid value raises ConfigError (a ValueError) naming the knob in ``.field``.

    width, depth: hidden width (even for "maxmin") and number of hidden layers.
    activation: "maxmin" (GroupSort-2) or "fullsort".
    steps: the most training steps; training may stop earlier (patience / tolerance), and runs
        beyond ``cycle_steps`` only while the objective still climbs (below).
    batch_size: samples drawn per set and step (by weight, with replacement); when a training set
        has at most this many samples, the whole set is used with its weights (exact gradient).
    lr, lr_final: Adam's learning rate, decayed (cosine) to lr * lr_final over each cycle.
    ortho_iters: Björck iterations (with gradient) per training step.
    reproject_iters: extra Björck iterations (no grad) on the raw weights after each step, on top
        of the warm start (the raw weights take the last orthonormalised value + the update).
    patience, tolerance: stop when the objective has not improved by more than tolerance
        (relative) for ``patience`` steps; patience 0 never stops early. With a validation part
        the objective judged is the validation objective, and the weights kept are those of
        its best check; without one, the smoothed training objective (and the last weights).
    validation: the fraction of each training set held aside to judge training (never the
        held-out test samples, so the test stays valid); 0 judges by the training objective.
    averaging: the decay of the exponential moving average of the weights (per step) that
        the validation checks judge and that is kept; 0 judges and keeps the raw iterates.
    permutations: random relabellings of the held-out samples in the two-sample test.
    min_steps: never stop before this many steps.
    cycle_steps, extend_gain: training runs in cycles of ``cycle_steps`` steps (each a cosine
        decay of the learning rate; later ones a warm restart), and another
        cycle follows, up to ``steps`` in all, only when the judged objective rose by more than
        ``extend_gain`` (relative) over the second half of the cycle just ended. With patience 0
        (never stop early) one cycle of ``steps`` steps. A run that stops within its first cycle
        is unchanged by them; the hard ones (many sharp features) use the extra steps.
    smoothing: weight of the newest batch objective in the exponential moving average.
    progress_every: the callback's period in steps.
    eval_chunk: rows per chunk when evaluating all samples in float64 (memory bound).
    grad_samples: samples (per set) on which the gradient-norm quantiles are computed.
    envelope_anchors: after training, the Lipschitz envelopes of the potential over up to this
        many training samples of each set, and over 1/2 ... 1/32 of them (lipcore.envelope), are
        judged on the validation samples; one replaces the network when it beats it by more
        than the validation noise (one standard error); 0 keeps the network always.
    precision, compile, cuda_graphs: speed levers of training only (lipcore.accel); the
        certificate is computed afterwards in float64 whatever they are. precision "float32",
        "tf32" (TF32 matrix products on CUDA; no-op on CPUs) or "bf16" (bfloat16 autocast of the
        training forward); compile: torch.compile of the training step (eager fallback, with a
        warning, if it cannot compile); cuda_graphs: the compiled step replayed as CUDA graphs
        (ignored, with a warning, off CUDA).
    """

    width: int = 64
    depth: int = 6
    activation: str = "maxmin"
    steps: int = 4000
    batch_size: int = 1024
    lr: float = 3e-3
    lr_final: float = 0.01
    ortho_iters: int = 1
    reproject_iters: int = 0
    patience: int = 200
    cycle_steps: int = 1000
    extend_gain: float = 0.01
    tolerance: float = 1e-4
    min_steps: int = 200
    smoothing: float = 0.05
    validation: float = 0.2
    averaging: float = 0.9
    permutations: int = 1000
    progress_every: int = 10
    eval_chunk: int = 65536
    grad_samples: int = 1024
    envelope_anchors: int = 4096
    # GPU levers, training only
    precision: str = "float32"
    compile: bool = False
    cuda_graphs: bool = False

    def __post_init__(self) -> None:
        ints_min = {
            "width": 2,
            "depth": 1,
            "steps": 1,
            "batch_size": 1,
            "ortho_iters": 1,
            "reproject_iters": 0,
            "patience": 0,
            "cycle_steps": 1,
            "min_steps": 0,
            "progress_every": 1,
            "eval_chunk": 1,
            "grad_samples": 1,
            "permutations": 1,
            "envelope_anchors": 0,
        }
        for name, low in ints_min.items():
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise ConfigError(name, f"config.{name}: expected an integer, got {v!r}")
            if v < low:
                raise ConfigError(name, f"config.{name}: must be >= {low}, got {v}")
        for name in _FLOAT_FIELDS:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise ConfigError(name, f"config.{name}: expected a finite number, got {v!r}")
        check_precision(self.precision)
        for name in ("compile", "cuda_graphs"):
            v = getattr(self, name)
            if not isinstance(v, bool):
                raise ConfigError(name, f"config.{name}: expected true or false, got {v!r}")
        if self.lr <= 0:
            raise ConfigError("lr", f"config.lr: must be > 0, got {self.lr}")
        if not 0 < self.lr_final <= 1:
            raise ConfigError(
                "lr_final", f"config.lr_final: must be in (0, 1], got {self.lr_final}"
            )
        if not 0 <= self.averaging < 1:
            raise ConfigError(
                "averaging", f"config.averaging: must be in [0, 1), got {self.averaging}"
            )
        if not 0 <= self.validation < 1:
            raise ConfigError(
                "validation", f"config.validation: must be in [0, 1), got {self.validation}"
            )
        if self.extend_gain < 0:
            raise ConfigError(
                "extend_gain", f"config.extend_gain: must be >= 0, got {self.extend_gain}"
            )
        if self.tolerance < 0:
            raise ConfigError("tolerance", f"config.tolerance: must be >= 0, got {self.tolerance}")
        if not 0 < self.smoothing <= 1:
            raise ConfigError(
                "smoothing", f"config.smoothing: must be in (0, 1], got {self.smoothing}"
            )
        if not isinstance(self.activation, str) or self.activation not in ACTIVATIONS:
            raise ConfigError(
                "activation",
                f"config.activation: must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}",
            )
        if self.activation == "maxmin" and self.width % 2:
            raise ConfigError(
                "width", f"config.width: must be even for activation 'maxmin', got {self.width}"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> EstimatorConfig:
        """Builds a config from a (possibly partial) dict; unknown keys are a ConfigError."""
        if d is None:
            return cls()
        if not isinstance(d, dict):
            raise ConfigError("config", f"config: expected a dict, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError("config", f"config: unknown keys {unknown}")
        values = dict(d)
        for name in _FLOAT_FIELDS:
            if isinstance(values.get(name), int) and not isinstance(values.get(name), bool):
                values[name] = float(values[name])
        return cls(**values)
