"""Service latency and overhead against a real `lipwass serve` process (embedded mode).

1. Polling: ``--pollers`` concurrent clients (asyncio + httpx, one connection each) GET one
   estimate (``GET /v1/estimates/{id}``) in a loop for ``--seconds``; p50 / p99 / max latency
   and requests per second. Target: p99 <= 50 ms with 100 pollers.
2. Overhead: the same small estimate (same data, config and seed) through the service
   (upload both sets, submit, follow SSE to the result: what `Client.estimate` does) against
   in-process (`service.cli.estimate_local`, lipcore already imported), ``--repeats`` times each.

    .venv/bin/python bench/service.py [--pollers 100] [--seconds 10] [--interval 1]
                                      [--n 1000] [--steps 100] [--repeats 2] [--gap 0]

Prints one JSON document (figures in seconds / milliseconds). The client runs on the same
machine as the server, so on a small machine the pollers compete with the server for CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(data_dir: Path, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "LIPWASS_DEVICE": os.environ.get("LIPWASS_DEVICE", "cpu")}
    env.setdefault("LIPWASS_PROGRESS_INTERVAL_S", "0.2")
    cmd = [sys.executable, "-m", "service.cli", "serve", "--port", str(port)]
    cmd += ["--data-dir", str(data_dir), "--log-level", "warning"]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"server did not start:\n{log.read_text()[-3000:]}")


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    k = min(len(s) - 1, max(0, int(round(q / 100 * (len(s) - 1)))))
    return s[k]


async def _get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> int:
    """One keep-alive HTTP/1.1 GET on an open connection; returns the status code."""
    writer.write(request)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    await reader.readexactly(length)
    return status


async def poll(
    url: str, path: str, pollers: int, seconds: float, interval: float = 0.0
) -> dict[str, float]:
    """``pollers`` keep-alive connections, each a loop of GET ``path``, for ``seconds``;
    ``interval`` > 0: each poller waits that long between polls (as a client honouring
    Retry-After does; starts spread over one interval), 0: back to back (saturation).

    A minimal asyncio HTTP/1.1 client: on a small machine a full client library would spend more
    CPU than the server and measure itself.
    """
    host, port = url.split("//", 1)[1].split(":")
    request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
    conns = [await asyncio.open_connection(host, int(port)) for _ in range(pollers)]
    latencies: list[float] = []
    errors = 0
    stop = time.perf_counter() + seconds

    async def one(k: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal errors
        if interval > 0:
            await asyncio.sleep(interval * k / pollers)
        while time.perf_counter() < stop:
            t = time.perf_counter()
            status = await _get(reader, writer, request)
            latencies.append(time.perf_counter() - t)
            if status != 200:
                errors += 1
            if interval > 0:
                await asyncio.sleep(interval)

    t0 = time.perf_counter()
    await asyncio.gather(*(one(k, r, w) for k, (r, w) in enumerate(conns)))
    wall = time.perf_counter() - t0
    for _, w in conns:
        w.close()
    ms = [1000 * v for v in latencies]
    return {
        "pollers": pollers,
        "interval_s": interval,
        "requests": len(ms),
        "errors": errors,
        "rps": round(len(ms) / wall, 1),
        "p50_ms": round(percentile(ms, 50), 2),
        "p90_ms": round(percentile(ms, 90), 2),
        "p99_ms": round(percentile(ms, 99), 2),
        "max_ms": round(max(ms), 2),
    }


def overhead(
    url: str, n: int, d: int, steps: int, repeats: int, gap: float = 0.0
) -> dict[str, object]:
    from service.cli import estimate_local
    from service.client import Client

    rng = np.random.default_rng(0)
    config = {"width": 64, "depth": 3, "steps": steps, "batch_size": 512, "patience": 0}
    service_s, local_s, server_job_s, queue_s, diffs = [], [], [], [], []
    with Client(url, timeout=60) as c:
        for k in range(repeats):
            if k:
                time.sleep(gap)  # jobs spaced out (a user's pace) or back to back (a burst)
            x = rng.normal(size=(n, d))
            y = rng.normal(size=(n, d)) + np.eye(d)[0]
            t = time.perf_counter()
            est = c.estimate(x, y, method="lipschitz", crosscheck="never", seed=k, config=config)
            service_s.append(time.perf_counter() - t)
            server_job_s.append(est["result"]["seconds"])
            started = datetime.fromisoformat(est["started_at"])
            queue_s.append((started - datetime.fromisoformat(est["created_at"])).total_seconds())
            t = time.perf_counter()
            res, _ = estimate_local(
                x, y, method="lipschitz", crosscheck="never", seed=k, config=config,
                device=os.environ.get("LIPWASS_DEVICE", "cpu"),
            )  # fmt: skip
            local_s.append(time.perf_counter() - t)
            diffs.append(abs(res["lower_bound"] - est["result"]["lower_bound"]))

    def med(v: list[float]) -> float:
        return round(statistics.median(v), 3)

    return {
        "n": n, "d": d, "steps": steps, "repeats": repeats, "gap_s": gap,
        "service_s": med(service_s), "in_process_s": med(local_s),
        "overhead_s": med([a - b for a, b in zip(service_s, local_s, strict=True)]),
        "job_seconds_in_child": med(server_job_s),
        "submit_to_start_s": med(queue_s),
        "max_abs_diff_lower_bound": max(diffs),
        "all_service_s": [round(v, 3) for v in service_s],
        "all_in_process_s": [round(v, 3) for v in local_s],
    }  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pollers", type=int, default=100)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--interval", type=float, default=1.0, help="seconds between one's polls")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--d", type=int, default=2)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--gap", type=float, default=0.0, help="seconds between overhead jobs")
    p.add_argument("--skip-overhead", action="store_true")
    args = p.parse_args()

    import lipcore  # noqa: F401 - warm: the in-process figure excludes the import

    with tempfile.TemporaryDirectory(prefix="lipwass-bench-") as tmp:
        proc, url = start_server(Path(tmp) / "data", Path(tmp) / "server.log")
        try:
            from service.client import Client

            with Client(url) as c:
                x = c.upload(np.zeros((3, 2)))["id"]
                y = c.upload(np.ones((3, 2)))["id"]
                est = c.estimate(x, y, method="exact")  # a finished job: a fixed-size answer
            path = f"/v1/estimates/{est['id']}"
            asyncio.run(poll(url, path, 10, 1.0))  # warm-up
            # The same load on /healthz (async, no database): the ceiling of this machine and
            # HTTP stack at that moment, to read the estimate route's figures against.
            polling = [
                {"route": route, **asyncio.run(poll(url, p, args.pollers, args.seconds, iv))}
                for iv in (args.interval, 0.0)
                for route, p in (("GET /v1/estimates/{id}", path), ("GET /healthz", "/healthz"))
            ]
            over = None
            if not args.skip_overhead:
                over = overhead(url, args.n, args.d, args.steps, args.repeats, args.gap)
        finally:
            proc.kill()
            proc.wait()
    out = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs",
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "device": os.environ.get("LIPWASS_DEVICE", "cpu"),
        "polling": polling,
        "overhead": over,
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
