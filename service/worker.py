"""`lipwass worker`: one Dramatiq worker, one process, one thread, one GPU.

The worker consumes "run job <id>" messages from Redis (see :mod:`service.executors.dramatiq`)
and runs each with :func:`service.runner.run_job`, the same runner as the embedded mode. Design:

- One process and one thread, started by whoever starts the process (no fork ever: CUDA cannot
  be used in a child forked after the parent initialised it). Run one worker per GPU and bind it
  with ``CUDA_VISIBLE_DEVICES`` (``--gpu N`` sets it, before torch is imported).
- Prefetch of one message: a worker holds only the job it runs, so idle workers get the rest.
- A heartbeat thread keeps the broker's liveness record fresh while the one thread is busy,
  touches a health file (``--check`` reads it: the container's HEALTHCHECK) and watches for a
  job stuck in code that cannot be interrupted after the store ended it (cancel or time-out):
  then the process exits (code 75) and the container's restart policy brings a fresh one.
- SIGTERM: stop taking messages, give the running job ``worker_shutdown_grace_s`` to finish,
  then exit; a job still running is picked up elsewhere once its lease expires.

:class:`Worker` is the consumer and its heartbeat thread (start, stop, beat); :func:`main` builds
one and :func:`_serve` runs it, the one place where the process's end is decided.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from service.logs import setup_logging
from service.settings import Settings

if TYPE_CHECKING:
    import dramatiq
    from dramatiq.brokers.redis import RedisBroker

    from service.blobs import BlobStore
    from service.store import Database

log = logging.getLogger("lipwass.worker")

EXIT_STUCK = 75  # EX_TEMPFAIL: a job was stuck past its end; restart the process


def health_file(settings: Settings) -> Path:
    """Where the worker records that it is alive (per container: a local path)."""
    return settings.worker_health_file or Path(tempfile.gettempdir()) / "lipwass-worker.health"


def beat_interval(settings: Settings) -> float:
    """Seconds between broker heartbeats: a third of the time after which a worker is dead."""
    return max(0.2, min(5.0, settings.broker_heartbeat_timeout_s / 3))


def check(settings: Settings) -> int:
    """Health check: 0 if the worker's heartbeat thread touched the health file recently."""
    path = health_file(settings)
    limit = max(3 * beat_interval(settings), 10.0)
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        print(f"unhealthy: {path} does not exist (worker not started?)", file=sys.stderr)
        return 1
    if age > limit:
        print(f"unhealthy: last heartbeat {age:.0f} s ago (limit {limit:.0f} s)", file=sys.stderr)
        return 1
    print(f"healthy: last heartbeat {age:.1f} s ago")
    return 0


def bind_gpu(gpu: str) -> None:
    """Restrict this process to GPU ``gpu`` (an index or UUID); must run before torch's import."""
    if "torch" in sys.modules and os.environ.get("CUDA_VISIBLE_DEVICES") != gpu:
        raise RuntimeError("--gpu must be applied before torch is imported")
    os.environ["CUDA_VISIBLE_DEVICES"] = gpu


class _Current:
    """The job the worker thread runs now (for logs and the stuck-job watchdog)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.job_id: str | None = None
        self.owner: str | None = None
        self.gone_since: float | None = None  # when the store first said the run is not ours

    def set(self, job_id: str | None, owner: str | None) -> None:
        with self.lock:
            self.job_id, self.owner, self.gone_since = job_id, owner, None

    def stuck(self, job_id: str, ours: bool, now: float, after_s: float) -> bool:
        """Note what the store says of ``job_id``; True once it has not been this run's for
        longer than ``after_s`` while the worker thread still computes it."""
        with self.lock:
            if self.job_id != job_id:
                return False
            if ours:
                self.gone_since = None
                return False
            if self.gone_since is None:
                self.gone_since = now
            return now - self.gone_since > after_s


def _route_dramatiq_logs() -> None:
    """Dramatiq's own warnings (failed messages, connection errors) as our JSON lines."""
    ours = logging.getLogger("lipwass").handlers
    dq = logging.getLogger("dramatiq")
    dq.setLevel(logging.WARNING)
    dq.handlers = list(ours)
    dq.propagate = False


@dataclass
class BeatSummary:
    """What one beat found (for tests and logs)."""

    broker_ok: bool
    job_id: str | None = None  # the job the worker thread computes, if any
    stuck: bool = False  # that job ended in the store long ago but its computation goes on


class Worker:
    """A Dramatiq consumer with one thread that runs jobs, and a daemon thread that calls
    :meth:`beat` every :func:`beat_interval` (the broker's liveness record, the health file, the
    stuck-job watch). ``on_stuck(job_id)`` is called from that thread when the watch fires; the
    process's owner decides what to do (:func:`main`: exit, code 75)."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        blobs: BlobStore,
        broker: RedisBroker,
        on_stuck: Callable[[str], None],
    ) -> None:
        from service.executors.dramatiq import declare_actor

        self.settings = settings
        self.db = db
        self.blobs = blobs
        self.broker = broker
        self.on_stuck = on_stuck
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}"
        self.health_file = health_file(settings)
        self.interval = beat_interval(settings)
        self.stuck_after_s = settings.cancel_grace_s + 2 * settings.heartbeat_s
        self._runs = itertools.count(1)
        self._current = _Current()
        self._broker_failing = False  # log a broker outage once, not once per beat
        self._consumer: dramatiq.Worker | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        declare_actor(broker, settings, self.run)

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        """Check the broker (raises if Redis is unreachable: nothing is started then), touch the
        health file, start the heartbeat thread and the consumer (idempotent)."""
        if self._thread is not None and self._thread.is_alive():
            return
        import dramatiq
        import torch

        from service.executors.dramatiq import broker_heartbeat

        broker_heartbeat(self.broker, self.settings.broker_queue)  # fail fast
        self._touch()
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._loop, name="lipwass-broker-heartbeat", daemon=True
        )
        self._thread.start()
        # worker_timeout caps the consumer's back-off between polls (Dramatiq: 1 s, and it backs
        # off while the one thread is busy, so a job ending waits up to that long for the next).
        self._consumer = dramatiq.Worker(
            self.broker,
            queues={self.settings.broker_queue},
            worker_threads=1,
            worker_timeout=max(1, int(self.settings.worker_poll_s * 1000)),
        )
        self._consumer.queue_prefetch = 1  # hold only the running job (set before start)
        self._consumer.start()
        log.info(
            "worker %s ready: queue %s, CUDA_VISIBLE_DEVICES=%s, cuda=%s, device=%s",
            self.worker_id,
            self.settings.broker_queue,
            os.environ.get("CUDA_VISIBLE_DEVICES", "<all>"),
            torch.cuda.is_available(),
            self.settings.device or ("cuda" if torch.cuda.is_available() else "cpu"),
        )

    def stop(self) -> str | None:
        """Take no new message, give the running job ``worker_shutdown_grace_s`` to finish, stop
        the heartbeat thread and remove the health file. Returns the id of a job still running
        (its thread is inside the computation, and its lease is no longer renewed), else None."""
        if self._consumer is not None:
            self._consumer.stop(timeout=int(self.settings.worker_shutdown_grace_s * 1000))
            self._consumer = None
        with self._current.lock:
            left = self._current.job_id
        if left is not None:
            log.warning(
                "exiting with a job still running: its lease will expire", extra={"job_id": left}
            )
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.interval + 5.0)
            self._thread = None
        self.health_file.unlink(missing_ok=True)
        return left

    def close(self) -> None:
        """Release the broker's and the store's connections (after a stop that left no job)."""
        self.broker.client.connection_pool.disconnect()
        self.db.dispose()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                out = self.beat()
            except Exception:
                log.exception("heartbeat failed")
                continue
            if out.stuck and out.job_id is not None:
                log.error(
                    "job ended in the store but its computation is stuck: exiting",
                    extra={"job_id": out.job_id},
                )
                self.on_stuck(out.job_id)

    # -- one beat and one job ------------------------------------------------------------------
    def beat(self) -> BeatSummary:
        """One heartbeat: the broker command that keeps this worker alive there, the health
        file, and whether the running job is stuck past its end in the store."""
        from service.executors.dramatiq import broker_heartbeat
        from service.store import jobs

        try:
            broker_heartbeat(self.broker, self.settings.broker_queue)
            self._touch()
            if self._broker_failing:
                log.info("broker reachable again")
            self._broker_failing = False
        except Exception as exc:  # noqa: BLE001 - Redis hiccup: the next beat retries
            if not self._broker_failing:  # once per outage, not once per beat
                log.warning("broker heartbeat failed: %s: %s", type(exc).__name__, exc)
            self._broker_failing = True
        out = BeatSummary(broker_ok=not self._broker_failing)
        with self._current.lock:
            job_id, owner = self._current.job_id, self._current.owner
        if job_id is None or owner is None:
            return out
        out.job_id = job_id
        try:
            ours = jobs.held_by(self.db, job_id, owner) is not None
        except Exception:  # noqa: BLE001 - store hiccup: the next beat asks again
            return out
        out.stuck = self._current.stuck(job_id, ours, time.monotonic(), self.stuck_after_s)
        return out

    def run(self, job_id: str) -> None:
        """The actor's body: run one attempt of ``job_id`` on this worker's connections."""
        from service.runner import run_job

        owner = f"{self.worker_id}:{next(self._runs)}"
        self._current.set(job_id, owner)
        log.info("message received", extra={"job_id": job_id})
        try:
            run_job(job_id, self.settings, owner=owner, db=self.db, blobs=self.blobs)
        finally:
            self._current.set(None, None)

    def _touch(self) -> None:
        self.health_file.parent.mkdir(parents=True, exist_ok=True)
        self.health_file.touch()


class _ExitNow(BaseException):
    """Raised in the main thread by a second signal: end the process without waiting."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


class _Ending:
    """What asks the process to end: SIGTERM/SIGINT (a second one: at once) or a stuck job."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._signalled = False
        self.stuck_job: str | None = None

    def signal(self, signum: int, _frame: FrameType | None) -> None:
        if self._signalled:
            log.warning("second signal: exiting now")
            raise _ExitNow(1)
        self._signalled = True
        log.info("signal %s: finishing the running job, taking no new ones", signum)
        self._event.set()

    def stuck(self, job_id: str) -> None:
        self.stuck_job = job_id
        self._event.set()

    def wait(self) -> None:
        while not self._event.wait(1.0):  # a timeout, so that signal handlers run promptly
            pass


def _serve(worker: Worker, ending: _Ending) -> int:
    """Run ``worker`` until ``ending`` fires; the one place where a started worker's process
    ends. A clean stop returns 0. A job still computing leaves without interpreter finalisation
    (os._exit), which could crash under its thread inside torch: code 0 after SIGTERM,
    ``EXIT_STUCK`` for a stuck job (the container's restart policy brings a fresh process), 1 on a
    second signal."""
    signal.signal(signal.SIGTERM, ending.signal)
    signal.signal(signal.SIGINT, ending.signal)
    try:
        try:
            worker.start()
        except Exception as exc:  # noqa: BLE001 - reported, and the exit code says it
            log.error("broker unreachable at start: %s: %s", type(exc).__name__, exc)
            return 1
        ending.wait()
        if ending.stuck_job is not None:  # no graceful stop: the job's thread will not end
            code, hard = EXIT_STUCK, True
        else:
            left = worker.stop()
            code = EXIT_STUCK if ending.stuck_job is not None else 0
            hard = left is not None
            if not hard:
                worker.close()
            log.info("worker stopped")
    except _ExitNow as exc:
        code, hard = exc.code, True
    if hard:
        logging.shutdown()
        os._exit(code)
    return code


def main(
    settings: Settings | None = None, *, gpu: str | None = None, check_only: bool = False
) -> int:
    """Run a worker until SIGTERM/SIGINT; returns the process exit code."""
    settings = settings or Settings()
    if check_only:
        return check(settings)
    if gpu is not None:
        bind_gpu(gpu)
    setup_logging(settings.log_level)
    _route_dramatiq_logs()
    if not settings.broker_url:
        log.error("LIPWASS_BROKER_URL is not set: a worker needs Redis (redis://host:6379/0)")
        return 2

    from service.blobs import BlobStore
    from service.executors.dramatiq import make_broker
    from service.memcap import cap_job_process
    from service.runner import preload
    from service.store import Database

    settings.ensure_dirs()
    db = Database(settings.resolved_database_url)
    if settings.migrate_on_start:
        db.migrate()  # serialised by an advisory lock on PostgreSQL
    blobs = BlobStore(settings.data_dir / "blobs")
    preload()  # after CUDA_VISIBLE_DEVICES is final: imports and first calls, off the first job
    cap_job_process(settings)  # a CPU worker runs one job at a time: its cap is the job's
    ending = _Ending()
    worker = Worker(settings, db, blobs, make_broker(settings), on_stuck=ending.stuck)
    return _serve(worker, ending)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="lipwass worker", description=__doc__.splitlines()[0])
    p.add_argument("--gpu", help="bind to this GPU (sets CUDA_VISIBLE_DEVICES before torch)")
    p.add_argument("--check", action="store_true", help="health check: exit 0 if alive")
    return p.parse_args(argv)


if __name__ == "__main__":
    args = parse_args()
    sys.exit(main(Settings(), gpu=args.gpu, check_only=args.check))
