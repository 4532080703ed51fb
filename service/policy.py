"""What an estimate runs, and the shape of what it returns: one pure module.

The API (when a request arrives), the job runner (when it runs) and the in-process CLI all ask
:func:`plan`, so they cannot disagree on which solver runs or on what is too large; and all of
them build the result dict with :func:`result`, so its keys are written once. Nothing here does
I/O or touches torch: it decides from sizes, the request and the limits.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from lipcore import ConfigError, Estimate, EstimatorConfig

METHODS = ("auto", "lipschitz", "exact")
CROSSCHECKS = ("auto", "always", "never")

#: The config knobs a server bounds, with the name of the setting that bounds each.
CONFIG_LIMITS: dict[str, str] = {
    "steps": "max_steps",
    "width": "max_width",
    "depth": "max_depth",
    "batch_size": "max_batch_size",
    "ortho_iters": "max_ortho_iters",
    "reproject_iters": "max_ortho_iters",
    "eval_chunk": "max_eval_chunk",
    "grad_samples": "max_eval_chunk",
}


class PolicyError(ValueError):
    """A request this policy refuses; ``field`` is the request field to change."""

    def __init__(self, field: str, detail: str, code: str = "invalid_request") -> None:
        super().__init__(f"{field}: {detail}")
        self.field = field
        self.detail = detail
        self.code = code


@dataclass(frozen=True)
class Limits:
    """The bounds a plan is checked against (a server's settings; the CLI sets only the first)."""

    exact_max_pairs: int = 25_000_000
    config: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: Any) -> Limits:
        """The limits of a ``service.settings.Settings``."""
        bounds = {knob: int(getattr(settings, name)) for knob, name in CONFIG_LIMITS.items()}
        return cls(exact_max_pairs=int(settings.exact_max_pairs), config=bounds)


@dataclass(frozen=True)
class Plan:
    """What one estimate runs: the method that fits (``exact`` or ``lipschitz``), whether the
    exact solver runs too, and the estimator config (checked, with its defaults filled in)."""

    method: Literal["exact", "lipschitz"]
    run_exact: bool
    config: EstimatorConfig

    @property
    def fits_potential(self) -> bool:
        return self.method == "lipschitz"


def exact_is_small(n: int, m: int, d: int, limits: Limits) -> bool:
    """Whether the exact solver may run: d = 1 (closed form, any size) or n·m within the limit."""
    return d == 1 or n * m <= limits.exact_max_pairs


def check_config(config: Mapping[str, Any] | None, limits: Limits) -> EstimatorConfig:
    """The estimator config of a request, validated and within the server's limits."""
    given = dict(config or {})
    try:
        cfg = EstimatorConfig.from_dict(given)
    except ConfigError as exc:
        name = "config" if exc.field == "config" else f"config.{exc.field}"
        raise PolicyError(name, str(exc), "invalid_config") from None
    for knob, bound in limits.config.items():
        value = getattr(cfg, knob)
        if value > bound:
            default = "" if knob in given else " (the default; set a smaller one)"
            raise PolicyError(
                f"config.{knob}",
                f"{value}{default} exceeds this server's limit of {bound}",
                "invalid_config",
            )
    return cfg


def plan(
    *,
    method: str,
    crosscheck: str,
    n: int,
    m: int,
    d: int,
    holdout: float,
    config: Mapping[str, Any] | None,
    limits: Limits,
) -> Plan:
    """Decide what an estimate of an (n × d) source against an (m × d) target runs.

    ``auto`` takes the exact solver when it is small enough, else the potential. The cross-check
    runs the exact solver beside the potential: ``auto`` when small enough, ``always`` (refused
    when too large), ``never``. A potential needs at least one training sample per set after
    the held-out fraction. Raises :class:`PolicyError` naming the field to change.
    """
    if method not in METHODS:
        raise PolicyError("method", f"must be one of {', '.join(METHODS)}, got {method!r}")
    if crosscheck not in CROSSCHECKS:
        raise PolicyError(
            "crosscheck", f"must be one of {', '.join(CROSSCHECKS)}, got {crosscheck!r}"
        )
    cfg = check_config(config, limits)
    small = exact_is_small(n, m, d, limits)
    pairs = f"n*m = {n}*{m} = {n * m} cost entries, over the limit of {limits.exact_max_pairs}"
    if method == "exact" and not small:
        raise PolicyError(
            "method",
            f"exact needs {pairs} (exact_max_pairs); use lipschitz or auto",
            "exact_too_large",
        )
    chosen: Literal["exact", "lipschitz"] = (
        "lipschitz" if method == "lipschitz" or (method == "auto" and not small) else "exact"
    )
    if chosen == "exact":
        return Plan(method="exact", run_exact=True, config=cfg)
    if crosscheck == "always" and not small:
        raise PolicyError(
            "crosscheck",
            f"the exact cross-check needs {pairs} (exact_max_pairs); use auto or never",
            "exact_too_large",
        )
    if holdout > 0:
        for name, size in (("source", n), ("target", m)):
            if size - int(round(holdout * size)) < 1:
                raise PolicyError(
                    "holdout",
                    f"holding out {holdout} of the {name}'s {size} samples leaves none to "
                    "train on; lower it (0 disables the held-out estimate)",
                )
    run_exact = crosscheck == "always" or (crosscheck == "auto" and small)
    return Plan(method="lipschitz", run_exact=run_exact, config=cfg)


def exact_field(value: float, d: int, seconds: float) -> dict[str, Any]:
    """The result's ``exact`` member."""
    solver = "closed_form_1d" if d == 1 else "pot.emd2"
    return {"value": float(value), "solver": solver, "seconds": float(seconds)}


def result(
    chosen: Plan,
    *,
    exact: dict[str, Any] | None,
    fitted: Estimate | None,
    seconds: float,
) -> dict[str, Any]:
    """The result dict of the contract (the README's guarantees table), for either method.

    ``fitted`` is the lipschitz estimate (None for exact); ``exact`` the exact member or None.
    """
    out: dict[str, Any] = {
        "method": chosen.method,
        "w1": None if exact is None else exact["value"],
        "lower_bound": None,
        "lipschitz_constant": None,
        "holdout": None,
        "exact": exact,
        "relative_gap": None,
        "diagnostics": None,
        "potential_center": None,
        "device": "cpu",
        "seconds": float(seconds),
        "steps": 0,
        "config": None,
    }
    if fitted is None:
        return out
    gap = None
    if exact is not None and exact["value"] != 0:
        gap = (exact["value"] - fitted.lower_bound) / exact["value"]
    out.update(
        {
            "w1": float(fitted.lower_bound),
            "lower_bound": float(fitted.lower_bound),
            "lipschitz_constant": float(fitted.lipschitz_constant),
            "holdout": None if fitted.holdout is None else fitted.holdout.to_dict(),
            "relative_gap": gap,
            "diagnostics": {
                "grad_norm": {k: float(v) for k, v in fitted.grad_norm.items()},
                "objective": float(fitted.objective),
            },
            "potential_center": float(fitted.center),
            "device": str(fitted.device),
            "steps": int(fitted.steps),
            "config": fitted.config.to_dict(),
        }
    )
    return out
