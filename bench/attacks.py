"""A hostile or careless client against a real `lipwass serve` on loopback (issue 13): what each
attack costs the server (open fds, threads, resident memory) and its other clients (latency of
`/healthz` and of a list route while the attack runs).

Starts the service in embedded mode with a fresh data folder, its default settings unless an
attack needs one changed (named in its row), and runs, one after the other:

- ``stall``: 2 000 uploads that send their headers and 1 kB of body, then nothing (30 s);
- ``slowloris``: 1 000 connections that send half a request line, then nothing;
- ``json``: one 60 MiB JSON upload (2.3e6 rows of 2 numbers) and the same body to
  ``/v1/estimates/est_nope/evaluate``;
- ``sse``: 1 000 idle ``/events`` streams of one queued job (LIPWASS_MAX_CLIENT_CONNECTIONS=1200,
  LIPWASS_MAX_CONNECTIONS=1500 for this one: they come from one address);
- ``queue``: 1 000 estimate submissions as fast as one client can send them.

Every loop is bounded in count and seconds and talks only to 127.0.0.1.

    .venv/bin/python bench/attacks.py [--only stall,json,...]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: bench.service is importable

from bench.service import free_port  # noqa: E402


def usage(pid: int) -> dict[str, float]:
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    kib = {k: int(v.split()[0]) for k, _, v in (ln.partition(":") for ln in status) if "kB" in v}
    return {
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
        "threads": len(os.listdir(f"/proc/{pid}/task")),
        "rss_mb": kib["VmRSS"] / 1024,
        "hwm_mb": kib["VmHWM"] / 1024,
    }


@contextmanager
def server(env: dict[str, str] | None = None) -> Iterator[tuple[str, subprocess.Popen]]:
    port = free_port()
    data = tempfile.mkdtemp(prefix="lipwass-attack-")
    full = {**os.environ, "LIPWASS_DEVICE": "cpu", "OMP_NUM_THREADS": "1", **(env or {})}
    full.pop("LIPWASS_DATABASE_URL", None)
    full.pop("LIPWASS_BROKER_URL", None)
    cmd = [sys.executable, "-m", "service.cli", "serve", "--port", str(port)]
    cmd += ["--data-dir", data, "--log-level", "error"]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=full, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.2)
    try:
        yield url, proc
    finally:
        proc.kill()
        proc.wait(30)


def other_client(url: str) -> httpx.Client:
    """A client from another loopback address (127.0.0.2): not the attacker, whose address the
    per-client connection bound counts."""
    transport = httpx.HTTPTransport(local_address="127.0.0.2")
    return httpx.Client(base_url=url, timeout=30, transport=transport)


class Prober:
    """Times GET ``path`` every 0.2 s on its own connection while an attack runs."""

    def __init__(self, url: str, path: str = "/healthz") -> None:
        self.url, self.path = url, path
        self.times: list[float] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with other_client(self.url) as c:
            while not self._stop.is_set():
                t = time.perf_counter()
                try:
                    r = c.get(self.path)
                    if r.status_code != 200:
                        self.errors.append(str(r.status_code))
                except httpx.HTTPError as e:
                    self.errors.append(type(e).__name__)
                self.times.append(time.perf_counter() - t)
                self._stop.wait(0.2)

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)

    def summary(self) -> str:
        if not self.times:
            return "no sample"
        ms = sorted(1000 * t for t in self.times)
        err = (
            f", {len(self.errors)} errors ({', '.join(sorted(set(self.errors)))})"
            if self.errors
            else ""
        )
        return f"p50 {statistics.median(ms):.1f} ms, max {ms[-1]:.0f} ms ({len(ms)} probes{err})"


def row(name: str, what: str, before: dict, peak: dict, probe: str, note: str) -> str:
    return (
        f"| {name} | {what} | {before['fds']:.0f} → {peak['fds']:.0f} | "
        f"{before['threads']:.0f} → {peak['threads']:.0f} | "
        f"{before['rss_mb']:.0f} → {peak['hwm_mb']:.0f} MB | {probe} | {note} |"
    )


def peak_of(pid: int, seconds: float, base: dict) -> dict:
    """Sample usage for ``seconds``; the largest figures seen."""
    top = dict(base)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        u = usage(pid)
        for k in top:
            top[k] = max(top[k], u[k])
        time.sleep(0.1)
    return top


def attack_stall(url: str, pid: int) -> str:
    host, port = url.split("//")[1].split(":")
    head = (
        (
            b"POST /v1/datasets HTTP/1.1\r\nHost: x\r\nContent-Type: text/csv\r\n"
            b"Content-Length: 50000000\r\n\r\n"
        )
        + b"a,b\n"
        + b"1,2\n" * 250
    )
    before = usage(pid)
    socks, answers = [], {"503": 0, "408": 0, "other": 0, "reset": 0}
    with Prober(url) as probe:
        t0 = time.monotonic()
        for _ in range(2000):
            try:
                s = socket.create_connection((host, int(port)), timeout=5)
                s.sendall(head)
                socks.append(s)
            except OSError:
                answers["reset"] += 1
        top = peak_of(pid, 2.0, before)
        deadline = t0 + 45
        for s in socks:
            s.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                data = s.recv(64)
            except OSError:
                data = b""
            key = data[9:12].decode() if data.startswith(b"HTTP/1.1") else "reset"
            answers[key if key in answers else "other"] += 1
            s.close()
        elapsed = time.monotonic() - t0
    note = (
        f"{answers['503']} refused at once (503), {answers['408']} cut after the body timeout "
        f"(408), {answers['reset'] + answers['other']} other; all answered in {elapsed:.0f} s"
    )
    return row("stall", "2 000 uploads stalled after 1 kB", before, top, probe.summary(), note)


def attack_slowloris(url: str, pid: int) -> str:
    host, port = url.split("//")[1].split(":")
    before = usage(pid)
    socks = []
    with Prober(url) as probe:
        t0 = time.monotonic()
        for _ in range(1000):
            try:
                s = socket.create_connection((host, int(port)), timeout=5)
                s.sendall(b"GET /v1/datasets HTT")
                socks.append(s)
            except OSError:
                pass
        top = peak_of(pid, 2.0, before)
        codes: dict[str, int] = {}
        for s in socks:
            s.settimeout(max(0.1, t0 + 20 - time.monotonic()))
            try:
                data = s.recv(64)
            except OSError:
                data = b""
            code = data[9:12].decode() if data.startswith(b"HTTP/1.1") else "none"
            codes[code] = codes.get(code, 0) + 1
            s.close()
        elapsed = time.monotonic() - t0
    note = (
        ", ".join(f"{v} × {k}" for k, v in sorted(codes.items()))
        + f"; all closed in {elapsed:.0f} s"
    )
    return row("slowloris", "1 000 half request lines", before, top, probe.summary(), note)


def _big_json() -> bytes:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(2_300_000, 2)).round(8)
    return json.dumps({"samples": a.tolist()}).encode()


def attack_json(url: str, pid: int) -> list[str]:
    body = _big_json()
    out = []
    for path, what in (
        ("/v1/datasets", f"one {len(body) / 2**20:.0f} MiB JSON upload"),
        ("/v1/estimates/est_nope/evaluate", "the same body to /evaluate of an unknown id"),
    ):
        before = usage(pid)
        with Prober(url) as probe:
            t0 = time.perf_counter()
            r = httpx.post(
                url + path, content=body, headers={"content-type": "application/json"}, timeout=300
            )
            took = time.perf_counter() - t0
            top = usage(pid)
        out.append(
            row("json", what, before, top, probe.summary(), f"{r.status_code} in {took:.1f} s")
        )
    return out


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def _queued_job(c: httpx.Client) -> str:
    rng = np.random.default_rng(1)
    ids = []
    for shift in (0.0, 1.0):
        r = c.post(
            "/v1/datasets",
            content=_npy(rng.normal(size=(200, 2)) + shift),
            headers={"content-type": "application/x-npy"},
        )
        ids.append(r.json()["id"])
    config = {"steps": 50_000, "min_steps": 50_000, "patience": 0, "width": 16, "depth": 2}
    r = c.post("/v1/estimates", json={"source": ids[0], "target": ids[1], "config": config})
    return r.json()["id"]


def _list_latency(c: httpx.Client, n: int = 50) -> float:
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        c.get("/v1/estimates?limit=50")
        ts.append(time.perf_counter() - t)
    return 1000 * statistics.median(ts)


def attack_sse(url: str, pid: int) -> str:
    host, port = url.split("//")[1].split(":")
    with other_client(url) as c:
        job = _queued_job(c)
        base_ms = _list_latency(c)
        before = usage(pid)
        socks = []
        req = f"GET /v1/estimates/{job}/events HTTP/1.1\r\nHost: x\r\n"
        req += "Accept: text/event-stream\r\n\r\n"
        for _ in range(1000):
            s = socket.create_connection((host, int(port)), timeout=5)
            s.sendall(req.encode())
            socks.append(s)
        time.sleep(10)  # every stream set up and idle
        with Prober(url) as probe:
            loaded_ms = _list_latency(c)
            top = peak_of(pid, 1.0, before)
        for s in socks:
            s.close()
        c.post(f"/v1/estimates/{job}/cancel")
    note = (
        f"GET /v1/estimates?limit=50: {base_ms:.1f} ms alone, {loaded_ms:.1f} ms with the streams "
        f"({100 * (loaded_ms - base_ms) / base_ms:+.0f} %)"
    )
    return row("sse", "1 000 idle /events streams", before, top, probe.summary(), note)


def attack_queue(url: str, pid: int) -> str:
    with httpx.Client(base_url=url, timeout=30) as c:
        rng = np.random.default_rng(2)
        ids = [
            c.post(
                "/v1/datasets",
                content=_npy(rng.normal(size=(100, 2)) + k),
                headers={"content-type": "application/x-npy"},
            ).json()["id"]
            for k in range(2)
        ]
        before = usage(pid)
        codes: dict[int, int] = {}
        config = {"steps": 50_000, "width": 16, "depth": 2}
        with Prober(url) as probe:
            t0 = time.perf_counter()
            for i in range(1000):
                r = c.post(
                    "/v1/estimates",
                    json={"source": ids[0], "target": ids[1], "seed": i, "config": config},
                )
                codes[r.status_code] = codes.get(r.status_code, 0) + 1
            took = time.perf_counter() - t0
            top = usage(pid)
    note = ", ".join(f"{v} × {k}" for k, v in sorted(codes.items())) + f" in {took:.1f} s"
    return row("queue", "1 000 submissions of 50 000-step jobs", before, top, probe.summary(), note)


ATTACKS: dict[str, tuple[Callable[[str, int], str | list[str]], dict[str, str]]] = {
    "stall": (attack_stall, {}),
    "slowloris": (attack_slowloris, {}),
    "json": (attack_json, {}),
    "sse": (
        attack_sse,
        {"LIPWASS_MAX_CLIENT_CONNECTIONS": "1200", "LIPWASS_MAX_CONNECTIONS": "1500"},
    ),
    "queue": (attack_queue, {}),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", help="comma-separated attacks (default: all)")
    args = p.parse_args()
    names = args.only.split(",") if args.only else list(ATTACKS)
    print("| attack | what | fds | threads | resident memory (peak) | /healthz during | outcome |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name in names:
        fn, env = ATTACKS[name]
        with server(env) as (url, proc):
            rows = fn(url, proc.pid)
        for r in [rows] if isinstance(rows, str) else rows:
            print(r, flush=True)


if __name__ == "__main__":
    main()
