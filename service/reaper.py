"""The reaper: repairs jobs that lost their worker or their dispatch.

Every ``settings.reaper_interval_s`` it

- re-queues running jobs whose lease expired (their worker died) and hands them to ``submit``;
  jobs out of attempts are failed, cancelled ones whose worker died end ``cancelled``
  (:func:`service.store.jobs.reap`);
- re-submits queued jobs that have waited longer than ``settings.requeue_after_s`` (a lost
  dispatch, a flushed broker, a server restarted between the row and the hand-over).

Claiming is a conditional update, so a duplicate submit is harmless: the second claim gets
nothing. Each queued job is re-submitted at most once per ``requeue_after_s`` by one reaper, so a
long queue behind a busy worker does not flood the broker.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from service.settings import Settings
from service.store import Database, jobs

log = logging.getLogger("lipwass.reaper")


@dataclass
class ReapSummary:
    """What one pass did (for tests and logs)."""

    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    resubmitted: list[str] = field(default_factory=list)


class Reaper:
    """A daemon thread that calls :meth:`reap_once` every ``settings.reaper_interval_s``."""

    def __init__(self, settings: Settings, db: Database, submit: Callable[[str], None]) -> None:
        self.settings = settings
        self.db = db
        self.submit = submit
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._resubmitted_at: dict[str, float] = {}  # job id -> monotonic time of our last submit

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        """Start the background thread (idempotent)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="lipwass-reaper", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread and wait for it (at most ``timeout`` seconds)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _loop(self) -> None:
        while not self._stop.wait(self.settings.reaper_interval_s):
            try:
                self.reap_once()
            except Exception:
                log.exception("reaper pass failed")

    # -- one pass ------------------------------------------------------------------------------
    def reap_once(self) -> ReapSummary:
        """One pass: re-queue expired leases, re-submit stale queued jobs. Returns what it did."""
        report = jobs.reap(self.db, self.settings.max_attempts)
        out = ReapSummary(
            requeued=list(report.requeued),
            failed=list(report.failed),
            cancelled=list(report.cancelled),
        )
        for job_id in report.failed:
            log.warning("job failed: out of attempts", extra={"job_id": job_id})
        for job_id in report.cancelled:
            log.info("cancelled job's worker is gone: ended cancelled", extra={"job_id": job_id})
        now = time.monotonic()
        for job_id in report.requeued:
            log.warning("lease expired: job re-queued", extra={"job_id": job_id})
            self._submit(job_id)
            self._resubmitted_at[job_id] = now

        stale = jobs.queued_ids(self.db, older_than_s=self.settings.requeue_after_s)
        period = self.settings.requeue_after_s
        for job_id in stale:
            last = self._resubmitted_at.get(job_id)
            if last is not None and now - last < period:
                continue
            log.info("queued job waited too long: re-submitted", extra={"job_id": job_id})
            self._submit(job_id)
            self._resubmitted_at[job_id] = now
            out.resubmitted.append(job_id)
        # Forget jobs that are no longer queued-and-stale (bounded memory).
        keep = set(stale) | set(report.requeued)
        self._resubmitted_at = {k: v for k, v in self._resubmitted_at.items() if k in keep}
        return out

    def _submit(self, job_id: str) -> None:
        try:
            self.submit(job_id)
        except Exception:
            log.exception("re-submit failed", extra={"job_id": job_id})
