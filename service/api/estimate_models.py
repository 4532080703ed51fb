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
        description="exact: POT / closed form; lipschitz: the neural potential; auto: exact "
        "when n*m is within the exact solver's limit, else lipschitz.",
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
        description="Fraction of each set held out of training for the held-out estimate.",
    )
    seed: int = Field(0, ge=0, le=INT64_MAX, strict=True, description="Seed of the whole job.")
    config: dict[str, Any] = Field(
        default_factory=dict,
        description="Network and training knobs (lipcore.EstimatorConfig); omitted keys take "
        "their defaults.",
        examples=[{"width": 128, "depth": 3, "steps": 2000, "batch_size": 2048}],
    )


class Progress(BaseModel):
    """Where a running job's training stands."""

    step: int
    total_steps: int
    objective: float | None = None
    elapsed_s: float


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


class EstimateResult(BaseModel):
    """The numbers of a finished job (what each guarantees: the README's guarantees table)."""

    model_config = ConfigDict(extra="allow")

    method: Literal["lipschitz", "exact"]
    w1: float = Field(description="The headline: exact value or certified lower bound.")
    lower_bound: float | None = Field(
        None, description="Certified lower bound of the empirical W1 (all samples)."
    )
    lipschitz_constant: float | None = Field(
        None, description="Certified upper bound of the network's Lipschitz constant."
    )
    holdout: HoldoutResult | None = None
    exact: ExactResult | None = None
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
