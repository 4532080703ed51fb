"""Quotas per tenant: jobs queued or running, dataset bytes kept, uploads per minute.

A request beyond a quota is 429 with ``Retry-After`` and a problem document that names the
quota (its setting) and the tenant's figure. Jobs and bytes are counted in the database, so
every API replica sees the same figure; the upload rate is counted per API process (with N
replicas behind a balancer a tenant gets up to N times the rate).
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque

from service.problems import ProblemError
from service.settings import Settings
from service.store import Database
from service.store import datasets as dataset_rows
from service.store import estimates as estimate_rows


def _exceeded(quota: str, detail: str, retry_after_s: int) -> ProblemError:
    return ProblemError(
        "quota-exceeded",
        f"{detail} ({quota})",
        headers={"Retry-After": str(retry_after_s)},
        errors=[{"quota": quota}],
    )


def check_active_jobs(db: Database, settings: Settings, tenant: str) -> None:
    """429 when the tenant already has max_active_jobs queued or running."""
    active = estimate_rows.active_count(db, tenant)
    if active >= settings.max_active_jobs:
        raise _exceeded(
            "max_active_jobs",
            f"tenant {tenant!r} has {active} estimates queued or running, the most allowed; "
            "wait for one to finish or cancel one",
            retry_after_s=max(1, settings.estimate_retry_after_s) * 10,
        )


def check_stored_bytes(db: Database, settings: Settings, tenant: str, incoming: int) -> None:
    """429 when the tenant's datasets plus ``incoming`` bytes would pass max_stored_bytes."""
    stored = dataset_rows.stored_bytes(db, tenant)
    if stored + incoming > settings.max_stored_bytes:
        raise _exceeded(
            "max_stored_bytes",
            f"tenant {tenant!r} keeps {stored} bytes of datasets; {incoming} more would pass "
            f"the quota of {settings.max_stored_bytes} bytes; delete datasets first",
            retry_after_s=3600,
        )


class UploadRate:
    """Uploads per tenant in a sliding 60 s window, in this process."""

    WINDOW_S = 60.0

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._times: defaultdict[str, deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()

    def take(self, tenant: str, now: float | None = None) -> None:
        """Count one upload of ``tenant``, or raise 429 when the window is full."""
        now = time.monotonic() if now is None else now
        with self._lock:
            times = self._times[tenant]
            while times and now - times[0] >= self.WINDOW_S:
                times.popleft()
            if len(times) >= self.per_minute:
                wait = int(self.WINDOW_S - (now - times[0])) + 1
                raise _exceeded(
                    "max_uploads_per_minute",
                    f"tenant {tenant!r} uploaded {len(times)} datasets in the last minute, "
                    "the most allowed",
                    retry_after_s=wait,
                )
            times.append(now)
