"""The embedded executor: a dispatcher thread that runs each job in a spawned child process.

- ``submit`` puts a job id on an in-memory queue (deduplicated); the dispatcher starts up to
  ``concurrency`` children (``settings.concurrency``, else one per GPU, else one), each created
  with ``multiprocessing.get_context("spawn")`` (never fork: CUDA must not be initialised in a
  forked child) and running :func:`service.runner.run_job`.
- Job state lives in the store. A child that dies (killed, out of memory) leaves its lease to
  expire; the reaper re-queues the job and hands it back here (attempt + 1).
- ``cancel``: the API has already set the store's flag, which the child sees between training
  steps; a child still alive after ``cancel_grace_s`` is killed and the job written ``cancelled``.
- ``start`` submits every queued job and starts the reaper, so a restarted service resumes all
  work; ``stop`` terminates the children and expires their leases so the next start re-runs them.
- Warm processes (``settings.warm_processes``): each slot keeps one spawned child started ahead,
  its imports (torch: seconds) done, waiting on a pipe; a job goes to it instead of a cold spawn,
  and a new one is started behind it. Still one job per process, so a kill ends one job only.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from sqlalchemy import select, update

from service.reaper import Reaper
from service.settings import Settings
from service.store import Database, EstimateRow, JobStatus, jobs
from service.store.models import utcnow

log = logging.getLogger("lipwass.executor.local")

TICK_S = 0.1  # the dispatcher's polling period when idle
SPARE_RETRY_S = 5.0  # a warm process that died waiting is replaced after this long (no spawn loop)


def _child_main(
    job: tuple[str, str] | None,
    settings_data: dict[str, Any],
    cuda: str | None,
    threads: int | None = None,
    conn: Connection | None = None,
) -> None:
    """The spawned child's entry point: rebuild the settings and run one attempt of one job.

    ``job`` is (job id, lease owner); None makes a warm spare, which pays the job's start costs
    first (:func:`service.runner.preload`: imports, first calls) and then waits on ``conn`` for
    its job, or for None or the parent's end (EOF: exit). ``cuda`` pins the child to one GPU;
    ``threads`` bounds its CPU threads when several CPU jobs share the machine (set before torch
    is imported; a user's OMP_NUM_THREADS wins).
    """
    if cuda is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = cuda
    if threads is not None and "OMP_NUM_THREADS" not in os.environ:
        os.environ["OMP_NUM_THREADS"] = str(threads)
    from service.logs import setup_logging
    from service.runner import preload, run_job

    settings = Settings(_env_file=None, **settings_data)
    setup_logging(settings.log_level)
    if job is None and conn is not None:
        preload()
        try:
            job = conn.recv()
        except (EOFError, OSError):  # the executor stopped or died: nothing to run
            return
        finally:
            conn.close()
    if job is not None:
        run_job(job[0], settings, job[1])


@dataclass
class _Spare:
    """A warm child waiting for its job: torch already imported, pinned to its slot's GPU."""

    process: Any  # multiprocessing.context.SpawnProcess
    conn: Connection  # the executor's end of the pipe the job goes through


@dataclass
class _Child:
    job_id: str
    process: Any  # multiprocessing.context.SpawnProcess
    owner: str
    slot: int
    started: float
    kill_at: float | None = None
    kill_reason: str | None = None  # "cancel" or "timeout"


class LocalExecutor:
    """The embedded adapter of the executor port (see :mod:`service.executors.base`)."""

    def __init__(self, settings: Settings, db: Database) -> None:
        self.settings = settings
        self.db = db
        self._ctx = multiprocessing.get_context("spawn")
        self._queue: queue.Queue[str] = queue.Queue()
        self._pending: set[str] = set()  # on the queue or running in a child
        self._again: set[str] = set()  # submitted while running: queue again when the child ends
        self._children: dict[str, _Child] = {}
        self._spares: dict[int, _Spare] = {}  # slot -> its warm child (settings.warm_processes)
        self._spare_after: dict[int, float] = {}  # slot -> when a dead spare may be replaced
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._reaper = Reaper(settings, db, self.submit)
        self._owner_prefix = f"{socket.gethostname()}:{os.getpid()}"
        self.concurrency = settings.concurrency or 1
        self._gpus: list[str] = []
        self._threads: int | None = None  # CPU threads per child when CPU jobs run side by side

    # -- the port ------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the dispatcher, re-submit every queued job, start the reaper."""
        if self._thread is not None and self._thread.is_alive():
            return
        self.concurrency, self._gpus = self._resources()
        if not self._gpus and self.concurrency > 1:
            self._threads = max(1, (os.cpu_count() or 1) // self.concurrency)
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._loop, name="lipwass-local-dispatcher", daemon=True
        )
        self._thread.start()
        try:
            self._reaper.reap_once()  # expired leases of a previous run: re-queue them now
            for job_id in jobs.queued_ids(self.db):
                self.submit(job_id)
        except Exception:
            log.exception("resuming queued jobs failed")
        self._reaper.start()
        log.info("local executor started (concurrency %d)", self.concurrency)

    def stop(self) -> None:
        """Stop dispatching, terminate the children, expire their leases (re-run on restart)."""
        self._stop.set()
        self._wake.set()
        self._reaper.stop()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        with self._lock:
            children = list(self._children.values())
            self._children.clear()
            self._pending.clear()
            self._again.clear()
            spares = list(self._spares.values())
            self._spares.clear()
        for spare in spares:
            spare.conn.close()  # EOF: the spare exits by itself
        for ch in children:
            self._terminate(ch.process)
            self._expire_lease(ch)
        for spare in spares:
            self._terminate(spare.process)
        while not self._queue.empty():
            self._queue.get_nowait()

    def submit(self, job_id: str) -> None:
        """Queue ``job_id`` unless it is already queued here; if a child of ours still runs it
        (an attempt that lost its lease, say), queue it again once that child has ended."""
        with self._lock:
            if job_id in self._children:
                self._again.add(job_id)
                return
            if job_id in self._pending:
                return
            self._pending.add(job_id)
        self._queue.put(job_id)
        self._wake.set()

    def cancel(self, job_id: str) -> None:
        """The store flag is set: give the child ``cancel_grace_s`` to stop, then kill it."""
        with self._lock:
            ch = self._children.get(job_id)
            if ch is not None and ch.kill_at is None:
                ch.kill_at = time.monotonic() + self.settings.cancel_grace_s
                ch.kill_reason = "cancel"
        self._wake.set()

    def check(self) -> None:
        """Raise if the dispatcher (or the reaper) is not running."""
        if self._thread is None or not self._thread.is_alive():
            raise RuntimeError("the local dispatcher thread is not running")
        if not self._reaper.alive:
            raise RuntimeError("the reaper thread is not running")

    # -- introspection (tests, metrics) --------------------------------------------------------
    def running(self) -> dict[str, int]:
        """Job id -> pid of the child running it."""
        with self._lock:
            return {k: c.process.pid for k, c in self._children.items() if c.process.pid}

    def spares(self) -> dict[int, int]:
        """Slot -> pid of its live warm process (settings.warm_processes)."""
        with self._lock:
            spares = dict(self._spares)
        return {k: sp.process.pid for k, sp in spares.items() if sp.process.is_alive()}

    # -- the dispatcher ------------------------------------------------------------------------
    def _resources(self) -> tuple[int, list[str]]:
        """(concurrency, GPU ids for the children); torch.cuda.device_count() does not init CUDA."""
        try:
            import torch

            count = torch.cuda.device_count()
        except Exception:  # noqa: BLE001 - no usable torch/CUDA: CPU
            count = 0
        gpus: list[str] = []
        if count > 1 and not self.settings.device:
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            ids = [v.strip() for v in visible.split(",") if v.strip()] if visible else []
            gpus = ids[:count] if len(ids) >= count else [str(i) for i in range(count)]
        return self.settings.concurrency or (count or 1), gpus

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._tick()
            except Exception:
                log.exception("dispatcher tick failed")
            self._wake.wait(TICK_S)
            self._wake.clear()

    def _tick(self) -> None:
        now = time.monotonic()
        with self._lock:
            children = list(self._children.values())
        for ch in children:
            if not ch.process.is_alive():
                ch.process.join(timeout=1)
                self._forget(ch)
                if ch.process.exitcode not in (0, None):
                    log.warning(
                        "job process died (exit code %s): its lease will expire and it re-runs",
                        ch.process.exitcode,
                        extra={"job_id": ch.job_id},
                    )
                continue
            limit = self.settings.job_timeout_s + 2 * self.settings.cancel_grace_s
            if ch.kill_at is None and now - ch.started > limit:
                ch.kill_at, ch.kill_reason = now, "timeout"
            if ch.kill_at is not None and now >= ch.kill_at:
                self._kill_and_end(ch)
        self._dispatch()
        self._keep_spares()

    def _dispatch(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                if len(self._children) >= self.concurrency:
                    return
                free = sorted(
                    set(range(self.concurrency)) - {c.slot for c in self._children.values()}
                )
            try:
                job_id = self._queue.get_nowait()
            except queue.Empty:
                return
            if not self._claimable(job_id):
                with self._lock:
                    self._pending.discard(job_id)
                continue
            self._spawn(job_id, free[0])

    def _claimable(self, job_id: str) -> bool:
        """Skip a spawn for jobs that are finished, or running under a live lease."""
        with self.db.session() as s:
            r = s.execute(
                select(EstimateRow.status, EstimateRow.lease_expires_at).where(
                    EstimateRow.id == job_id
                )
            ).first()
        if r is None:
            return False
        status, lease = r
        if status == JobStatus.queued.value:
            return True
        return status == JobStatus.running.value and (lease is None or lease < utcnow())

    def _process(self, slot: int, job: tuple[str, str] | None, conn: Connection | None) -> Any:
        """A new (not started) spawned child for ``slot``: running ``job``, or a spare on
        ``conn``."""
        cuda = self._gpus[slot % len(self._gpus)] if self._gpus else None
        data = self.settings.model_dump()  # pickled to the child (Paths, secrets intact)
        return self._ctx.Process(
            target=_child_main,
            args=(job, data, cuda, self._threads, conn),
            name=f"lipwass-job-{job[0]}" if job else f"lipwass-spare-{slot}",
            daemon=True,
        )

    def _keep_spares(self) -> None:
        """Start a warm spare for every slot that has none (settings.warm_processes), so that
        the slot's next job starts without the child's seconds of imports."""
        if not self.settings.warm_processes or self._stop.is_set():
            return
        now = time.monotonic()
        for slot in range(self.concurrency):
            with self._lock:
                spare = self._spares.get(slot)
            if spare is not None and spare.process.is_alive():
                continue
            if spare is not None:  # died while waiting (killed, a broken import): replace it later
                with self._lock:
                    self._spares.pop(slot, None)
                spare.conn.close()
                spare.process.join(timeout=1)
                log.warning(
                    "warm job process died while waiting (exit code %s); replaced in %g s",
                    spare.process.exitcode,
                    SPARE_RETRY_S,
                )
                self._spare_after[slot] = now + SPARE_RETRY_S
            if now < self._spare_after.get(slot, 0.0):
                continue
            ours, theirs = self._ctx.Pipe()
            proc = self._process(slot, None, theirs)
            try:
                proc.start()
            except Exception:
                log.exception("could not start a warm job process")
                ours.close()
                return
            finally:
                theirs.close()  # the child holds its own copy
            with self._lock:
                self._spares[slot] = _Spare(proc, ours)

    def _take_spare(self, slot: int, job: tuple[str, str]) -> Any | None:
        """The slot's warm spare, handed ``job``; None when there is no live one."""
        with self._lock:
            spare = self._spares.pop(slot, None)
        if spare is None:
            return None
        try:
            if not spare.process.is_alive():
                raise OSError("the spare exited")
            spare.conn.send(job)
        except OSError:  # dead or broken: start the job cold instead
            self._terminate(spare.process, wait_s=1.0)
            return None
        finally:
            spare.conn.close()
        return spare.process

    def _spawn(self, job_id: str, slot: int) -> None:
        owner = f"{self._owner_prefix}:{uuid.uuid4().hex[:8]}"
        job = (job_id, owner)
        warm = self._take_spare(slot, job)
        proc = warm if warm is not None else self._process(slot, job, None)
        ch = _Child(job_id, proc, owner, slot, time.monotonic())
        with self._lock:
            self._children[job_id] = ch
        if warm is not None:
            log.info("job handed to a warm process (pid %s)", proc.pid, extra={"job_id": job_id})
            return
        try:
            proc.start()
        except Exception:
            with self._lock:
                self._children.pop(job_id, None)
                self._pending.discard(job_id)
            log.exception("could not start the job process", extra={"job_id": job_id})
            return
        log.info("job process started (pid %s)", proc.pid, extra={"job_id": job_id})

    def _forget(self, ch: _Child) -> None:
        with self._lock:
            if self._children.get(ch.job_id) is ch:
                del self._children[ch.job_id]
            self._pending.discard(ch.job_id)
            again = ch.job_id in self._again
            self._again.discard(ch.job_id)
        if again and not self._stop.is_set():
            self.submit(ch.job_id)

    def _terminate(self, proc: Any, wait_s: float = 5.0) -> None:
        if proc.is_alive():
            proc.terminate()
            proc.join(wait_s)
        if proc.is_alive():
            proc.kill()
            proc.join(wait_s)

    def _kill_and_end(self, ch: _Child) -> None:
        """Kill a child that ignored cancel (or ran past the time-out) and write the outcome."""
        proc = ch.process
        if proc.is_alive():
            proc.kill()
            proc.join(5)
        self._forget(ch)
        with self.db.session() as s:
            r = s.execute(
                select(EstimateRow.attempt, EstimateRow.lease_owner, EstimateRow.status).where(
                    EstimateRow.id == ch.job_id
                )
            ).first()
        if r is None or r.status != JobStatus.running.value or r.lease_owner != ch.owner:
            return  # the child (or the reaper) already ended it
        claim = jobs.Claim(ch.job_id, r.attempt, ch.owner)
        if ch.kill_reason == "cancel":
            ok = jobs.finish(self.db, claim, JobStatus.cancelled)
            log.info("job process killed after cancel", extra={"job_id": ch.job_id})
        else:
            error = {
                "type": "timeout",
                "title": "The job ran too long",
                "detail": f"the job exceeded the time limit of {self.settings.job_timeout_s:g} s"
                " (job_timeout_s); its process was killed",
            }
            ok = jobs.finish(self.db, claim, JobStatus.failed, error=error)
            log.warning("job process killed after time-out", extra={"job_id": ch.job_id})
        if not ok:
            log.warning("outcome not recorded: attempt moved on", extra={"job_id": ch.job_id})

    def _expire_lease(self, ch: _Child) -> None:
        """A child stopped with the server: make its job re-queueable at once (by the reaper)."""
        try:
            with self.db.session() as s:
                s.execute(
                    update(EstimateRow)
                    .where(
                        EstimateRow.id == ch.job_id,
                        EstimateRow.status == JobStatus.running.value,
                        EstimateRow.lease_owner == ch.owner,
                    )
                    .values(lease_expires_at=utcnow())
                    .execution_options(synchronize_session=False)
                )
        except Exception:
            log.exception("could not expire the lease", extra={"job_id": ch.job_id})
