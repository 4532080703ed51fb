"""The distributed deployment as native processes: the compose topology without Docker.

Two API processes and two workers, started with the commands the images run (``lipwass serve``,
``lipwass worker``, after ``lipwass migrate``), on PostgreSQL (a database created for this module
and dropped after it), Redis (a key namespace of this module, deleted after it) and a shared
temporary blob folder, with short leases so that failures heal in seconds.

URLs: ``LIPWASS_TEST_DATABASE_URL`` and ``LIPWASS_TEST_BROKER_URL`` (default: the local
servers). The module skips, saying why, when either is unreachable, and fails instead when
``LIPWASS_REQUIRE_DISTRIBUTED=1`` (as ``.ci/run`` sets).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from jobfixtures import steps_lasting, wait_for

from service.settings import Settings

pytestmark = [pytest.mark.distributed, pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parents[2]
DB_URL = os.environ.get(
    "LIPWASS_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
BROKER_URL = os.environ.get("LIPWASS_TEST_BROKER_URL", "redis://127.0.0.1:6379/0")
REQUIRED = os.environ.get("LIPWASS_REQUIRE_DISTRIBUTED") == "1"

LEASE_S = 3.0
TINY = {"width": 8, "depth": 2, "steps": 30, "batch_size": 64}
MAX_STEPS = Settings.model_fields["max_steps"].default  # the service's limit on steps
# No early stop: runs all its steps (sized to this machine by the long_steps fixture).
LONG = {**TINY, "steps": 600, "min_steps": 600, "patience": 100_000}
ENDED = ("succeeded", "failed", "cancelled")


def _unavailable(reason: str) -> None:
    if REQUIRED:
        pytest.fail(f"LIPWASS_REQUIRE_DISTRIBUTED=1 but {reason}")
    pytest.skip(reason)


def _libpq(url: str) -> str:
    """A SQLAlchemy URL as psycopg's conninfo URL."""
    return re.sub(r"^postgresql\+\w+://", "postgresql://", url)


def _with_database(url: str, name: str) -> str:
    head, _, tail = url.partition("?")
    head = head.rsplit("/", 1)[0] + "/" + name
    return head + ("?" + tail if tail else "")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _lipwass(*args: str) -> list[str]:
    """The command the images run: the ``lipwass`` console script of this interpreter."""
    script = Path(sys.executable).parent / "lipwass"
    return [str(script), *args] if script.exists() else [sys.executable, "-m", "service.cli", *args]


class Proc:
    """One process of the topology, its log in a file."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], cwd: Path) -> None:
        self.name, self.cmd, self.env, self.cwd = name, cmd, env, cwd
        self.log = cwd / f"{name}.log"
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        with open(self.log, "ab") as out:
            self.popen = subprocess.Popen(
                self.cmd, env=self.env, cwd=self.cwd, stdout=out, stderr=subprocess.STDOUT
            )
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.alive():
            os.kill(self.pid, sig)
            if sig in (signal.SIGKILL, signal.SIGTERM):
                self.popen.wait(30)  # type: ignore[union-attr]

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class Cluster:
    """Two APIs, two workers, one database, one Redis namespace, one blob folder."""

    def __init__(self, root: Path, env: dict[str, str], conninfo: str, namespace: str) -> None:
        self.root, self.env, self.conninfo, self.namespace = root, env, conninfo, namespace
        self.ports = [_free_port(), _free_port()]
        self.apis = [self._api(i) for i in range(2)]
        self.workers = [self._worker(i) for i in range(2)]
        self.http = httpx.Client(timeout=30)

    def _api(self, i: int) -> Proc:
        cmd = _lipwass("serve", "--host", "127.0.0.1", "--port", str(self.ports[i]))
        return Proc(f"api{i}", cmd, self.env, self.root)

    def _worker(self, i: int) -> Proc:
        env = {**self.env, "LIPWASS_WORKER_HEALTH_FILE": str(self.root / f"worker{i}.health")}
        return Proc(f"worker{i}", _lipwass("worker"), env, self.root)

    # -- processes -----------------------------------------------------------------------------
    def url(self, i: int) -> str:
        return f"http://127.0.0.1:{self.ports[i]}"

    def wait_api(self, i: int, timeout: float = 90) -> None:
        def up() -> bool:
            assert self.apis[i].alive(), f"api{i} exited:\n{self.apis[i].text()[-3000:]}"
            try:
                return self.http.get(self.url(i) + "/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, timeout, f"api{i} /healthz", every=0.3)

    def wait_worker(self, i: int, timeout: float = 90) -> None:
        health = self.root / f"worker{i}.health"

        def ready() -> bool:
            assert self.workers[i].alive(), f"worker{i} exited:\n{self.workers[i].text()[-3000:]}"
            return health.exists() and "ready" in self.workers[i].text()

        wait_for(ready, timeout, f"worker{i} ready", every=0.3)

    def worker_pids(self) -> set[int]:
        return {w.pid for w in self.workers if w.alive()}

    # -- the API -------------------------------------------------------------------------------
    def upload(self, samples: np.ndarray, api: int = 0) -> str:
        r = self.http.post(self.url(api) + "/v1/datasets", json={"samples": samples.tolist()})
        assert r.status_code in (200, 201), r.text
        return r.json()["id"]

    def submit(self, src: str, tgt: str, config: dict, api: int = 0, seed: int = 0) -> str:
        body = {
            "source": src,
            "target": tgt,
            "method": "lipschitz",
            "crosscheck": "never",
            "seed": seed,
            "config": config,
        }
        r = self.http.post(self.url(api) + "/v1/estimates", json=body)
        assert r.status_code == 202, r.text
        return r.json()["id"]

    def get(self, est_id: str, api: int = 0) -> dict[str, Any]:
        r = self.http.get(f"{self.url(api)}/v1/estimates/{est_id}")
        assert r.status_code == 200, r.text
        return r.json()

    def wait_ended(self, ids: list[str], timeout: float, api: int = 0) -> list[dict[str, Any]]:
        def ended() -> list[dict[str, Any]] | None:
            jobs = [self.get(i, api) for i in ids]
            return jobs if all(j["status"] in ENDED for j in jobs) else None

        return wait_for(ended, timeout, f"{len(ids)} job(s) to end", every=0.3)

    # -- the store, directly ----------------------------------------------------------------------
    def rows(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        import psycopg

        with psycopg.connect(self.conninfo) as conn:
            cur = conn.execute(
                "SELECT id, status, attempt, lease_owner FROM estimates WHERE id = ANY(%s)",
                (ids,),
            )
            return {r[0]: {"status": r[1], "attempt": r[2], "owner": r[3]} for r in cur.fetchall()}

    def log_lines(self, job_id: str, msg: str) -> list[str]:
        """Worker log lines about ``job_id`` whose message is ``msg`` (JSON lines)."""
        out = []
        for w in self.workers:
            out += [
                line
                for line in w.text().splitlines()
                if f'"job_id": "{job_id}"' in line and f'"msg": "{msg}"' in line
            ]
        return out


def _owner_pid(owner: str) -> int:
    """The pid in a lease owner ``host:pid:run``."""
    return int(owner.split(":")[1])


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    try:
        import psycopg
        import redis
    except ImportError as exc:  # pragma: no cover - the service extra is installed
        _unavailable(f"missing client library: {exc}")
    admin = _libpq(DB_URL)
    try:
        psycopg.connect(admin, connect_timeout=3).close()
    except Exception as exc:  # noqa: BLE001
        _unavailable(f"PostgreSQL unreachable at {DB_URL} ({type(exc).__name__}: {exc})")
    rds = redis.Redis.from_url(BROKER_URL, socket_connect_timeout=3)
    try:
        rds.ping()
    except Exception as exc:  # noqa: BLE001
        _unavailable(f"Redis unreachable at {BROKER_URL} ({type(exc).__name__}: {exc})")

    token = uuid.uuid4().hex[:10]
    dbname = f"lipwass_test_{token}"
    namespace = f"lipwass-test-{token}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{dbname}"')
    root = tmp_path_factory.mktemp("distributed")
    db_url = _with_database(DB_URL, dbname)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("LIPWASS_")},
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
        "LIPWASS_DATABASE_URL": db_url,
        "LIPWASS_BROKER_URL": BROKER_URL,
        "LIPWASS_BROKER_NAMESPACE": namespace,
        "LIPWASS_DATA_DIR": str(root / "data"),
        "LIPWASS_MIGRATE_ON_START": "false",
        "LIPWASS_DEVICE": "cpu",
        "LIPWASS_LEASE_S": str(LEASE_S),
        "LIPWASS_HEARTBEAT_S": "0.5",
        "LIPWASS_REAPER_INTERVAL_S": "0.5",
        "LIPWASS_REQUEUE_AFTER_S": "2",
        "LIPWASS_CANCEL_GRACE_S": "2",
        "LIPWASS_PROGRESS_INTERVAL_S": "0.2",
        "LIPWASS_BROKER_HEARTBEAT_TIMEOUT_S": "2",
        "LIPWASS_WORKER_SHUTDOWN_GRACE_S": "2",
    }
    c: Cluster | None = None
    try:
        migrate = subprocess.run(
            _lipwass("migrate"), env=env, cwd=root, capture_output=True, text=True, timeout=120
        )
        assert migrate.returncode == 0, migrate.stdout + migrate.stderr
        c = Cluster(root, env, _libpq(db_url), namespace)
        for p in c.apis + c.workers:
            p.start()
        for i in range(2):
            c.wait_api(i)
            c.wait_worker(i)
        yield c
    finally:
        if c is not None:
            for p in c.apis + c.workers:
                with contextlib.suppress(Exception):
                    if p.alive():
                        os.kill(p.pid, signal.SIGCONT)
                    p.kill(signal.SIGKILL)
            c.http.close()
            for p in c.apis + c.workers:  # keep the logs of a failed run next to the report
                if p.log.exists() and os.environ.get("LIPWASS_KEEP_LOGS"):
                    shutil.copy(p.log, Path(os.environ["LIPWASS_KEEP_LOGS"]) / p.log.name)
        keys = list(rds.scan_iter(match=f"{namespace}:*", count=1000))
        if keys:
            rds.delete(*keys)
        rds.close()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')


def _pair() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 2))
    return x, rng.normal(size=(120, 2)) + np.array([1.0, 0.0])


@pytest.fixture(scope="module")
def data(cluster: Cluster) -> tuple[str, str]:
    x, y = _pair()
    return cluster.upload(x, api=0), cluster.upload(y, api=1)


@pytest.fixture(scope="module")
def long_steps() -> int:
    """Steps of LONG that train for about 6 s on this machine now (a job that must still be
    running when a test kills or stops its worker); at least LONG's own."""
    return min(max(steps_lasting(6.0, LONG, *_pair()), LONG["steps"]), MAX_STEPS)


def test_ten_jobs_spread_over_both_workers_and_all_succeed(cluster: Cluster, data) -> None:
    src, tgt = data
    ids = [cluster.submit(src, tgt, TINY, api=i % 2, seed=i % 5) for i in range(10)]
    jobs = cluster.wait_ended(ids, timeout=120, api=1)
    assert [j["status"] for j in jobs] == ["succeeded"] * 10, [j["error"] for j in jobs]
    assert [j["attempt"] for j in jobs] == [1] * 10
    # Same request, same seed, whichever worker: the same number.
    w1 = [j["result"]["w1"] for j in jobs]
    assert w1[:5] == w1[5:] and len(set(w1[:5])) == 5
    rows = cluster.rows(ids)
    pids = {_owner_pid(r["owner"]) for r in rows.values()}
    assert pids == cluster.worker_pids(), "both workers took jobs"
    for job_id in ids:
        assert len(cluster.log_lines(job_id, "job succeeded")) == 1


def test_duplicate_messages_run_a_job_once(cluster: Cluster, data) -> None:
    from service.executors.dramatiq import declare_actor, make_broker
    from service.settings import Settings

    settings = Settings(_env_file=None, broker_url=BROKER_URL, broker_namespace=cluster.namespace)
    broker = make_broker(settings)
    actor = declare_actor(broker, settings)
    src, tgt = data
    job_id = cluster.submit(src, tgt, TINY, api=0, seed=42)
    for _ in range(3):  # as a reaper racing with the first message would
        actor.send(job_id)
    (job,) = cluster.wait_ended([job_id], timeout=60)
    time.sleep(1.0)  # let the duplicates reach the workers
    assert job["status"] == "succeeded" and job["attempt"] == 1
    assert cluster.rows([job_id])[job_id]["attempt"] == 1
    assert len(cluster.log_lines(job_id, "job started")) == 1
    broker.client.connection_pool.disconnect()


def test_reaper_resubmit_skips_a_job_whose_message_is_still_in_redis(cluster: Cluster) -> None:
    import redis

    from service.executors.dramatiq import DramatiqExecutor, pending_job_ids
    from service.settings import Settings
    from service.store import Database

    namespace = f"{cluster.namespace}-dedup"  # no worker listens here
    settings = Settings(
        _env_file=None,
        database_url=cluster.env["LIPWASS_DATABASE_URL"],
        broker_url=BROKER_URL,
        broker_namespace=namespace,
    )
    db = Database(settings.resolved_database_url)
    ex = DramatiqExecutor(settings, db)
    rds = redis.Redis.from_url(BROKER_URL)
    queue = f"{namespace}:{settings.broker_queue}"
    try:
        ex.submit("est_a")
        assert pending_job_ids(ex.broker, settings.broker_queue) == {"est_a"}
        ex._resubmit("est_a")  # the reaper's path: a message is there already
        assert rds.llen(queue) == 1
        ex._resubmit("est_b")
        assert rds.llen(queue) == 2
        ex.check()
    finally:
        ex.stop()
        db.dispose()
        keys = list(rds.scan_iter(match=f"{namespace}:*"))
        if keys:
            rds.delete(*keys)
        rds.close()


def test_cancel_through_one_api_stops_a_job_running_under_a_worker(
    cluster: Cluster, data, long_steps: int
) -> None:
    src, tgt = data
    steps = min(10 * long_steps, MAX_STEPS)  # up to a minute: it must be cancelled, not finish
    job_id = cluster.submit(src, tgt, {**LONG, "steps": steps, "min_steps": steps}, api=0)
    wait_for(
        lambda: (cluster.get(job_id, 1)["progress"] or {}).get("step", 0) > 0,
        60,
        "the long job to make progress",
    )
    t0 = time.monotonic()
    r = cluster.http.post(f"{cluster.url(1)}/v1/estimates/{job_id}/cancel")
    assert r.status_code == 202, r.text
    (job,) = cluster.wait_ended([job_id], timeout=30, api=0)
    assert job["status"] == "cancelled"
    assert time.monotonic() - t0 < 15
    assert job["progress"]["step"] < steps
    assert len(cluster.log_lines(job_id, "job cancelled")) == 1


def test_api_killed_and_restarted_loses_nothing(cluster: Cluster, data) -> None:
    src, tgt = data
    ids = [cluster.submit(src, tgt, TINY, api=0, seed=100 + i) for i in range(3)]
    cluster.apis[0].kill(signal.SIGKILL)
    # The workers go on without it; the other API answers meanwhile.
    cluster.wait_ended(ids, timeout=90, api=1)
    cluster.apis[0].start()
    cluster.wait_api(0)
    jobs = [cluster.get(i, api=0) for i in ids]
    assert [j["status"] for j in jobs] == ["succeeded"] * 3
    listed = cluster.http.get(cluster.url(0) + "/v1/datasets").json()
    items = listed["items"] if isinstance(listed, dict) else listed
    assert {src, tgt} <= {d["id"] for d in items}
    pot = cluster.http.get(f"{cluster.url(0)}/v1/estimates/{ids[0]}/potential")
    assert pot.status_code == 200 and len(pot.content) > 100


def test_redis_flushed_while_jobs_are_queued_the_reaper_requeues_them(
    cluster: Cluster, data
) -> None:
    import redis

    src, tgt = data
    for w in cluster.workers:  # freeze the workers so that the messages stay queued
        w.kill(signal.SIGSTOP)
    try:
        ids = [cluster.submit(src, tgt, TINY, api=i % 2, seed=200 + i) for i in range(3)]
        rds = redis.Redis.from_url(BROKER_URL)
        queue = f"{cluster.namespace}:lipwass-jobs"
        assert rds.llen(queue) == 3
        keys = list(rds.scan_iter(match=f"{cluster.namespace}:*"))
        rds.delete(*keys)
        assert rds.llen(queue) == 0
        rds.close()
    finally:
        for w in cluster.workers:
            w.kill(signal.SIGCONT)
    jobs = cluster.wait_ended(ids, timeout=90)
    assert [j["status"] for j in jobs] == ["succeeded"] * 3
    api_logs = "\n".join(a.text() for a in cluster.apis).splitlines()
    for job_id in ids:  # sent once by the API, once more by a reaper after the flush
        sent = [ln for ln in api_logs if job_id in ln and '"msg": "job enqueued"' in ln]
        assert len(sent) >= 2, job_id


def test_worker_killed_mid_job_the_other_worker_finishes_it_once(
    cluster: Cluster, data, long_steps: int
) -> None:
    src, tgt = data
    long = {**LONG, "steps": long_steps, "min_steps": long_steps}
    job_id = cluster.submit(src, tgt, long, api=1, seed=7)
    wait_for(
        lambda: (cluster.get(job_id)["progress"] or {}).get("step", 0) > 0,
        60,
        "the long job to make progress",
    )
    owner = cluster.rows([job_id])[job_id]["owner"]
    victim = next(w for w in cluster.workers if w.pid == _owner_pid(owner))
    survivor = next(w for w in cluster.workers if w is not victim)
    victim.kill(signal.SIGKILL)
    t_kill = time.monotonic()

    def rerun() -> bool:
        row = cluster.rows([job_id])[job_id]
        return row["attempt"] == 2 and row["status"] in ("running", "succeeded")

    wait_for(rerun, 30, "the job to run again", every=0.1)
    restart_s = time.monotonic() - t_kill
    assert restart_s < LEASE_S + 5, f"re-ran {restart_s:.1f} s after the kill"
    (job,) = cluster.wait_ended([job_id], timeout=120)
    assert job["status"] == "succeeded" and job["attempt"] == 2
    row = cluster.rows([job_id])[job_id]
    assert _owner_pid(row["owner"]) == survivor.pid
    assert len(cluster.log_lines(job_id, "job succeeded")) == 1
    assert len(cluster.log_lines(job_id, "job started")) == 2


def test_sigterm_mid_job_stops_the_worker_and_the_job_is_requeued(
    cluster: Cluster, data, long_steps: int
) -> None:
    """Runs after the kill test, on the surviving worker: SIGTERM while a job runs longer than
    the shutdown grace (2 s) -> the worker exits 0 at once after it, and the job, whose lease
    is no longer renewed, goes back to the queue (no worker is left to take it: cancelled)."""
    (worker,) = [w for w in cluster.workers if w.alive()]
    health = cluster.root / f"{worker.name}.health"
    src, tgt = data
    steps = min(10 * long_steps, MAX_STEPS)  # longer than the shutdown grace, by far
    job_id = cluster.submit(src, tgt, {**LONG, "steps": steps, "min_steps": steps}, api=0)
    wait_for(
        lambda: (cluster.get(job_id)["progress"] or {}).get("step", 0) > 0,
        60,
        "the long job to make progress",
    )
    t0 = time.monotonic()
    worker.popen.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
    assert worker.popen.wait(30) == 0  # type: ignore[union-attr]
    assert time.monotonic() - t0 < 2.0 + 8
    text = worker.text()
    assert "exiting with a job still running" in text and "worker stopped" in text
    assert not health.exists()
    wait_for(lambda: cluster.get(job_id)["status"] == "queued", LEASE_S + 10, "re-queue")
    r = cluster.http.post(f"{cluster.url(0)}/v1/estimates/{job_id}/cancel")
    assert r.status_code == 202 and cluster.get(job_id)["status"] == "cancelled"


def test_claim_race_on_postgresql_has_one_winner(cluster: Cluster, data) -> None:
    """Eight threads, each with its own engine (as eight workers), claim one queued job."""
    import threading

    from service.store import Database, jobs

    src, tgt = data
    for w in cluster.workers:  # keep the real workers out of this race
        if w.alive():
            w.kill(signal.SIGSTOP)
    try:
        job_id = cluster.submit(src, tgt, TINY, api=0, seed=300)
        dbs = [Database(cluster.env["LIPWASS_DATABASE_URL"]) for _ in range(8)]
        barrier = threading.Barrier(len(dbs))
        won: list[str] = []

        def go(i: int) -> None:
            barrier.wait()
            if jobs.claim(dbs[i], job_id, f"racer:{i}", lease_s=60, max_attempts=3):
                won.append(f"racer:{i}")

        threads = [threading.Thread(target=go, args=(i,)) for i in range(len(dbs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert len(won) == 1
        row = cluster.rows([job_id])[job_id]
        assert row == {"status": "running", "attempt": 1, "owner": won[0]}
        cluster.http.post(f"{cluster.url(0)}/v1/estimates/{job_id}/cancel")
        for db in dbs:
            db.dispose()
    finally:
        for w in cluster.workers:
            if w.alive():
                w.kill(signal.SIGCONT)


def test_workers_starting_together_migrate_once_without_racing(cluster: Cluster) -> None:
    import threading

    import psycopg

    from service.store import Database

    name = f"lipwass_test_mig_{uuid.uuid4().hex[:8]}"
    admin = _libpq(DB_URL)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    errors: list[BaseException] = []
    dbs = [Database(_with_database(DB_URL, name)) for _ in range(3)]

    def go(db: Database) -> None:
        try:
            db.migrate()
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    try:
        threads = [threading.Thread(target=go, args=(db,)) for db in dbs]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert errors == []
        with psycopg.connect(_with_database(admin, name)) as conn:
            (count,) = conn.execute("SELECT count(*) FROM alembic_version").fetchone()
        assert count == 1
    finally:
        for db in dbs:
            db.dispose()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
