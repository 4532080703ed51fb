"""The Dramatiq adapter of the executor port: jobs travel as "run job <id>" messages on Redis.

The API side (:class:`DramatiqExecutor`) only enqueues; the worker side (:mod:`service.worker`)
consumes the same queue and calls :func:`service.runner.run_job`. The job's state lives in the
store, never in Redis, so a lost message is repaired by the reaper (which every API replica runs)
and a duplicated one is harmless (the claim is a conditional update: the second gets nothing).

Dramatiq defaults that would hurt a GPU job queue, and what replaces them here:

- 20 retries with back-off: ``max_retries=0``. The store's attempt counter and the reaper own
  retries (a failed message goes to the dead-letter queue, for inspection only).
- a 10-minute time limit: the runner enforces ``job_timeout_s`` itself, and the actor's limit is a
  backstop well above it.
- dead workers found after 60 s of silence, by maintenance that runs on 0.1 % of commands: here
  maintenance runs on every command and the silence allowed is ``broker_heartbeat_timeout_s``.
  A busy worker (one thread, prefetch 1) sends no command while its job runs, so the worker keeps
  a heartbeat thread of its own (:func:`broker_heartbeat`).
- prefetch of two messages per thread: one, so a queued job never waits behind a long one on a
  busy worker while another worker is idle (set by :mod:`service.worker`).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable

import dramatiq
import redis
from dramatiq.brokers.redis import MAINTENANCE_SCALE, RedisBroker
from dramatiq.middleware import Retries, TimeLimit

from service.reaper import Reaper
from service.settings import Settings
from service.store import Database

log = logging.getLogger("lipwass.dramatiq")

ACTOR_NAME = "run_job"


def make_broker(settings: Settings) -> RedisBroker:
    """A RedisBroker on ``settings.broker_url`` with the overrides described in the module doc."""
    if not settings.broker_url:
        raise ValueError("the Dramatiq executor needs LIPWASS_BROKER_URL (redis://...)")
    pool = redis.ConnectionPool.from_url(
        settings.broker_url,
        socket_connect_timeout=5,
        socket_timeout=30,
        health_check_interval=30,
    )
    return RedisBroker(
        client=redis.Redis(connection_pool=pool),
        namespace=settings.broker_namespace,
        middleware=[
            TimeLimit(time_limit=actor_time_limit_ms(settings)),
            Retries(max_retries=0),
        ],
        maintenance_chance=MAINTENANCE_SCALE,  # every command: dead workers found in seconds
        heartbeat_timeout=int(settings.broker_heartbeat_timeout_s * 1000),
        dead_message_ttl=int(settings.broker_dead_message_ttl_s * 1000),
    )


def actor_time_limit_ms(settings: Settings) -> int:
    """The actor's time limit: a backstop above the runner's own ``job_timeout_s``."""
    return int(
        (settings.job_timeout_s + settings.cancel_grace_s + 2 * settings.lease_s + 60) * 1000
    )


def declare_actor(
    broker: RedisBroker, settings: Settings, fn: Callable[[str], None] | None = None
) -> dramatiq.Actor:
    """The one actor, "run job <id>", on ``settings.broker_queue``.

    The API declares it without a body (it only sends); the worker passes the function that runs
    the job. Dramatiq acknowledges the message only after ``fn`` returns.
    """

    def _send_only(job_id: str) -> None:  # pragma: no cover - never runs on the API side
        raise RuntimeError("this process only enqueues jobs")

    declare = dramatiq.actor(
        actor_name=ACTOR_NAME,
        queue_name=settings.broker_queue,
        broker=broker,
        max_retries=0,
        time_limit=actor_time_limit_ms(settings),
    )
    return declare(fn or _send_only)


def broker_heartbeat(broker: RedisBroker, queue_name: str) -> int:
    """One cheap broker command: refreshes this process's heartbeat (and runs maintenance).

    Returns the queue's length. Every Dramatiq command records the caller as alive; a worker
    whose only thread is busy with a long job sends none, so it calls this on a timer.
    """
    return int(broker.do_qsize(queue_name))


def pending_job_ids(broker: RedisBroker, queue_name: str) -> set[str]:
    """Job ids that have a message in Redis: waiting, or fetched and not yet acknowledged."""
    key = f"{broker.namespace}:{queue_name}.msgs"
    out: set[str] = set()
    for raw in broker.client.hvals(key):
        try:
            args = json.loads(raw).get("args") or []
        except (ValueError, AttributeError):
            continue
        if args and isinstance(args[0], str):
            out.add(args[0])
    return out


class DramatiqExecutor:
    """The API side: enqueue "run job <id>", and run the reaper with enqueue as its submit."""

    def __init__(self, settings: Settings, db: Database) -> None:
        self.settings = settings
        self.db = db
        self.broker = make_broker(settings)
        self.actor = declare_actor(self.broker, settings)
        self.reaper = Reaper(settings, db, self._resubmit)
        self._pending: tuple[float, set[str]] | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        """Start the reaper: any API replica repairs lost messages and dead workers' jobs."""
        self.reaper.start()

    def stop(self) -> None:
        self.reaper.stop()
        self.broker.close()
        self.broker.client.connection_pool.disconnect()

    def submit(self, job_id: str) -> None:
        """Enqueue the job; on a broker outage this raises and the reaper re-submits later."""
        self.actor.send(job_id)
        log.info("job enqueued", extra={"job_id": job_id})

    def _resubmit(self, job_id: str) -> None:
        """The reaper's submit: enqueue unless a message for the job is still in Redis.

        The check keeps a long queue behind busy workers from growing duplicates; a duplicate
        would be harmless anyway (the claim is a conditional update).
        """
        with self._lock:
            now = time.monotonic()
            if self._pending is None or now - self._pending[0] > 1.0:
                self._pending = (now, pending_job_ids(self.broker, self.settings.broker_queue))
            pending = self._pending[1]
            if job_id in pending:
                log.info("re-submit skipped: message still in Redis", extra={"job_id": job_id})
                return
            self.submit(job_id)
            pending.add(job_id)

    def cancel(self, job_id: str) -> None:
        """Nothing beyond the store's flag: the runner sees it at its next heartbeat."""

    def check(self) -> None:
        """Raise if Redis does not answer (for /readyz)."""
        self.broker.client.ping()
