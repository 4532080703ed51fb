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

from lipcore import ConfigError, Estimate, EstimatorConfig, Feature, TwoSampleTest
from lipcore.envelope import BLOCK_ENTRIES, MAX_ANCHOR_BYTES
from lipcore.twosample import summary

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
    "envelope_anchors": "max_envelope_anchors",
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
    exact_test_max_pairs: int = 250_000
    noise_floor_max_pairs: int = 1_000_000

    @classmethod
    def from_settings(cls, settings: Any) -> Limits:
        """The limits of a ``service.settings.Settings``."""
        bounds = {knob: int(getattr(settings, name)) for knob, name in CONFIG_LIMITS.items()}
        return cls(
            exact_max_pairs=int(settings.exact_max_pairs),
            config=bounds,
            exact_test_max_pairs=int(settings.exact_test_max_pairs),
            noise_floor_max_pairs=int(settings.noise_floor_max_pairs),
        )


#: Exact solves of relabelled samples: the exact method's test, and the noise floor beside a
#: cross-check (its median only: a few suffice).
EXACT_TEST_PERMUTATIONS = 200
NOISE_FLOOR_PERMUTATIONS = 5


@dataclass(frozen=True)
class Plan:
    """What one estimate runs: the method that fits (``exact`` or ``lipschitz``), whether the
    exact solver runs too, the estimator config (checked, with its defaults filled in), and
    how many exact solves of relabelled samples follow the exact one (0: none): the exact
    method's two-sample test, or the noise floor of the empirical figure."""

    method: Literal["exact", "lipschitz"]
    run_exact: bool
    config: EstimatorConfig
    exact_permutations: int = 0

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

    ``auto`` and ``lipschitz`` fit the potential, which answers the user's questions at any n:
    the two-sample test on held-out samples and the distance between the distributions with
    its interval. The cross-check runs the exact solver beside it (after it): ``auto`` when
    small enough, ``always`` (refused when too large), ``never``. ``exact`` runs the exact
    solver alone, tested by relabelling when that is cheap. A potential needs at least one
    training sample per set after the held-out fraction. Raises :class:`PolicyError` naming the
    field to change.
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
    if method == "exact":
        cheap = n * m <= limits.exact_test_max_pairs
        perms = EXACT_TEST_PERMUTATIONS if cheap else 0
        return Plan(method="exact", run_exact=True, config=cfg, exact_permutations=perms)
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
    floor = run_exact and n * m <= limits.noise_floor_max_pairs
    perms = NOISE_FLOOR_PERMUTATIONS if floor else 0
    return Plan(method="lipschitz", run_exact=run_exact, config=cfg, exact_permutations=perms)


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
    alpha: float = 0.05,
    exact_test: TwoSampleTest | None = None,
    features: list[Feature] | None = None,
) -> dict[str, Any]:
    """The result dict of the contract, for either method: the answer first (``verdict``,
    ``distance``, ``notes``), then the figures of the two samples.

    ``fitted``: the lipschitz estimate (None for exact); ``exact``: the exact member or None;
    ``exact_test``: the exact W1 under relabelling (the exact method's test, or the noise floor
    beside a cross-check) or None; ``features``: the per-feature table (``fitted.features``
    when None).
    """
    if features is None:
        features = fitted.features if fitted is not None else []
    out: dict[str, Any] = {
        "method": chosen.method,
        "verdict": None,
        "distance": None,
        "features": [f.to_dict() for f in features],
        "notes": [],
        "w1": None if exact is None else exact["value"],
        "lower_bound": None,
        "lipschitz_constant": None,
        "holdout": None,
        "exact": exact,
        "upper_bound": None,
        "bracket_width": None,
        "noise_floor": None,
        "relative_gap": None,
        "diagnostics": None,
        "potential_center": None,
        "device": "cpu",
        "seconds": float(seconds),
        "steps": 0,
        "config": None,
        "scale": None,
    }
    if exact_test is not None:
        out["noise_floor"] = {
            "value": exact_test.null_median,
            "of": "exact",
            "permutations": exact_test.permutations,
        }
    if fitted is None:
        if exact_test is not None and chosen.exact_permutations >= EXACT_TEST_PERMUTATIONS:
            out["verdict"] = _verdict(exact_test, alpha, None)
        else:
            out["notes"].append(
                "method exact measures these samples only: no test was run at this size and no "
                "distance between the distributions is estimated; use method auto for both"
            )
        out["notes"] += _noise_notes(out, None)
        return out
    gap = None
    if exact is not None and exact["value"] != 0:
        gap = (exact["value"] - fitted.lower_bound) / exact["value"]
    if fitted.test is not None:
        out["verdict"] = _verdict(fitted.test, alpha, fitted.holdout)
    if fitted.holdout is not None:
        h = fitted.holdout
        out["distance"] = {"value": h.value, "ci95": list(h.ci95), "kind": "distribution"}
    out.update(
        {
            "w1": float(fitted.lower_bound),
            "lower_bound": float(fitted.lower_bound),
            "lipschitz_constant": float(fitted.lipschitz_constant),
            "holdout": None if fitted.holdout is None else fitted.holdout.to_dict(),
            "relative_gap": gap,
            "upper_bound": None if fitted.upper_bound is None else fitted.upper_bound.value,
            "bracket_width": fitted.bracket_width,
            "diagnostics": {
                "grad_norm": {k: float(v) for k, v in fitted.grad_norm.items()},
                "objective": float(fitted.objective),
                "envelope": None if fitted.envelope is None else fitted.envelope.to_dict(),
            },
            "potential_center": float(fitted.center),
            "device": str(fitted.device),
            "steps": int(fitted.steps),
            "config": fitted.config.to_dict(),
        }
    )
    out["notes"] += _noise_notes(out, fitted)
    return out


def _verdict(test: TwoSampleTest, alpha: float, distance: Any) -> dict[str, Any]:
    return {
        "differ": test.rejects(alpha),
        "alpha": alpha,
        "p_value": test.p_value,
        "test": test.method,
        "permutations": test.permutations,
        "summary": summary(test, alpha, distance),
    }


def _noise_notes(out: dict[str, Any], fitted: Estimate | None) -> list[str]:
    """What a careful reader should know before reading the empirical figures: when they are
    mostly sampling noise, and when a diagnostic that looks like under-fitting is not."""
    notes = []
    floor, exact = out["noise_floor"], out["exact"]
    if floor is not None and exact is not None and floor["value"] >= 0.5 * exact["value"] > 0:
        notes.append(
            f"the empirical W1 ({exact['value']:.4g}) is dominated by sampling noise: two "
            f"samples of one distribution are {floor['value']:.4g} apart at this size (noise "
            "floor); read distance for the distributions"
        )
    distance, verdict = out["distance"], out["verdict"]
    if fitted is not None and distance is not None and fitted.lower_bound > distance["ci95"][1]:
        notes.append(
            f"lower_bound ({fitted.lower_bound:.4g}) is above the held-out interval: part of it "
            "fits these samples' noise (expected in high dimension); it bounds the empirical "
            "W1, distance estimates the distributions'"
        )
    if fitted is not None and verdict is not None and not verdict["differ"]:
        notes.append(
            "no detectable difference: a large relative_gap and grad_norm below 1 are expected "
            "here (the potential of two like samples is nearly flat), not signs of under-fitting"
        )
    elif fitted is not None and fitted.grad_norm.get("q50", 1.0) < 0.5:
        notes.append(
            f"grad_norm median {fitted.grad_norm['q50']:.2f} < 0.5 while the sets differ: the "
            "potential may under-fit (more steps or width may raise lower_bound)"
        )
    return notes


#: What a job process holds before its data: the interpreter, torch, numpy, POT (measured:
#: about 0.6 GB resident after a first estimate on a CPU).
BASE_JOB_BYTES = 768 * 1024**2


def job_memory(plan: Plan, n: int, m: int, d: int) -> dict[str, int]:
    """An upper estimate of a job's host memory, by part (bytes), from its plan and data size.

    data: both sets in float64 as loaded, in float32 for the network, and one scaled copy;
    network: the weights in float32 times eight (gradients, two Adam moments, the averaged
    copy, Björck's work arrays, the certified float64 copy); activations: one training batch of
    both sets through every layer, forward and backward, and an evaluation chunk; exact: the
    n·m float64 cost matrix and the plan, when the exact solver runs (d > 1); envelope: the
    anchors of both envelopes (lipcore.envelope, bounded per side) and their distance blocks.
    """
    c = plan.config
    rows = n + m
    params = d * c.width + (c.depth - 1) * c.width * c.width + c.width
    parts = {
        "base": BASE_JOB_BYTES,
        "data": rows * d * (8 + 4 + 8),
        "network": params * 4 * 8,
        "activations": 4 * c.width * (c.depth + 1) * 4 * (2 * c.batch_size + c.eval_chunk),
        "exact": 2 * 8 * n * m if plan.run_exact and d > 1 else 0,
        "envelope": (
            2 * min(c.envelope_anchors * d * 8, MAX_ANCHOR_BYTES) + 4 * BLOCK_ENTRIES * 8
            if c.envelope_anchors
            else 0
        ),
    }
    parts["total"] = sum(parts.values())
    return parts


def check_memory(plan: Plan, n: int, m: int, d: int, limit: int) -> dict[str, int]:
    """The estimate of :func:`job_memory`, or a PolicyError naming the part to shrink."""
    parts = job_memory(plan, n, m, d)
    if parts["total"] <= limit:
        return parts
    big = max((k for k in parts if k not in ("total", "base")), key=parts.__getitem__)
    knob = {
        "data": ("target", "fewer samples or dimensions"),
        "network": ("config.width", "a smaller config.width or config.depth"),
        "activations": ("config.batch_size", "a smaller config.batch_size or eval_chunk"),
        "exact": ("crosscheck", 'crosscheck "never" (the exact solve holds n·m costs)'),
        "envelope": ("config.envelope_anchors", "a smaller config.envelope_anchors"),
    }[big]
    gib = 1024**3
    raise PolicyError(
        knob[0],
        f"this job would need about {parts['total'] / gib:.1f} GiB of memory ({big}: "
        f"{parts[big] / gib:.1f} GiB), over this server's limit of {limit / gib:.1f} GiB "
        f"(max_job_memory_bytes); ask for {knob[1]}",
        "job-too-large",
    )
