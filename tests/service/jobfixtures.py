"""Helpers for the job tests: insert datasets and estimate rows directly (no upload routes)."""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np

from service.blobs import BlobStore
from service.settings import Settings
from service.store import Database, DatasetRow, EstimateRow, JobStatus

TINY = {"width": 16, "depth": 2, "steps": 30, "batch_size": 64}


def open_store(settings: Settings) -> tuple[Database, BlobStore]:
    """The migrated database and the blob store the settings point at."""
    settings.ensure_dirs()
    db = Database(settings.resolved_database_url)
    db.migrate()
    return db, BlobStore(settings.data_dir / "blobs")


def add_dataset(
    db: Database,
    blobs: BlobStore,
    samples: np.ndarray,
    weights: np.ndarray | None = None,
    *,
    distinct: bool = True,
) -> str:
    """Store ``samples`` (and normalised weights) and their row; returns the dataset id.

    ``distinct``: a new row even for equal arrays; else content-addressed as the upload route
    is (id and hash from the data: equal arrays must then not be added twice)."""
    samples = np.ascontiguousarray(samples, dtype=np.float64)
    if samples.ndim == 1:
        samples = samples[:, None]
    h = hashlib.sha256(samples.tobytes())
    if weights is not None:
        weights = np.asarray(weights, dtype=np.float64) / np.sum(weights)
        h.update(weights.tobytes())
    if distinct:
        h.update(uuid.uuid4().bytes)
    sha = h.hexdigest()
    blobs.put_dataset(sha, samples, weights)
    ds_id = f"ds_{uuid.uuid4().hex[:16]}" if distinct else f"ds_{sha[:16]}"
    with db.session() as s:
        s.add(
            DatasetRow(
                id=ds_id,
                name=None,
                n=samples.shape[0],
                d=samples.shape[1],
                dtype="float64",
                weighted=weights is not None,
                sha256=sha,
                bytes=samples.nbytes,
            )
        )
    return ds_id


def add_estimate(db: Database, source: str, target: str, **fields: Any) -> str:
    """Insert a queued estimate row; ``fields`` override method/crosscheck/holdout/seed/config."""
    est_id = f"est_{uuid.uuid4().hex[:16]}"
    values: dict[str, Any] = {
        "method": "lipschitz",
        "crosscheck": "never",
        "holdout": 0.2,
        "seed": 0,
        "config": dict(TINY),
    }
    values.update(fields)
    with db.session() as s:
        s.add(
            EstimateRow(
                id=est_id,
                status=JobStatus.queued.value,
                source_id=source,
                target_id=target,
                request_hash=uuid.uuid4().hex,
                **values,
            )
        )
    return est_id


def get_row(db: Database, est_id: str) -> EstimateRow:
    with db.session() as s:
        row = s.get(EstimateRow, est_id)
        assert row is not None
        s.expunge(row)
        return row


def shifted_pair(n: int, d: int, shift: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    y = rng.normal(size=(n, d))
    y[:, 0] += shift
    return x + np.array([shift] + [0.0] * (d - 1)) * 0, y


def steps_lasting(seconds: float, config: dict[str, Any], x: np.ndarray, y: np.ndarray) -> int:
    """How many training steps of ``config`` on (x, y) take about ``seconds`` on this machine
    now, from a short in-process run: for a job that must still be running when a test acts on
    it, whatever this machine's speed."""
    from lipcore import estimate_w1

    seen = []
    probe = {**config, "steps": 200, "patience": 0, "min_steps": 0, "progress_every": 200}
    estimate_w1(x, y, config=probe, device="cpu", callback=seen.append)
    rate = seen[-1].step / max(seen[-1].elapsed_s, 1e-3)  # training steps per second
    return int(min(max(seconds * rate, 40), 1_000_000))


def wait_for(
    cond: Callable[[], Any],
    timeout: float = 60.0,
    what: str = "",
    every: float = 0.1,
    detail: Callable[[], str] | None = None,
) -> Any:
    """Poll ``cond`` every ``every`` seconds until it returns something truthy, and return that;
    an AssertionError naming ``what`` (and ``detail()``, a server's log say) after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(every)
    extra = f"\n{detail()}" if detail is not None else ""
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}{extra}")
