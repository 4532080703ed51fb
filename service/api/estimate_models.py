"""Pydantic models of the estimate resource: the request, the estimate and its result.

The result mirrors the dict service.policy.result builds; modelling it here is what makes OpenAPI
document every number the service returns.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from lipcore import EstimatorConfig
from service.api.pages import Page

Method = Literal["auto", "lipschitz", "exact"]
Crosscheck = Literal["auto", "always", "never"]
Status = Literal["queued", "running", "succeeded", "failed", "cancelled"]
FINISHED: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
INT64_MAX = 2**63 - 1

DatasetId = Annotated[
    str, Field(min_length=1, max_length=40, examples=["ds_54ae81222061727ac390c18f"])
]

# -- examples ---------------------------------------------------------------------------------
# One estimate, end to end: 2000 samples of N(0, I_2) (columns u, v) against 2000 of N(0, I_2)
# shifted by 0.5 along u (true W1 = 0.5), default request and config, on a CPU; the figures are
# those the service returned (rounded). Each example is validated against its model
# (tests/service/test_openapi_docs.py).
SOURCE_EXAMPLE = "ds_54ae81222061727ac390c18f"
TARGET_EXAMPLE = "ds_5ff92435ec9e7cfcb299f485"
ESTIMATE_ID_EXAMPLE = "est_d67d5d2f6bdbe90b84799d29"
CONFIG_EXAMPLE: dict[str, Any] = EstimatorConfig().to_dict()

REQUEST_EXAMPLES: list[Any] = [  # JSON values (pydantic json_schema_extra)
    {"source": SOURCE_EXAMPLE, "target": TARGET_EXAMPLE},
    {
        "source": SOURCE_EXAMPLE,
        "target": TARGET_EXAMPLE,
        "method": "auto",
        "crosscheck": "never",
        "holdout": 0.3,
        "alpha": 0.01,
        "scale": "standardize",
        "match_columns": "names",
        "seed": 42,
        "config": {"width": 64, "depth": 2, "steps": 500},
    },
    {"source": SOURCE_EXAMPLE, "target": TARGET_EXAMPLE, "method": "exact"},
]

PROGRESS_EXAMPLES: list[Any] = [  # JSON values (pydantic json_schema_extra)
    {
        "step": 370,
        "total_steps": 1000,
        "objective": 0.438739,
        "elapsed_s": 3.92,
        "phase": "training",
    },
    {"step": 470, "total_steps": 470, "objective": 0.456306, "elapsed_s": 4.61, "phase": "exact"},
]

RESULT_EXAMPLES: list[Any] = [  # JSON values (pydantic json_schema_extra)
    {
        "method": "lipschitz",
        "verdict": {
            "differ": True,
            "alpha": 0.05,
            "p_value": 0.000999,
            "test": "heldout-potential-permutation",
            "permutations": 1000,
            "summary": "differ (p < 0.001): distance 0.45, 95 % CI [0.308, 0.593]",
        },
        "distance": {"value": 0.450367, "ci95": [0.307585, 0.593149], "kind": "distribution"},
        "features": [
            {
                "name": "u",
                "index": 0,
                "marginal_w1": 0.435065,
                "attribution": 0.968595,
                "direction": 0.983585,
            },
            {
                "name": "v",
                "index": 1,
                "marginal_w1": 0.071477,
                "attribution": 0.031405,
                "direction": 0.157275,
            },
        ],
        "notes": [],
        "w1": 0.440513,
        "lower_bound": 0.440513,
        "lipschitz_constant": 1.006495,
        "holdout": {
            "value": 0.450367,
            "ci95": [0.307585, 0.593149],
            "n_source": 400,
            "n_target": 400,
        },
        "exact": {"value": 0.445023, "solver": "pot.emd2", "seconds": 0.62},
        "upper_bound": 0.464469,
        "bracket_width": 0.051577,
        "scale": {"mode": "none", "factors": None},
        "noise_floor": None,
        "relative_gap": 0.010134,
        "diagnostics": {
            "grad_norm": {"q05": 0.998838, "q50": 0.99963, "q95": 0.999769},
            "objective": 0.456306,
            # From a rerun of the same kind of pair once envelopes were tried (seed 0): on a
            # plain shift the network beats every envelope on the validation samples.
            "envelope": {
                "side": None,
                "anchors": 0,
                "validation": {
                    "network": 0.6815,
                    "source:1280": 0.6765,
                    "source:640": 0.659,
                    "target:1280": 0.6701,
                    "target:640": 0.6536,
                },
            },
        },
        "potential_center": 0.130654,
        "device": "cpu",
        "seconds": 5.24,
        "steps": 470,
        "config": CONFIG_EXAMPLE,
    },
    {
        # method exact on the first 400 samples of each set: small enough for its test.
        "method": "exact",
        "verdict": {
            "differ": True,
            "alpha": 0.05,
            "p_value": 0.004975,
            "test": "exact-w1-permutation",
            "permutations": 200,
            "summary": "differ (p < 0.005)",
        },
        "distance": None,
        "features": [
            {
                "name": "u",
                "index": 0,
                "marginal_w1": 0.440689,
                "attribution": None,
                "direction": None,
            },
            {
                "name": "v",
                "index": 1,
                "marginal_w1": 0.187941,
                "attribution": None,
                "direction": None,
            },
        ],
        "notes": [],
        "w1": 0.50085,
        "lower_bound": None,
        "lipschitz_constant": None,
        "holdout": None,
        "exact": {"value": 0.50085, "solver": "pot.emd2", "seconds": 0.012},
        "upper_bound": None,
        "bracket_width": None,
        "scale": {"mode": "none", "factors": None},
        "noise_floor": {"value": 0.216415, "of": "exact", "permutations": 200},
        "relative_gap": None,
        "diagnostics": None,
        "potential_center": None,
        "device": "cpu",
        "seconds": 1.6,
        "steps": 0,
        "config": None,
    },
]

JOB_ERROR_EXAMPLES: list[Any] = [  # JSON values (pydantic json_schema_extra)
    {
        "type": "timeout",
        "title": "The job ran too long",
        "detail": "the job exceeded the time limit of 3600 s (job_timeout_s)",
    },
    {
        "type": "dataset_missing",
        "title": "A dataset is missing",
        "detail": f"dataset {TARGET_EXAMPLE} is no longer stored",
    },
]

_QUEUED: dict[str, Any] = {
    "id": ESTIMATE_ID_EXAMPLE,
    "status": "queued",
    "source": SOURCE_EXAMPLE,
    "target": TARGET_EXAMPLE,
    "method": "auto",
    "crosscheck": "auto",
    "holdout": 0.2,
    "alpha": 0.05,
    "scale": "none",
    "seed": 0,
    "config": CONFIG_EXAMPLE,
    "progress": None,
    "result": None,
    "error": None,
    "attempt": 0,
    "cancel_requested": False,
    "created_at": "2026-12-03T12:16:06.442545Z",
    "started_at": None,
    "finished_at": None,
}
_STARTED = {"attempt": 1, "started_at": "2026-12-03T12:16:06.613902Z"}

#: The estimate as each route answers it: first the finished job (GET), then the job as POST
#: answers it (queued), a running one (progress), and a failed one (error).
ESTIMATE_EXAMPLES: list[Any] = [  # JSON values (pydantic json_schema_extra)
    {
        **_QUEUED,
        **_STARTED,
        "status": "succeeded",
        "progress": PROGRESS_EXAMPLES[1],
        "result": RESULT_EXAMPLES[0],
        "finished_at": "2026-12-03T12:16:11.902417Z",
    },
    _QUEUED,
    {**_QUEUED, **_STARTED, "status": "running", "progress": PROGRESS_EXAMPLES[0]},
    {
        **_QUEUED,
        **_STARTED,
        "status": "failed",
        "progress": PROGRESS_EXAMPLES[0],
        "error": JOB_ERROR_EXAMPLES[0],
        "finished_at": "2026-12-03T13:16:07.120934Z",
    },
]


def _event(event: str, data: dict[str, Any], event_id: str | None = None) -> str:
    """One Server-Sent Event as GET /v1/estimates/{id}/events writes it."""
    line = f"id: {event_id}\n" if event_id is not None else ""
    return f"event: {event}\ndata: {json.dumps(data)}\n{line}\n"


#: The stream of a job followed while it trains: progress events, then its final event.
EVENTS_EXAMPLE = "".join(
    [
        _event(
            "progress",
            {**PROGRESS_EXAMPLES[0], "step": 360, "objective": 0.437912, "elapsed_s": 3.81},
            "360",
        ),
        _event("progress", PROGRESS_EXAMPLES[0], "370"),
        _event("progress", PROGRESS_EXAMPLES[1], "470"),
        _event("result", ESTIMATE_EXAMPLES[0]),
    ]
)

EVALUATE_REQUEST_EXAMPLES: list[Any] = [  # JSON values (pydantic json_schema_extra)
    {"points": [[0.0, 0.0], [0.5, 0.0], [1.0, 1.0]], "gradient": True},
    {"points": [[0.0, 0.0], [0.5, 0.0]]},
]
EVALUATE_RESPONSE_EXAMPLES: list[Any] = [  # JSON values (pydantic json_schema_extra)
    {
        "values": [0.236799, -0.253858, -0.94821],
        "gradients": [[-0.979407, -0.200424], [-0.982865, -0.182865], [-0.980073, -0.194791]],
    },
    {"values": [0.236799, -0.253858]},
]


class EstimateRequest(BaseModel):
    """What to estimate and how. Unknown fields are an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": REQUEST_EXAMPLES})

    source: DatasetId = Field(description="Dataset id of the source samples X (f is high on X).")
    target: DatasetId = Field(description="Dataset id of the target samples Y.")
    method: Method = Field(
        "auto",
        description="auto and lipschitz: the neural potential, which answers at any size (a "
        "two-sample test and the distance between the distributions), cross-checked against "
        "the exact solver when small enough; exact: POT / closed form alone (these samples' "
        "W1, tested by relabelling when small).",
    )
    crosscheck: Crosscheck = Field(
        "auto",
        description="Also run the exact solver next to lipschitz: auto (when small enough), "
        "always (422 when too large), never.",
    )
    holdout: float = Field(
        0.2,
        ge=0,
        lt=1,
        allow_inf_nan=False,
        strict=True,
        description="Fraction of each set held out of training: the samples of the test and "
        "of the distance's interval.",
    )
    alpha: float = Field(
        0.05,
        gt=0,
        lt=1,
        allow_inf_nan=False,
        strict=True,
        description="Level of the two-sample test: the verdict says 'differ' when p <= alpha.",
    )
    scale: Literal["none", "standardize", "robust"] = Field(
        "none",
        description="Per-feature scaling before the Euclidean cost: none (the data's own units), "
        "standardize (pooled standard deviation) or robust (pooled interquartile range). Every "
        "figure is then in the scaled units; the potential takes raw points (/evaluate).",
    )
    match_columns: Literal["names", "position"] = Field(
        "names",
        description="names: two datasets with named columns must name the same columns in the "
        "same order (else 422: a silent column-order mismatch is a wrong answer); position: "
        "pair the columns by position whatever their names.",
    )
    seed: int = Field(0, ge=0, le=INT64_MAX, strict=True, description="Seed of the whole job.")
    config: dict[str, Any] = Field(
        default_factory=dict,
        description="Network and training knobs (lipcore.EstimatorConfig); omitted keys take "
        "their defaults.",
        examples=[{"width": 128, "depth": 3, "steps": 2000, "batch_size": 2048}],
    )


class Progress(BaseModel):
    """Where a running job stands: its phase, and within training the step."""

    model_config = ConfigDict(json_schema_extra={"examples": PROGRESS_EXAMPLES})

    step: int = Field(
        description="Training steps done. After training (the later phases): the steps it ran. "
        "0 for method exact."
    )
    total_steps: int = Field(
        description="During training: config.steps, the most it may run (validation stopping "
        "may end it sooner). After training: the steps it ran. 0 for method exact."
    )
    objective: float | None = Field(
        None,
        description="The smoothed training objective (weighted mean of f on the source batch "
        "minus on the target batch, moving average), in the data's units (scaled ones under "
        "a scale): it rises towards the distance as training proceeds. After training: its "
        "final value; 0 for method exact; null when not reported.",
    )
    elapsed_s: float = Field(
        description="Seconds of computation so far: during training, since training began; in "
        "the later phases, since the estimate's computation began."
    )
    phase: Literal["training", "certifying", "testing", "bracketing", "exact"] = Field(
        "training",
        description="training (step of total_steps), certifying (L and the lower bound), "
        "testing (the permutation test), bracketing (the upper bound and the feature table), "
        "exact (the exact solver and its relabellings).",
    )


class HoldoutResult(BaseModel):
    """The potential's difference on held-out samples: an estimate for the distributions."""

    value: float = Field(
        description="Weighted mean of g = f / L on the held-out source samples minus on the "
        "held-out target samples, in the data's units (scaled ones under a scale): an "
        "estimate of (a lower bound of) W1 between the distributions. The same number as "
        "distance.value."
    )
    ci95: list[float] = Field(
        min_length=2,
        max_length=2,
        description="Normal 95 % confidence interval [lo, hi] of value, from the variances of g "
        "on the two held-out parts.",
    )
    n_source: int = Field(description="Source samples held out of training: round(holdout * n).")
    n_target: int = Field(description="Target samples held out of training: round(holdout * m).")


class ExactResult(BaseModel):
    """The exact empirical W1."""

    value: float = Field(
        description="The exact W1 between the two weighted samples (Euclidean cost), in the "
        "data's units (scaled ones under a scale)."
    )
    solver: str = Field(
        description='"closed_form_1d" (d = 1: sorted quantiles) or "pot.emd2" (network simplex).',
        examples=["pot.emd2"],
    )
    seconds: float = Field(description="Wall-clock seconds the exact solve took.")


class GradNorm(BaseModel):
    """Quantiles of |grad g| (g = f / L, so at most 1) on up to config.grad_samples samples of
    each set; mass well below 1 means under-fitting (an envelope's is 1 everywhere: the slope of
    its active cone)."""

    q05: float = Field(description="5 % quantile of |grad g|.")
    q50: float = Field(description="Median of |grad g|.")
    q95: float = Field(description="95 % quantile of |grad g|.")


class EnvelopeDiagnostics(BaseModel):
    """Which potential was kept: the trained network, or one of its Lipschitz envelopes over
    training samples (lipcore.envelope), as judged on the validation samples."""

    side: Literal["source", "target"] | None = Field(
        None,
        description='"source": the lower envelope max_i (g(x_i) - |x - x_i|) over source '
        'anchors; "target": the upper envelope min_j (g(y_j) + |x - y_j|) over target anchors '
        "(g: the network scaled to L = 1); null: the network itself was kept. An envelope is "
        "exactly 1-Lipschitz (lipschitz_constant 1) and is the potential served.",
    )
    anchors: int = Field(
        description="Training samples the kept envelope is built on (0 when the network was kept)."
    )
    validation: dict[str, float] = Field(
        description="The validation objective of each candidate, in the data's units: "
        '"network", and "source:k" / "target:k" for the envelope over k anchors. The most '
        "conservative candidate within one standard error of the best is kept (the network "
        "first, then the most anchors); the held-out samples take no part in the choice."
    )


class Diagnostics(BaseModel):
    """How well the potential fits (method lipschitz)."""

    grad_norm: GradNorm = Field(
        description="An optimal potential has |grad g| = 1 along transport rays: much mass "
        "below 1 while the sets differ means the network under-fits (see notes)."
    )
    objective: float | None = Field(
        None,
        description="The smoothed training objective when training ended, in the data's units "
        "(scaled ones under a scale; compare with lower_bound); null when not recorded.",
    )
    envelope: EnvelopeDiagnostics | None = Field(
        None,
        description="The network or one of its envelopes: which was kept and why (null when "
        "none was tried: no validation part, or config.envelope_anchors 0).",
    )


class Verdict(BaseModel):
    """Do the two distributions differ? A two-sample test whose level holds in finite samples."""

    differ: bool = Field(description="Whether the test rejects 'same distribution' at alpha.")
    alpha: float = Field(description="The test's level, as asked.")
    p_value: float = Field(description="Permutation p-value, (1 + #{T_perm >= T}) / (1 + B).")
    test: str = Field(
        description="heldout-potential-permutation (the fitted potential on held-out samples) "
        "or exact-w1-permutation (the exact W1 of relabelled samples; method exact)."
    )
    permutations: int = Field(description="B: random relabellings drawn.")
    summary: str = Field(
        description="One sentence for people.",
        examples=["differ (p ≤ 0.000999): distance 0.452, 95 % CI [0.38, 0.524]"],
    )


class Distance(BaseModel):
    """By how much? W1 between the underlying distributions, estimated on held-out samples."""

    value: float = Field(
        description="Held-out estimate (a lower-bound estimate of W1), in the data's units "
        "(scaled ones under a scale)."
    )
    ci95: list[float] = Field(
        min_length=2, max_length=2, description="Normal 95 % confidence interval [lo, hi]."
    )
    kind: Literal["distribution"] = Field(
        "distribution",
        description="Always distribution: W1 between the underlying distributions, not "
        "between these two samples (that is w1, lower_bound, exact).",
    )


class NoiseFloor(BaseModel):
    """The empirical W1 of two samples of one distribution at this size (relabelled samples)."""

    value: float = Field(
        description="Median exact W1 over the relabellings, in the data's units (scaled ones "
        "under a scale)."
    )
    of: Literal["exact"] = Field(
        "exact", description="The statistic relabelled: always exact (the exact empirical W1)."
    )
    permutations: int = Field(
        description="Relabellings solved exactly: 200 beside method exact's test, 5 beside a "
        "cross-check."
    )


class FeatureResult(BaseModel):
    """Where do they differ? One feature (column) of the data."""

    name: str = Field(description="The column's name (x0, x1, ... for unnamed data).")
    index: int = Field(description="The column's position.")
    marginal_w1: float = Field(
        description="Exact 1-D W1 of this feature's two marginals, in the data's units "
        "(scaled ones under a scale)."
    )
    attribution: float | None = Field(
        None,
        description="Share of the potential's squared gradient on this feature (sums to 1); "
        "null for method exact.",
    )
    direction: float | None = Field(
        None,
        description="Mean signed gradient component in [-1, 1]: > 0 means the target lies at "
        "larger values of this feature; null for method exact.",
    )


class EstimateResult(BaseModel):
    """The answer first (verdict, distance, notes), then the figures of these two samples.

    Distances are in the data's units (the scaled units when scale is not none)."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": RESULT_EXAMPLES})

    method: Literal["lipschitz", "exact"] = Field(
        description="What ran: lipschitz (the neural potential: asked as auto or lipschitz) or "
        "exact."
    )
    verdict: Verdict | None = Field(
        None,
        description="Do they differ? Null when no test ran: holdout 0, or method exact with "
        "n * m above exact_test_max_pairs.",
    )
    distance: Distance | None = Field(
        None,
        description="By how much do the distributions differ? Null for method exact and when "
        "holdout is 0.",
    )
    features: list[FeatureResult] = Field(
        default_factory=list,
        description="Where? Per feature, sorted by attribution (by marginal_w1 for exact).",
    )
    notes: list[str] = Field(
        default_factory=list, description="What to know before reading the figures below."
    )
    w1: float = Field(
        description="The empirical figure of these two samples: lower_bound for method "
        "lipschitz, exact.value for method exact."
    )
    lower_bound: float | None = Field(
        None,
        description="Certified lower bound of the empirical W1: (sum a f(x) - sum b f(y)) / L "
        "over all samples. Null for method exact.",
    )
    lipschitz_constant: float | None = Field(
        None,
        description="L: a certified upper bound of the trained network's Lipschitz constant "
        "(from the exact spectral norms of its exported weights). Null for method exact.",
    )
    holdout: HoldoutResult | None = Field(
        None,
        description="The potential's difference on the held-out samples (distance's figures, "
        "with the sample counts). Null for method exact and when holdout is 0.",
    )
    exact: ExactResult | None = Field(
        None,
        description="The exact empirical W1, when the exact solver ran: method exact, or the "
        "cross-check (crosscheck always; auto when d = 1 or n * m <= exact_max_pairs). Null "
        "otherwise.",
    )
    upper_bound: float | None = Field(
        None,
        description="Certified upper bound of the empirical W1: the cost of an explicit "
        "coupling, so that lower_bound <= exact <= upper_bound on every input. Null for "
        "method exact.",
    )
    bracket_width: float | None = Field(
        None,
        description="(upper_bound - lower_bound) / upper_bound: how tight the certified bracket "
        "of the empirical W1 is. Null for method exact.",
    )
    scale: dict[str, Any] | None = Field(
        None,
        description='{"mode", "factors"}: the scaling asked (none, standardize, robust) and the '
        "d per-feature factors the data was divided by (null for none); every distance is in "
        "the scaled units.",
    )
    noise_floor: NoiseFloor | None = Field(
        None,
        description="Beside exact: the same statistic for two samples of one distribution. "
        "Null when no relabelling ran (no exact solve, or n * m above noise_floor_max_pairs "
        "for a cross-check, above exact_test_max_pairs for method exact).",
    )
    relative_gap: float | None = Field(
        None,
        description="(exact - lower_bound) / exact: >= 0 up to rounding. Null without an exact "
        "value (or when it is 0) and for method exact.",
    )
    diagnostics: Diagnostics | None = Field(
        None, description="How well the potential fits. Null for method exact."
    )
    potential_center: float | None = Field(
        None,
        description="c = (sum a f(x) + sum b f(y)) / 2 of the raw potential f over all samples: "
        "/evaluate serves g = (f - c) / L, centred on both sets. Null for method exact.",
    )
    device: str = Field(
        description="Where the potential was trained (cpu, cuda:0, ...); cpu for method exact."
    )
    seconds: float = Field(
        description="Wall-clock seconds of the job's computation (training, certificate, test, "
        "bracket, exact solve, storing the potential); not the time queued or loading data."
    )
    steps: int = Field(
        description="Training steps run (validation stopping may end training before "
        "config.steps). 0 for method exact."
    )
    config: dict[str, Any] | None = Field(
        None,
        description="The estimator config the potential was trained with (lipcore."
        "EstimatorConfig, defaults filled in). Null for method exact.",
    )


class JobError(BaseModel):
    """Why a job failed (a cancelled job has no error)."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": JOB_ERROR_EXAMPLES})

    type: str = Field(
        description="The failure's code in the problem catalogue (a bare code, not a URI): "
        "invalid_request, invalid_config, invalid_input, exact_too_large, "
        "exact_not_converged, diverged, non_finite, out_of_memory, timeout, dataset_missing, "
        "not_found, attempts_exhausted or internal."
    )
    title: str = Field(description="A short summary of the failure's kind.")
    detail: str | None = Field(None, description="What went wrong in this job, and what to change.")


class Estimate(BaseModel):
    """An estimate job and, once it succeeded, its result."""

    model_config = ConfigDict(json_schema_extra={"examples": ESTIMATE_EXAMPLES})

    id: str = Field(
        description="Opaque id, prefixed est_.", examples=["est_d67d5d2f6bdbe90b84799d29"]
    )
    status: Status = Field(
        description="queued (waiting for a worker), running, then succeeded, failed or "
        "cancelled: those three are final."
    )
    source: str = Field(description="Dataset id of the source samples X, as asked.")
    target: str = Field(description="Dataset id of the target samples Y, as asked.")
    method: Method = Field(
        description="The method asked (auto, lipschitz, exact); result.method says which ran."
    )
    crosscheck: Crosscheck = Field(description="The cross-check asked: auto, always or never.")
    holdout: float = Field(description="Fraction of each set held out of training, as asked.")
    alpha: float = Field(description="Level of the two-sample test, as asked.")
    scale: str = Field(
        "none", description="Per-feature scaling, as asked: none, standardize or robust."
    )
    seed: int = Field(description="Seed of the whole job, as asked.")
    config: dict[str, Any] = Field(description="The full EstimatorConfig the job runs with.")
    progress: Progress | None = Field(
        None,
        description="The worker's last report (phase, step, objective); null until the first "
        "one. A finished job keeps its last report.",
    )
    result: EstimateResult | None = Field(
        None, description="The answer, once status is succeeded; null otherwise."
    )
    error: JobError | None = Field(
        None, description="Why the job failed, when status is failed; null otherwise."
    )
    attempt: int = Field(description="How many times a worker took the job.")
    cancel_requested: bool = Field(
        False,
        description="Whether a cancel was asked: a queued job is then cancelled at once, a "
        "running one within a training step or two.",
    )
    created_at: datetime = Field(description="When the job was submitted (UTC).")
    started_at: datetime | None = Field(
        None, description="When a worker last took the job (UTC); null until one did."
    )
    finished_at: datetime | None = Field(
        None, description="When the job reached a final status (UTC); null before."
    )


class EstimateList(Page[Estimate]):
    """One page of estimates, newest first."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "items": [ESTIMATE_EXAMPLES[0]],
                    "total": 2,
                    "limit": 1,
                    "offset": 0,
                    "next_offset": 1,
                }
            ]
        }
    )


class EvaluateRequest(BaseModel):
    """Points at which to evaluate the centred, 1-Lipschitz potential g = (f - c) / L."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": EVALUATE_REQUEST_EXAMPLES}
    )

    points: list[list[float]] = Field(
        min_length=1,
        description="k points (at most max_evaluate_points), each of the datasets' dimension "
        "d, in the data's own units (a scaling asked is folded into the potential).",
    )
    gradient: bool = Field(False, description="Also return the gradients of g.")


class EvaluateResponse(BaseModel):
    """The centred, 1-Lipschitz potential g = (f - c) / L at the points asked, in order."""

    model_config = ConfigDict(json_schema_extra={"examples": EVALUATE_RESPONSE_EXAMPLES})

    values: list[float] = Field(
        description="g at each of the k points, in the units of the distances: high on the "
        "source, centred (its weighted means on the two sets average 0)."
    )
    gradients: list[list[float]] | None = Field(
        None,
        description="With gradient true: the gradient of g with respect to the points, k "
        "vectors of d numbers (of norm at most 1 for scale none; with a scale, component j is "
        "divided by feature j's factor); absent otherwise.",
    )
