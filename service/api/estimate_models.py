"""Pydantic models of the estimate resource: the request, the estimate and its result.

The result mirrors the dict service.policy.result builds; modelling it here is what makes OpenAPI
document every number the service returns.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.api.pages import Page

Method = Literal["auto", "lipschitz", "exact"]
Crosscheck = Literal["auto", "always", "never"]
Status = Literal["queued", "running", "succeeded", "failed", "cancelled"]
FINISHED: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
INT64_MAX = 2**63 - 1

DatasetId = Annotated[str, Field(min_length=1, max_length=40, examples=["ds_0123abcd"])]


class EstimateRequest(BaseModel):
    """What to estimate and how. Unknown fields are an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid")

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

    step: int
    total_steps: int
    objective: float | None = None
    elapsed_s: float
    phase: Literal["training", "certifying", "testing", "bracketing", "exact"] = Field(
        "training",
        description="training (step of total_steps), certifying, testing, bracketing, exact.",
    )


class HoldoutResult(BaseModel):
    """The potential's difference on held-out samples: an estimate for the distributions."""

    value: float
    ci95: list[float] = Field(min_length=2, max_length=2, description="95 % interval [lo, hi].")
    n_source: int
    n_target: int


class ExactResult(BaseModel):
    """The exact empirical W1."""

    value: float
    solver: str = Field(description='"closed_form_1d" or "pot.emd2".', examples=["pot.emd2"])
    seconds: float


class GradNorm(BaseModel):
    """Quantiles of |grad f| on the samples; mass well below 1 means under-fitting."""

    q05: float
    q50: float
    q95: float


class Diagnostics(BaseModel):
    grad_norm: GradNorm
    objective: float | None = None


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

    value: float = Field(description="Held-out estimate (a lower-bound estimate of W1).")
    ci95: list[float] = Field(min_length=2, max_length=2, description="95 % interval [lo, hi].")
    kind: Literal["distribution"] = "distribution"


class NoiseFloor(BaseModel):
    """The empirical W1 of two samples of one distribution at this size (relabelled samples)."""

    value: float = Field(description="Median exact W1 over the relabellings, in data units.")
    of: Literal["exact"] = "exact"
    permutations: int


class FeatureResult(BaseModel):
    """Where do they differ? One feature (column) of the data."""

    name: str = Field(description="The column's name (x0, x1, ... for unnamed data).")
    index: int = Field(description="The column's position.")
    marginal_w1: float = Field(description="Exact 1-D W1 of this feature's two marginals.")
    attribution: float | None = Field(
        description="Share of the potential's squared gradient on this feature (sums to 1); "
        "null for method exact."
    )
    direction: float | None = Field(
        description="Mean signed gradient component in [-1, 1]: > 0 means the target lies at "
        "larger values of this feature; null for method exact."
    )


class EstimateResult(BaseModel):
    """The answer first (verdict, distance, notes), then the figures of these two samples."""

    model_config = ConfigDict(extra="allow")

    method: Literal["lipschitz", "exact"]
    verdict: Verdict | None = Field(None, description="Do they differ? (null: no test ran)")
    distance: Distance | None = Field(
        None, description="By how much do the distributions differ? (null for method exact)"
    )
    features: list[FeatureResult] = Field(
        default_factory=list,
        description="Where? Per feature, sorted by attribution (by marginal_w1 for exact).",
    )
    notes: list[str] = Field(
        default_factory=list, description="What to know before reading the figures below."
    )
    w1: float = Field(description="Empirical figure: exact value or certified lower bound.")
    lower_bound: float | None = Field(
        None, description="Certified lower bound of the empirical W1 (all samples)."
    )
    lipschitz_constant: float | None = Field(
        None, description="Certified upper bound of the network's Lipschitz constant."
    )
    holdout: HoldoutResult | None = None
    exact: ExactResult | None = None
    upper_bound: float | None = Field(
        None,
        description="Certified upper bound of the empirical W1: the cost of an explicit "
        "coupling, so that lower_bound <= exact <= upper_bound on every input.",
    )
    bracket_width: float | None = Field(
        None, description="(upper_bound - lower_bound) / upper_bound."
    )
    scale: dict[str, Any] | None = Field(
        None,
        description='{"mode", "factors"}: the per-feature factors the data was divided by.',
    )
    noise_floor: NoiseFloor | None = Field(
        None, description="Beside exact: the same statistic for two samples of one distribution."
    )
    relative_gap: float | None = Field(None, description="(exact - lower_bound) / exact.")
    diagnostics: Diagnostics | None = None
    potential_center: float | None = Field(
        None, description="c such that /evaluate serves g = (f - c) / L, centred on both sets."
    )
    device: str
    seconds: float
    steps: int
    config: dict[str, Any] | None = None


class JobError(BaseModel):
    """Why a job failed or was cancelled."""

    model_config = ConfigDict(extra="allow")

    type: str
    title: str
    detail: str | None = None


class Estimate(BaseModel):
    """An estimate job and, once it succeeded, its result."""

    id: str = Field(examples=["est_5f0c2a9d1b7e4c3a8d6f0e1b"])
    status: Status
    source: str
    target: str
    method: Method
    crosscheck: Crosscheck
    holdout: float
    alpha: float
    scale: str = "none"
    seed: int
    config: dict[str, Any] = Field(description="The full EstimatorConfig the job runs with.")
    progress: Progress | None = None
    result: EstimateResult | None = None
    error: JobError | None = None
    attempt: int = Field(description="How many times a worker took the job.")
    cancel_requested: bool = False
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None


class EstimateList(Page[Estimate]):
    """One page of estimates, newest first."""


class EvaluateRequest(BaseModel):
    """Points at which to evaluate the centred, 1-Lipschitz potential g = (f - c) / L."""

    model_config = ConfigDict(extra="forbid")

    points: list[list[float]] = Field(
        min_length=1, description="k points, each of the datasets' dimension d."
    )
    gradient: bool = Field(False, description="Also return the gradients of g.")


class EvaluateResponse(BaseModel):
    values: list[float]
    gradients: list[list[float]] | None = None
