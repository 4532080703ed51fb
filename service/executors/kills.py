"""When the embedded executor kills a job's process, and what it writes for the job then.

The runner in the child stops by itself on cancel (it sees the store's flag between training
steps) and on ``job_timeout_s``. A child stuck where it cannot look (inside one long call) is
killed: ``cancel_grace_s`` after the cancel, or once it has run ``job_timeout_s`` plus twice the
grace. The job is then written ``cancelled`` or ``failed`` (type ``timeout``), provided the
killed child's attempt is still the current one.
"""

from __future__ import annotations

import logging

from service.executors.children import Child
from service.settings import Settings
from service.store import Database, JobStatus, jobs

log = logging.getLogger("lipwass.executor.local")


class KillPolicy:
    """Deadlines for the executor's children, and the kill that enforces them."""

    def __init__(self, settings: Settings, db: Database) -> None:
        self.settings = settings
        self.db = db

    @property
    def time_limit_s(self) -> float:
        """How long a child may run before it is killed: the runner's own limit, plus grace."""
        return self.settings.job_timeout_s + 2 * self.settings.cancel_grace_s

    def cancelled(self, child: Child, now: float) -> None:
        """The job's cancel flag is set: kill the child ``cancel_grace_s`` from ``now`` (unless
        a kill is already due)."""
        if child.kill_at is None:
            child.kill_at = now + self.settings.cancel_grace_s
            child.kill_reason = "cancel"

    def due(self, child: Child, now: float) -> bool:
        """Whether ``child`` is to be killed at ``now`` (a child past the time limit is due)."""
        if child.kill_at is None and now - child.started > self.time_limit_s:
            child.kill_at, child.kill_reason = now, "timeout"
        return child.kill_at is not None and now >= child.kill_at

    def kill(self, child: Child) -> None:
        """SIGKILL the child's process and reap it."""
        proc = child.process
        if proc.is_alive():
            proc.kill()
            proc.join(5)

    def record(self, child: Child) -> None:
        """Write the killed child's outcome, unless its attempt already ended (the child or the
        reaper wrote it) or moved on to another worker."""
        claim = jobs.held_by(self.db, child.job_id, child.owner)
        if claim is None:
            return
        if child.kill_reason == "cancel":
            ok = jobs.finish(self.db, claim, JobStatus.cancelled)
            log.info("job process killed after cancel", extra={"job_id": child.job_id})
        else:
            error = {
                "type": "timeout",
                "title": "The job ran too long",
                "detail": f"the job exceeded the time limit of {self.settings.job_timeout_s:g} s"
                " (job_timeout_s); its process was killed",
            }
            ok = jobs.finish(self.db, claim, JobStatus.failed, error=error)
            log.warning("job process killed after time-out", extra={"job_id": child.job_id})
        if not ok:
            log.warning("outcome not recorded: attempt moved on", extra={"job_id": child.job_id})
