"""The embedded executor: a dispatcher thread that runs each job in a spawned child process.

- ``submit`` puts a job id on an in-memory queue (deduplicated); the dispatcher starts up to
  ``concurrency`` children (``settings.concurrency``, else one per GPU, else one), each spawned
  (never forked: CUDA must not be initialised in a forked child) and running
  :func:`service.runner.run_job` (see :mod:`service.executors.children`).
- Job state lives in the store. A child that dies (killed, out of memory) leaves its lease to
  expire; the reaper re-queues the job and hands it back here (attempt + 1).
- ``cancel``: the API has already set the store's flag, which the child sees between training
  steps; a child still alive after ``cancel_grace_s`` is killed and the job written ``cancelled``
  (:mod:`service.executors.kills`).
- ``start`` submits every queued job and starts the reaper, so a restarted service resumes all
  work; ``stop`` terminates the children and expires their leases so the next start re-runs them.
- Warm processes (``settings.warm_processes``): each slot keeps one spawned child started ahead,
  its imports done (:mod:`service.executors.spares`); a job goes to it instead of a cold spawn.

Parts: :class:`RunQueue` (which jobs wait, which child runs which), ``Launcher`` (makes the
children), ``SparePool`` (warm children), ``KillPolicy`` (when a child is killed), the
``Reaper``, and :class:`LocalExecutor`, the dispatcher thread that composes them.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time
import uuid

from service.executors.children import Child, Launcher, resources, terminate
from service.executors.kills import KillPolicy
from service.executors.spares import SparePool
from service.reaper import Reaper
from service.settings import Settings
from service.store import Database, jobs

log = logging.getLogger("lipwass.executor.local")

TICK_S = 0.1  # the dispatcher's polling period when idle


class RunQueue:
    """The dispatcher's in-memory state: job ids waiting for a slot, the child running each
    started job, and ids submitted again while their child ran. Thread-safe."""

    def __init__(self) -> None:
        self._waiting: queue.Queue[str] = queue.Queue()
        self._pending: set[str] = set()  # waiting or running in a child
        self._again: set[str] = set()  # submitted while running: queue again when the child ends
        self._children: dict[str, Child] = {}
        self._lock = threading.Lock()

    def submit(self, job_id: str) -> bool:
        """Queue ``job_id`` unless it is already queued here; if a child still runs it (an
        attempt that lost its lease, say), queue it again once that child has ended. True when
        it was queued now."""
        with self._lock:
            if job_id in self._children:
                self._again.add(job_id)
                return False
            if job_id in self._pending:
                return False
            self._pending.add(job_id)
        self._waiting.put(job_id)
        return True

    def next(self, slots: int) -> tuple[str, int] | None:
        """The next waiting job id and the lowest free slot in ``range(slots)``; None when all
        slots are busy or nothing waits. The caller then calls :meth:`started` or
        :meth:`dropped`."""
        with self._lock:
            free = sorted(set(range(slots)) - {c.slot for c in self._children.values()})
        if not free:
            return None
        try:
            job_id = self._waiting.get_nowait()
        except queue.Empty:
            return None
        return job_id, free[0]

    def dropped(self, job_id: str) -> None:
        """``job_id`` left the queue but gets no child (it has nothing to run)."""
        with self._lock:
            self._pending.discard(job_id)

    def started(self, child: Child) -> None:
        """``child`` runs its job now (and holds its slot)."""
        with self._lock:
            self._children[child.job_id] = child

    def ended(self, child: Child) -> bool:
        """Forget ``child``; True when its job was submitted again while it ran."""
        with self._lock:
            if self._children.get(child.job_id) is child:
                del self._children[child.job_id]
            self._pending.discard(child.job_id)
            again = child.job_id in self._again
            self._again.discard(child.job_id)
        return again

    def get(self, job_id: str) -> Child | None:
        with self._lock:
            return self._children.get(job_id)

    def children(self) -> list[Child]:
        with self._lock:
            return list(self._children.values())

    def clear(self) -> list[Child]:
        """Forget everything; returns the children that were running."""
        with self._lock:
            children = list(self._children.values())
            self._children.clear()
            self._pending.clear()
            self._again.clear()
        while not self._waiting.empty():
            self._waiting.get_nowait()
        return children


class LocalExecutor:
    """The embedded adapter of the executor port (see :mod:`service.executors.base`)."""

    def __init__(self, settings: Settings, db: Database) -> None:
        self.settings = settings
        self.db = db
        self.concurrency = settings.concurrency or 1
        self._runs = RunQueue()
        self._kills = KillPolicy(settings, db)
        self._launcher = Launcher(settings, [], None)
        self._spares: SparePool | None = None  # started with the dispatcher (warm_processes)
        self._reaper = Reaper(settings, db, self.submit)
        self._owner_prefix = f"{socket.gethostname()}:{os.getpid()}"
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the port ------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the dispatcher, re-submit every queued job, start the reaper."""
        if self._thread is not None and self._thread.is_alive():
            return
        self.concurrency, gpus = resources(self.settings)
        threads: int | None = None
        if not gpus and self.concurrency > 1:
            threads = max(1, (os.cpu_count() or 1) // self.concurrency)
        self._launcher = Launcher(self.settings, gpus, threads)
        if self.settings.warm_processes:
            self._spares = SparePool(self.concurrency, self._launcher.spare)
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
        spares, self._spares = self._spares, None
        for ch in self._runs.clear():  # first: a job must not run on while spares wind down
            terminate(ch.process)
            try:
                jobs.expire_lease(self.db, ch.job_id, ch.owner)
            except Exception:
                log.exception("could not expire the lease", extra={"job_id": ch.job_id})
        if spares is not None:
            spares.close()

    def submit(self, job_id: str) -> None:
        """Queue ``job_id`` for a child (see :meth:`RunQueue.submit`)."""
        if self._runs.submit(job_id):
            self._wake.set()

    def cancel(self, job_id: str) -> None:
        """The store flag is set: give the child ``cancel_grace_s`` to stop, then kill it."""
        ch = self._runs.get(job_id)
        if ch is not None:
            self._kills.cancelled(ch, time.monotonic())
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
        return {c.job_id: c.process.pid for c in self._runs.children() if c.process.pid}

    def spares(self) -> dict[int, int]:
        """Slot -> pid of its live warm process (settings.warm_processes)."""
        spares = self._spares
        return {} if spares is None else spares.pids()

    # -- the dispatcher ------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._tick()
            except Exception:
                log.exception("dispatcher tick failed")
            self._wake.wait(TICK_S)
            self._wake.clear()

    def _tick(self) -> None:
        """One pass: reap ended children, kill those due, start waiting jobs, refill spares."""
        now = time.monotonic()
        for ch in self._runs.children():
            if not ch.process.is_alive():
                ch.process.join(timeout=1)
                self._ended(ch)
                if ch.process.exitcode not in (0, None):
                    log.warning(
                        "job process died (exit code %s): its lease will expire and it re-runs",
                        ch.process.exitcode,
                        extra={"job_id": ch.job_id},
                    )
                continue
            if self._kills.due(ch, now):
                self._kills.kill(ch)
                self._ended(ch)
                self._kills.record(ch)
        self._dispatch()
        spares = self._spares
        if spares is not None and not self._stop.is_set():
            spares.fill()

    def _dispatch(self) -> None:
        while not self._stop.is_set():
            nxt = self._runs.next(self.concurrency)
            if nxt is None:
                return
            job_id, slot = nxt
            if not jobs.claimable(self.db, job_id):  # finished, or running under a live lease
                self._runs.dropped(job_id)
                continue
            self._spawn(job_id, slot)

    def _spawn(self, job_id: str, slot: int) -> None:
        owner = f"{self._owner_prefix}:{uuid.uuid4().hex[:8]}"
        job = (job_id, owner)
        warm = self._spares.take(slot, job) if self._spares is not None else None
        proc = warm if warm is not None else self._launcher.job(slot, job)
        child = Child(job_id, proc, owner, slot, time.monotonic())
        self._runs.started(child)
        if warm is not None:
            log.info("job handed to a warm process (pid %s)", proc.pid, extra={"job_id": job_id})
            return
        try:
            proc.start()
        except Exception:
            self._runs.ended(child)  # not submitted again: the reaper re-submits it later
            log.exception("could not start the job process", extra={"job_id": job_id})
            return
        log.info("job process started (pid %s)", proc.pid, extra={"job_id": job_id})

    def _ended(self, ch: Child) -> None:
        """Forget ``ch``; submit its job again if that was asked while it ran."""
        if self._runs.ended(ch) and not self._stop.is_set():
            self.submit(ch.job_id)
