"""Upload throughput and server memory: a 10^6 x 64 float32 array (256 MB) over loopback, as
``.npy`` and/or as Parquet (pyarrow's default writer: snappy, dictionary, one row group).

Starts the service as a real process (uvicorn, embedded mode, a fresh data folder; a fresh server
per format), streams the file with httpx, and reports MB/s (10^6 bytes of the file per second,
whole request: send, validation, hashing, storage and answer) and the growth of the server's peak
resident memory (VmHWM) over its resident memory before the first upload, against the array
size. Each run changes one value so that every upload is new data (201), then the last file is
sent once more (the 200 path). With both formats, the last new data of each must get the same
sha256 (one dataset whatever the format).

    .venv/bin/python bench/upload.py [--n 1000000] [--d 64] [--runs 3] [--baselines]
                                     [--formats npy,parquet]

``--baselines`` also sends the same file through raw TCP loopback and through a bare Starlette
route that only writes the body to a file: the ceilings of this machine, at this moment (on a
shared machine they move with the load), against which the service's figure reads.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: bench.service is importable

from bench.service import free_port  # noqa: E402


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of ``pid`` in bytes."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def chunks(path: Path, size: int = 1 << 20) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while block := f.read(size):
            yield block


def start_server(cmd: list[str], env: dict[str, str], stderr: object, health: str):
    """Start ``cmd`` and wait until ``health`` answers 200 (or any answer when 404 is fine)."""
    server = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=stderr)
    deadline = time.monotonic() + 60
    while True:
        try:
            httpx.get(health, timeout=1)
            return server
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline or server.poll() is not None:
            server.kill()
            raise SystemExit("the server did not start")
        time.sleep(0.2)


def uvicorn_cmd(app: str, port: int, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "uvicorn", app, *extra, "--host", "127.0.0.1", "--port", str(port),
        "--log-level", "warning", "--no-access-log",
    ]  # fmt: skip


async def drain_app(scope, receive, send) -> None:
    """Baseline: a Starlette route that only writes the body to a file (no checks, no hash)."""
    from starlette.requests import Request
    from starlette.responses import Response

    if scope["type"] != "http":
        return
    request = Request(scope, receive)
    with open(os.environ["DRAIN_TO"], "wb", buffering=1 << 20) as f:
        async for chunk in request.stream():
            f.write(chunk)
        os.fsync(f.fileno())
    await Response(status_code=204)(scope, receive, send)


def _raw_sink(port_q: object, n: int, out: str) -> None:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port_q.put(srv.getsockname()[1])  # type: ignore[attr-defined]
    conn, _ = srv.accept()
    buf, got = bytearray(1 << 20), 0
    with open(out, "wb", buffering=0) as f:
        while got < n and (k := conn.recv_into(buf)):
            f.write(memoryview(buf)[:k])
            got += k
        os.fsync(f.fileno())
    conn.sendall(b"ok")
    conn.close()


def baselines(array: Path, size: int, tmp: Path, runs: int) -> None:
    """The same bytes through (a) raw TCP loopback and (b) a bare Starlette drain route."""
    import multiprocessing as mp

    raw = []
    for _ in range(runs):
        q: mp.Queue = mp.Queue()
        p = mp.Process(target=_raw_sink, args=(q, size, str(tmp / "raw.out")))
        p.start()
        conn = socket.create_connection(("127.0.0.1", q.get()))
        t0 = time.perf_counter()
        with open(array, "rb") as f:
            conn.sendfile(f)
        conn.recv(2)
        raw.append(size / (time.perf_counter() - t0) / 1e6)
        p.join()
        conn.close()
    print(
        f"baseline raw TCP loopback (sendfile -> recv_into -> file + fsync, no HTTP): median "
        f"{statistics.median(raw):.0f} MB/s (min {min(raw):.0f}, max {max(raw):.0f})"
    )
    port = free_port()
    env = {**os.environ, "DRAIN_TO": str(tmp / "drain.out")}
    cmd = uvicorn_cmd("upload:drain_app", port, "--app-dir", str(Path(__file__).parent))
    server = start_server(cmd, env, None, f"http://127.0.0.1:{port}/")
    rates = []
    try:
        with httpx.Client(timeout=600) as client:
            for _ in range(runs):
                headers = {"content-type": "application/x-npy", "content-length": str(size)}
                t0 = time.perf_counter()
                client.post(f"http://127.0.0.1:{port}/", content=chunks(array), headers=headers)
                rates.append(size / (time.perf_counter() - t0) / 1e6)
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(
        f"baseline bare Starlette route draining to a file (same httpx client): median "
        f"{statistics.median(rates):.0f} MB/s (min {min(rates):.0f}, max {max(rates):.0f})"
    )


def make_array(path: Path, n: int, d: int) -> int:
    """Write an n x d float32 .npy in slabs (the benchmark client stays small too)."""
    rng = np.random.default_rng(0)
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, d))
    step = max(1, (16 << 20) // (4 * d))
    for i in range(0, n, step):
        mm[i : i + step] = rng.standard_normal((min(step, n - i), d), dtype=np.float32)
    mm.flush()
    del mm
    return n * d * 4


def bump(path: Path, run: int) -> None:
    """Change the first value in place: new data, so a new dataset (and a full store)."""
    mm = np.load(path, mmap_mode="r+")
    mm[0, 0] = float(run) + 0.5
    mm.flush()
    del mm


CONTENT_TYPES = {"npy": "application/x-npy", "parquet": "application/vnd.apache.parquet"}


def write_parquet(array: Path, out: Path) -> None:
    """The array as a Parquet file with columns x0 … x{d-1}, pyarrow's default writer options."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    mm = np.load(array, mmap_mode="r")
    table = pa.table({f"x{j}": np.ascontiguousarray(mm[:, j]) for j in range(mm.shape[1])})
    del mm
    pq.write_table(table, out)


def measure(fmt: str, array: Path, tmp_path: Path, runs: int, nbytes: int) -> dict:
    """``runs`` new uploads of ``fmt`` and one repeat against a fresh server: the figures."""
    body = array if fmt == "npy" else tmp_path / "x.parquet"
    port = free_port()
    env = {
        **os.environ,
        "LIPWASS_DATA_DIR": str(tmp_path / f"data-{fmt}"),
        "LIPWASS_LOG_LEVEL": "INFO",
        "LIPWASS_MAX_BODY_BYTES": str(4 * 1024**3),
    }
    cmd = uvicorn_cmd("service.app:create_app", port, "--factory")
    log_path = tmp_path / f"server-{fmt}.log"
    log_file = open(log_path, "w")  # noqa: SIM115 - closed below
    base = f"http://127.0.0.1:{port}"
    server = start_server(cmd, env, log_file, f"{base}/healthz")
    try:
        before = proc_status(server.pid)
        rates, codes, cpu, loads, sha = [], [], [], [], ""
        with httpx.Client(timeout=600) as client:
            for run in range(runs + 1):
                if run < runs:
                    bump(array, run)
                    if fmt == "parquet":
                        write_parquet(array, body)  # not timed
                size = body.stat().st_size
                headers = {"content-type": CONTENT_TYPES[fmt], "content-length": str(size)}
                c0, t0 = cpu_seconds(server.pid), time.perf_counter()
                r = client.post(f"{base}/v1/datasets", content=chunks(body), headers=headers)
                dt = time.perf_counter() - t0
                cpu.append(cpu_seconds(server.pid) - c0)
                if r.status_code not in (200, 201):
                    raise SystemExit(f"upload failed: {r.status_code} {r.text}")
                codes.append(r.status_code)
                rates.append(size / dt / 1e6)
                loads.append(os.getloadavg()[0])
                sha = r.json()["sha256"]
                print(
                    f"{fmt} run {run}: HTTP {r.status_code} {dt:.2f} s {size / dt / 1e6:.0f} MB/s "
                    f"({nbytes / dt / 1e6:.0f} MB/s of array), server CPU {cpu[-1]:.2f} s, "
                    f"load average {loads[-1]:.1f}"
                )
        after = proc_status(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=30)
        log_file.close()
    for line in log_path.read_text().splitlines():
        if '"dataset upload' in line:
            print("server:", json.loads(line)["msg"])
    return {
        "size": body.stat().st_size,
        "rates": rates,
        "codes": codes,
        "cpu": cpu,
        "growth": after["VmHWM"] - before["VmRSS"],
        "before": before["VmRSS"],
        "peak": after["VmHWM"],
        "sha256": sha,
        "loads": loads,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--formats", default="npy", help="comma-separated: npy, parquet")
    ap.add_argument(
        "--baselines", action="store_true", help="also time raw TCP and a bare Starlette route"
    )
    args = ap.parse_args()
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    if not formats or set(formats) - set(CONTENT_TYPES):
        raise SystemExit(f"--formats: choose among {', '.join(CONTENT_TYPES)}")

    results = {}
    with tempfile.TemporaryDirectory(prefix="lipwass-bench-upload-") as tmp:
        tmp_path = Path(tmp)
        array = tmp_path / "x.npy"
        nbytes = make_array(array, args.n, args.d)
        for fmt in formats:
            make_array(array, args.n, args.d)  # the same data for every format
            results[fmt] = measure(fmt, array, tmp_path, args.runs, nbytes)
        if args.baselines:
            baselines(array, array.stat().st_size, tmp_path, args.runs)
    for fmt, res in results.items():
        new, cpu = res["rates"][: args.runs], res["cpu"][: args.runs]
        size, growth = res["size"], res["growth"]
        print(
            f"upload {args.n} x {args.d} float32 as {fmt} ({size / 1e6:.0f} MB file, "
            f"{nbytes / 1e6:.0f} MB array): median {statistics.median(new):.0f} MB/s of file "
            f"({statistics.median(new) * nbytes / size:.0f} MB/s of array) over {args.runs} new "
            f"uploads (min {min(new):.0f}, max {max(new):.0f}); same data again "
            f"(HTTP {res['codes'][-1]}): {res['rates'][-1]:.0f} MB/s; load average "
            f"{min(res['loads']):.1f}-{max(res['loads']):.1f}"
        )
        print(
            f"  server CPU per new upload: median {statistics.median(cpu):.2f} s "
            f"(= {size / statistics.median(cpu) / 1e6:.0f} MB of file per CPU second)"
        )
        print(
            f"  server RSS before {res['before'] / 1e6:.0f} MB, peak {res['peak'] / 1e6:.0f} MB: "
            f"growth {growth / 1e6:.0f} MB = {growth / nbytes:.2f} x the array "
            f"({nbytes / 1e6:.0f} MB)"
        )
    if len(results) > 1:
        shas = {fmt: res["sha256"] for fmt, res in results.items()}
        print(f"same dataset (sha256) in every format: {len(set(shas.values())) == 1} {shas}")


if __name__ == "__main__":
    main()
