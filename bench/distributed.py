"""Distributed deployment: job throughput with one and two workers, and recovery from a dead worker.

Starts the compose topology as native processes with the commands the images run (``lipwass
migrate``, one ``lipwass serve``, N x ``lipwass worker``) on PostgreSQL (a database created for
the run, dropped after it) and Redis (a key namespace of the run, deleted after it).

1. Throughput: ``--jobs`` small CPU estimates submitted at once; jobs per minute = jobs / (time
   from the first submit to the last job's end) with one worker, then with two. Workers are
   started and warm (torch imported) before the clock starts. Each worker has one torch thread
   (OMP_NUM_THREADS=1), so two workers use the machine's two cores. Also reported, as they do
   not depend on how loaded the machine is: the workers' CPU seconds per job, each worker's idle
   time between two jobs and the share of the run spent inside jobs (from the job rows), and the
   dispatch latency of one job to an idle worker (202 answer to the row "running").
2. Recovery: a long job runs on one of two workers; that worker is SIGKILLed; the time from the
   kill to the job's next attempt running on the other worker (polled in the store every 20 ms).
   Measured with the short test settings (lease 3 s) and with the shipped defaults (lease 30 s,
   broker heartbeat timeout 15 s, reaper every 5 s).

    .venv/bin/python bench/distributed.py [--jobs 20] [--steps 100] [--kills 3] [--defaults]
    (--kills 0: throughput only)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psycopg
import redis

ROOT = Path(__file__).resolve().parent.parent
DB_URL = os.environ.get(
    "LIPWASS_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
BROKER_URL = os.environ.get("LIPWASS_TEST_BROKER_URL", "redis://127.0.0.1:6379/0")
LIPWASS = str(Path(sys.executable).parent / "lipwass")

FAST = {
    "LIPWASS_LEASE_S": "3",
    "LIPWASS_HEARTBEAT_S": "0.5",
    "LIPWASS_REAPER_INTERVAL_S": "0.5",
    "LIPWASS_BROKER_HEARTBEAT_TIMEOUT_S": "2",
}
DEFAULTS: dict[str, str] = {}  # the Settings defaults: lease 30 s, heartbeat 5 s, reaper 5 s


def libpq(url: str) -> str:
    return re.sub(r"^postgresql\+\w+://", "postgresql://", url)


def with_database(url: str, name: str) -> str:
    head, _, tail = url.partition("?")
    return head.rsplit("/", 1)[0] + "/" + name + ("?" + tail if tail else "")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_for(pred: Any, timeout: float, what: str, every: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := pred()):
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(every)
    return value


class Topology:
    """One API and some workers on a fresh database and Redis namespace."""

    def __init__(self, extra_env: dict[str, str]) -> None:
        token = uuid.uuid4().hex[:10]
        self.dbname = f"lipwass_bench_{token}"
        self.namespace = f"lipwass-bench-{token}"
        self.root = Path(tempfile.mkdtemp(prefix="lipwass-bench-"))
        with psycopg.connect(libpq(DB_URL), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.dbname}"')
        self.db_url = with_database(DB_URL, self.dbname)
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("LIPWASS_")},
            "OMP_NUM_THREADS": "1",
            "LIPWASS_DATABASE_URL": self.db_url,
            "LIPWASS_BROKER_URL": BROKER_URL,
            "LIPWASS_BROKER_NAMESPACE": self.namespace,
            "LIPWASS_DATA_DIR": str(self.root / "data"),
            "LIPWASS_MIGRATE_ON_START": "false",
            "LIPWASS_DEVICE": "cpu",
            "LIPWASS_LOG_LEVEL": "WARNING",
            **extra_env,
        }
        subprocess.run([LIPWASS, "migrate"], env=self.env, cwd=self.root, check=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api = self._spawn("api", [LIPWASS, "serve", "--port", str(self.port)])
        self.workers: list[subprocess.Popen[bytes]] = []
        self.http = httpx.Client(timeout=60)
        wait_for(self._api_up, 120, "api /healthz", every=0.3)

    def _spawn(self, name: str, cmd: list[str], **env: str) -> subprocess.Popen[bytes]:
        log = open(self.root / f"{name}.log", "ab")  # noqa: SIM115 - lives with the process
        return subprocess.Popen(cmd, env={**self.env, **env}, cwd=self.root, stdout=log, stderr=log)

    def _api_up(self) -> bool:
        try:
            return self.http.get(self.url + "/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def add_worker(self) -> subprocess.Popen[bytes]:
        i = self.started = getattr(self, "started", 0) + 1
        health = self.root / f"worker{i}.health"
        w = self._spawn(f"worker{i}", [LIPWASS, "worker"], LIPWASS_WORKER_HEALTH_FILE=str(health))
        self.workers.append(w)
        wait_for(health.exists, 120, f"worker{i} ready", every=0.2)
        return w

    def upload(self, samples: np.ndarray) -> str:
        r = self.http.post(self.url + "/v1/datasets", json={"samples": samples.tolist()})
        r.raise_for_status()
        return r.json()["id"]

    def submit(self, src: str, tgt: str, config: dict, seed: int) -> str:
        body = {"source": src, "target": tgt, "method": "lipschitz", "crosscheck": "never",
                "seed": seed, "config": config}  # fmt: skip
        r = self.http.post(self.url + "/v1/estimates", json=body)
        r.raise_for_status()
        return r.json()["id"]

    def rows(self, ids: list[str]) -> dict[str, tuple[str, int, str | None]]:
        with psycopg.connect(libpq(self.db_url)) as conn:
            cur = conn.execute(
                "SELECT id, status, attempt, lease_owner FROM estimates WHERE id = ANY(%s)",
                (ids,),
            )
            return {r[0]: (r[1], r[2], r[3]) for r in cur.fetchall()}

    def close(self) -> None:
        for p in [self.api, *self.workers]:
            if p.poll() is None:
                p.kill()
                p.wait(30)
        self.http.close()
        rds = redis.Redis.from_url(BROKER_URL)
        keys = list(rds.scan_iter(match=f"{self.namespace}:*", count=1000))
        if keys:
            rds.delete(*keys)
        with psycopg.connect(libpq(DB_URL), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.dbname}" WITH (FORCE)')


def datasets(t: Topology, n: int) -> tuple[str, str]:
    rng = np.random.default_rng(0)
    return t.upload(rng.normal(size=(n, 2))), t.upload(rng.normal(size=(n, 2)) + [1.0, 0.0])


def idle_gaps(t: Topology, ids: list[str]) -> tuple[list[float], float]:
    """Per worker, the idle time between one job's end and its next job's start (the queue's
    overhead per job), and the share of the run the workers spent inside jobs."""
    with psycopg.connect(libpq(t.db_url)) as conn:
        rows = conn.execute(
            "SELECT lease_owner, extract(epoch FROM started_at), extract(epoch FROM finished_at)"
            " FROM estimates WHERE id = ANY(%s)",
            (ids,),
        ).fetchall()
    by_worker: dict[str, list[tuple[float, float]]] = {}
    for owner, start, end in rows:
        by_worker.setdefault(owner.rsplit(":", 1)[0], []).append((float(start), float(end)))
    gaps: list[float] = []
    inside = 0.0
    first = min(float(r[1]) for r in rows)
    last = max(float(r[2]) for r in rows)
    for spans in by_worker.values():
        spans.sort()
        inside += sum(e - s for s, e in spans)
        gaps += [b[0] - a[1] for a, b in zip(spans, spans[1:], strict=False)]
    return gaps, inside / ((last - first) * len(by_worker))


def throughput(workers: int, jobs: int, config: dict, n: int) -> dict[str, Any]:
    t = Topology(FAST)
    try:
        for _ in range(workers):
            t.add_worker()
        src, tgt = datasets(t, n)
        # Dispatch latency: one job to an idle worker, from the 202 to the row "running".
        latency = []
        for k in range(3):
            job = t.submit(src, tgt, {**config, "steps": 1, "min_steps": 1}, seed=10_000 + k)
            t1 = time.monotonic()
            wait_for(lambda job=job: t.rows([job])[job][0] != "queued", 60, "claim", every=0.005)
            latency.append(time.monotonic() - t1)
            wait_for(lambda job=job: t.rows([job])[job][0] == "succeeded", 120, "success")
        cpu0 = {w.pid: cpu_seconds(w.pid) for w in t.workers}
        t0 = time.monotonic()
        ids = [t.submit(src, tgt, config, seed=i) for i in range(jobs)]

        def done() -> dict | None:
            rows = t.rows(ids)
            return (
                rows
                if all(r[0] in ("succeeded", "failed", "cancelled") for r in rows.values())
                else None
            )

        rows = wait_for(done, 1800, "all jobs", every=0.1)
        elapsed = time.monotonic() - t0
        cpu = sum(cpu_seconds(pid) - c for pid, c in cpu0.items())
        gaps, busy = idle_gaps(t, ids)
        statuses = [r[0] for r in rows.values()]
        owners = {r[2].rsplit(":", 1)[0] for r in rows.values() if r[2]}
        return {
            "workers": workers,
            "jobs": jobs,
            "succeeded": statuses.count("succeeded"),
            "seconds": round(elapsed, 2),
            "jobs_per_minute": round(jobs / elapsed * 60, 1),
            "distinct_workers_used": len(owners),
            "worker_cpu_seconds_per_job": round(cpu / jobs, 3),
            "idle_gap_between_jobs_ms": {
                "median": round(1000 * statistics.median(gaps), 1),
                "max": round(1000 * max(gaps), 1),
            }
            if gaps
            else None,
            "workers_busy_fraction": round(busy, 3),
            "dispatch_latency_s": [round(x, 3) for x in latency],
        }
    finally:
        t.close()


def recovery(kills: int, env: dict[str, str], config: dict, n: int) -> dict[str, Any]:
    t = Topology(env)
    times: list[float] = []
    phases: list[dict[str, Any]] = []
    try:
        t.add_worker()
        t.add_worker()
        src, tgt = datasets(t, n)
        for k in range(kills):
            job = t.submit(src, tgt, config, seed=1000 + k)

            def row(job: str = job) -> tuple[str, int, str | None]:
                return t.rows([job])[job]

            wait_for(lambda: row()[0] == "running", 120, "running")
            owner = row()[2]
            pid = int(owner.split(":")[1])
            victim = next(w for w in t.workers if w.pid == pid)
            with psycopg.connect(libpq(t.db_url)) as conn:
                (lease_left,) = conn.execute(
                    "SELECT extract(epoch FROM lease_expires_at - now()) FROM estimates"
                    " WHERE id = %s",
                    (job,),
                ).fetchone()
            victim.send_signal(signal.SIGKILL)
            t_kill = time.monotonic()
            victim.wait(30)
            requeued_at: float | None = None
            deadline = t_kill + 600
            while time.monotonic() < deadline:
                status, attempt, _ = row()
                if status == "queued" and requeued_at is None:
                    requeued_at = time.monotonic() - t_kill
                if attempt >= 2 and status != "queued":
                    break
                time.sleep(0.02)
            times.append(time.monotonic() - t_kill)
            phases.append(
                {
                    "lease_left_at_kill_s": round(float(lease_left), 2),
                    "requeued_by_reaper_s": None if requeued_at is None else round(requeued_at, 2),
                    "running_again_s": round(times[-1], 2),
                }
            )
            wait_for(lambda: row()[0] == "succeeded", 600, "success")
            t.workers.remove(victim)
            t.add_worker()
        return {
            "settings": {k.removeprefix("LIPWASS_").lower(): v for k, v in env.items()}
            or "defaults (lease_s 30, heartbeat_s 5, reaper_interval_s 5, "
            "broker_heartbeat_timeout_s 15)",
            "kills": kills,
            "seconds_to_rerun": [round(x, 2) for x in times],
            "phases": phases,
            "median_s": round(statistics.median(times), 2),
        }
    finally:
        t.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=20)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--n", type=int, default=200, help="samples per set")
    p.add_argument("--kills", type=int, default=3)
    p.add_argument("--defaults", action="store_true", help="also time recovery with defaults")
    p.add_argument("--out", help="write the JSON here too")
    p.add_argument("--skip-throughput", action="store_true")
    args = p.parse_args()
    small = {"width": 16, "depth": 2, "steps": args.steps, "batch_size": 64,
             "min_steps": args.steps, "patience": 100_000}  # fmt: skip
    long = {**small, "steps": 3000, "min_steps": 3000}
    out: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()}, {os.cpu_count()} CPU cores, {platform.machine()}",
        "load_average_before": os.getloadavg(),
        "job": {"n": args.n, "d": 2, **small},
        "throughput": []
        if args.skip_throughput
        else [throughput(w, args.jobs, small, args.n) for w in (1, 2)],
        "recovery": [recovery(args.kills, FAST, long, args.n)] if args.kills else [],
    }
    if args.defaults:
        out["recovery"].append(recovery(1, DEFAULTS, long, args.n))
    out["load_average_after"] = os.getloadavg()
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
