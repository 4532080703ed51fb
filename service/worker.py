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
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from service.logs import setup_logging
from service.settings import Settings

if TYPE_CHECKING:
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


def _still_ours(db: Database, job_id: str, owner: str) -> bool:
    from sqlalchemy import select

    from service.store import EstimateRow, JobStatus

    with db.session() as s:
        row = s.execute(
            select(EstimateRow.status, EstimateRow.lease_owner).where(EstimateRow.id == job_id)
        ).one_or_none()
    return row is not None and row[0] == JobStatus.running.value and row[1] == owner


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

    import dramatiq

    from service.blobs import BlobStore
    from service.executors.dramatiq import broker_heartbeat, declare_actor, make_broker
    from service.runner import preload, run_job
    from service.store import Database

    settings.ensure_dirs()
    db = Database(settings.resolved_database_url)
    if settings.migrate_on_start:
        db.migrate()  # serialised by an advisory lock on PostgreSQL
    blobs = BlobStore(settings.data_dir / "blobs")

    preload()  # after CUDA_VISIBLE_DEVICES is final: imports and first calls, off the first job
    import torch

    worker_id = f"{socket.gethostname()}:{os.getpid()}"
    runs = itertools.count(1)
    current = _Current()

    def run(job_id: str) -> None:
        owner = f"{worker_id}:{next(runs)}"
        current.set(job_id, owner)
        log.info("message received", extra={"job_id": job_id})
        try:
            run_job(job_id, settings, owner=owner, db=db, blobs=blobs)
        finally:
            current.set(None, None)

    broker = make_broker(settings)
    declare_actor(broker, settings, run)
    # worker_timeout caps the consumer's back-off between polls (Dramatiq: 1 s, and it backs off
    # while the one thread is busy, so a job ending waits up to that long for the next one).
    worker = dramatiq.Worker(
        broker,
        queues={settings.broker_queue},
        worker_threads=1,
        worker_timeout=max(1, int(settings.worker_poll_s * 1000)),
    )
    worker.queue_prefetch = 1  # hold only the running job (set before start)

    stop = threading.Event()
    beats_stop = threading.Event()
    hfile = health_file(settings)
    interval = beat_interval(settings)
    stuck_after = settings.cancel_grace_s + 2 * settings.heartbeat_s

    failing = False

    def beat_loop() -> None:
        nonlocal failing
        while not beats_stop.wait(interval):
            try:
                broker_heartbeat(broker, settings.broker_queue)
                hfile.parent.mkdir(parents=True, exist_ok=True)
                hfile.touch()
                if failing:
                    log.info("broker reachable again")
                failing = False
            except Exception as exc:  # noqa: BLE001 - Redis hiccup: the next beat retries
                if not failing:  # once per outage, not once per beat
                    log.warning("broker heartbeat failed: %s: %s", type(exc).__name__, exc)
                failing = True
            with current.lock:
                job_id, owner = current.job_id, current.owner
            if job_id is None or owner is None:
                continue
            try:
                ours = _still_ours(db, job_id, owner)
            except Exception:  # noqa: BLE001 - store hiccup
                continue
            if current.stuck(job_id, ours, time.monotonic(), stuck_after):
                log.error(
                    "job ended in the store but its computation is stuck: exiting",
                    extra={"job_id": job_id},
                )
                os._exit(EXIT_STUCK)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if stop.is_set():
            log.warning("second signal: exiting now")
            os._exit(1)
        log.info("signal %s: finishing the running job, taking no new ones", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    beats = threading.Thread(target=beat_loop, name="lipwass-broker-heartbeat", daemon=True)
    try:
        broker_heartbeat(broker, settings.broker_queue)  # fail fast if Redis is unreachable
    except Exception as exc:  # noqa: BLE001 - reported, and the exit code says it
        log.error("broker unreachable at start: %s: %s", type(exc).__name__, exc)
        return 1
    hfile.touch()
    beats.start()
    worker.start()
    log.info(
        "worker %s ready: queue %s, CUDA_VISIBLE_DEVICES=%s, cuda=%s, device=%s",
        worker_id,
        settings.broker_queue,
        os.environ.get("CUDA_VISIBLE_DEVICES", "<all>"),
        torch.cuda.is_available(),
        settings.device or ("cuda" if torch.cuda.is_available() else "cpu"),
    )
    while not stop.wait(1.0):
        pass
    worker.stop(timeout=int(settings.worker_shutdown_grace_s * 1000))
    with current.lock:
        left = current.job_id
    if left is not None:
        log.warning(
            "exiting with a job still running: its lease will expire", extra={"job_id": left}
        )
    beats_stop.set()
    hfile.unlink(missing_ok=True)
    if left is not None:
        # The job's thread is still inside torch: leave without interpreter finalisation, which
        # could crash under it. Its lease stops being renewed now.
        log.info("worker stopped")
        logging.shutdown()
        os._exit(0)
    broker.client.connection_pool.disconnect()
    db.dispose()
    log.info("worker stopped")
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="lipwass worker", description=__doc__.splitlines()[0])
    p.add_argument("--gpu", help="bind to this GPU (sets CUDA_VISIBLE_DEVICES before torch)")
    p.add_argument("--check", action="store_true", help="health check: exit 0 if alive")
    return p.parse_args(argv)


if __name__ == "__main__":
    args = parse_args()
    sys.exit(main(Settings(), gpu=args.gpu, check_only=args.check))
