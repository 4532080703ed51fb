"""The one settings object of the service, read from ``LIPWASS_*`` environment variables."""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob and limit of the service. One instance is built per process and passed down."""

    model_config = SettingsConfigDict(env_prefix="LIPWASS_", env_file=".env", extra="ignore")

    # Where things live.
    data_dir: Path = Field(
        Path("lipwass-data"), description="Blobs, potentials and the SQLite file."
    )
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; default: SQLite in data_dir (embedded mode)."
    )
    broker_url: str | None = Field(
        None, description="Unset: the embedded dispatcher. redis://...: Dramatiq workers."
    )
    migrate_on_start: bool = Field(
        True, description="Run Alembic migrations when a process starts."
    )

    # Upload limits.
    max_body_bytes: int = Field(2 * 1024**3, ge=1, description="Largest upload body (bytes).")
    max_n: int = Field(20_000_000, ge=1, description="Most samples in one dataset.")
    max_d: int = Field(4096, ge=1, description="Most dimensions in one dataset.")
    max_json_bytes: int = Field(64 * 1024**2, ge=1, description="Largest JSON or CSV upload.")
    max_request_bytes: int = Field(
        1024**2,
        ge=1,
        description="Largest body of any other request (JSON); GET, HEAD, DELETE take none.",
    )

    # Connections (service/guard.py; `lipwass serve`).
    header_timeout_s: float = Field(
        10.0, gt=0, description="A request's line and headers must arrive within this."
    )
    body_timeout_s: float = Field(
        30.0, gt=0, description="A request body may pause this long between bytes; else 408."
    )
    max_connections: int = Field(
        1000, ge=1, description="Open connections of one server process; one more gets 503."
    )
    max_client_connections: int = Field(
        100, ge=1, description="Open connections from one client address; one more gets 503."
    )
    max_concurrent_uploads: int = Field(
        16, ge=1, description="Uploads received at once by one process; one more gets 503."
    )

    # Job limits.
    max_steps: int = Field(
        50_000, ge=1, description="Most training steps one estimate may ask for."
    )
    max_width: int = Field(2048, ge=1)
    max_depth: int = Field(16, ge=1)
    max_batch_size: int = Field(1 << 20, ge=1)
    job_timeout_s: float = Field(3600.0, gt=0, description="A job running longer is failed.")
    exact_max_pairs: int = Field(
        25_000_000, ge=1, description="n*m up to which the exact solver runs (auto, cross-check)."
    )
    exact_test_max_pairs: int = Field(
        250_000, ge=0, description="n*m up to which method exact is tested by relabelling."
    )
    noise_floor_max_pairs: int = Field(
        1_000_000, ge=0, description="n*m up to which a cross-check gets its noise floor."
    )
    max_evaluate_points: int = Field(100_000, ge=1, description="Most points per /evaluate call.")

    # Job engine.
    concurrency: int | None = Field(
        None, ge=1, description="Jobs at once in embedded mode; default one per GPU, else one."
    )
    lease_s: float = Field(30.0, gt=0, description="A running job's lease; heartbeats renew it.")
    heartbeat_s: float = Field(5.0, gt=0)
    max_attempts: int = Field(3, ge=1, description="Runs of one job before it is failed.")
    reaper_interval_s: float = Field(5.0, gt=0)
    progress_interval_s: float = Field(1.0, ge=0, description="Throttle of persisted progress.")
    device: str | None = Field(None, description="torch device for jobs; default cuda if any.")

    # Job runner, reaper and local executor (service/runner.py, reaper.py, executors/local.py).
    cancel_grace_s: float = Field(
        10.0, gt=0, description="A cancelled job still running after this long is killed/ended."
    )
    warm_processes: bool = Field(
        True,
        description="Embedded mode: keep one job process per slot started ahead, torch imported,"
        " so that a job starts without seconds of imports (costs one idle process per slot).",
    )
    requeue_after_s: float = Field(
        60.0, gt=0, description="Queued jobs older than this are re-submitted by the reaper."
    )

    # Operations and the report picture (service/api/ops.py, metrics.py, report.py).
    readyz_timeout_s: float = Field(
        5.0, gt=0, description="/readyz answers 503 when a check takes longer than this."
    )
    report_max_points: int = Field(
        20_000, ge=10, description="Samples per set (seeded subsample) the report.png evaluates."
    )
    report_grid: int = Field(
        160, ge=10, le=1000, description="Heat-map resolution (per axis) of report.png for d = 2."
    )

    # Distributed deployment: Dramatiq on Redis (service/executors/dramatiq.py, worker.py).
    broker_namespace: str = Field(
        "lipwass", min_length=1, description="Prefix of every Redis key the broker writes."
    )
    broker_queue: str = Field(
        "lipwass-jobs",
        pattern=r"^[a-zA-Z_][a-zA-Z0-9._-]*$",
        description="Dramatiq queue that carries the 'run job <id>' messages.",
    )
    broker_heartbeat_timeout_s: float = Field(
        15.0, gt=0, description="A worker silent this long is dead; its messages are re-queued."
    )
    broker_dead_message_ttl_s: float = Field(
        86400.0, gt=0, description="How long failed messages stay in Redis's dead-letter queue."
    )
    worker_shutdown_grace_s: float = Field(
        25.0, ge=0, description="On SIGTERM, wait this long for the running job before exiting."
    )
    worker_health_file: Path | None = Field(
        None, description="Touched while the worker is healthy (`lipwass worker --check`)."
    )
    worker_poll_s: float = Field(
        0.1, gt=0, le=10, description="Longest pause of a worker between polls of its queue."
    )

    # Estimate routes (service/api/estimates.py).
    events_poll_s: float = Field(
        0.25, gt=0, description="How often the one poller of /events streams reads their jobs."
    )
    estimate_retry_after_s: int = Field(
        1, ge=1, description="Retry-After (seconds) on a queued or running estimate."
    )
    potential_cache_size: int = Field(
        8, ge=1, description="Loaded potentials kept in memory for /evaluate (LRU)."
    )
    max_ortho_iters: int = Field(
        50, ge=1, description="Most Björck iterations (config ortho_iters, reproject_iters)."
    )
    max_eval_chunk: int = Field(
        1 << 20, ge=1, description="Largest config eval_chunk and grad_samples (memory bound)."
    )
    max_envelope_anchors: int = Field(
        16384,
        ge=0,
        description="Largest config envelope_anchors (the envelopes' cost grows with anchors x n).",
    )

    # Dataset uploads and listing (service/ingest/, service/api/datasets.py).
    max_npy_header_bytes: int = Field(
        10_000, ge=64, le=1_000_000, description="Longest .npy header accepted (bytes)."
    )
    max_dataset_name_chars: int = Field(
        200, ge=1, le=200, description="Longest ?name= of a dataset (the column holds 200)."
    )
    max_page_size: int = Field(
        1000, ge=1, le=100_000, description="Most items one list page may ask for."
    )
    blob_tmp_max_age_s: float = Field(
        6 * 3600.0,
        gt=0,
        description=(
            "Distributed mode: other hosts' temporary blob files older than this are swept at "
            "start (this host's go once their process is gone; embedded: all but running ones)."
        ),
    )

    # Access (service/auth.py) and quotas per tenant (service/quotas.py).
    api_keys: str | None = Field(
        None,
        description="Keys given here, besides those of `lipwass keys create`: comma-separated "
        "tenant:scopes:secret entries (scopes joined by +, the secret >= 32 characters).",
    )
    auth_cache_s: float = Field(
        5.0, ge=0, description="How long a key look-up is cached (a revocation's delay)."
    )
    metrics_public: bool = Field(
        False, description="/metrics without a key even when keys exist (else: admin scope)."
    )
    max_active_jobs: int = Field(
        20, ge=1, description="Queued + running estimates of one tenant; one more gets 429."
    )
    max_stored_bytes: int = Field(
        100 * 1024**3, ge=1, description="Dataset bytes one tenant may keep; beyond: 429."
    )
    max_uploads_per_minute: int = Field(
        600, ge=1, description="Uploads of one tenant in any 60 s; one more gets 429."
    )
    max_job_memory_bytes: int | None = Field(
        None,
        ge=1,
        description="A job whose estimated memory exceeds this is refused (422), and a job "
        "process that grows past it is stopped; default: half of this machine's memory.",
    )

    log_level: str = "INFO"

    @cached_property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'lipwass.db').resolve()}"

    @property
    def job_memory_limit(self) -> int:
        """max_job_memory_bytes, or half of the physical memory."""
        if self.max_job_memory_bytes is not None:
            return self.max_job_memory_bytes
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2

    @property
    def is_embedded(self) -> bool:
        return not self.broker_url

    def ensure_dirs(self) -> None:
        os.makedirs(self.data_dir, exist_ok=True)
