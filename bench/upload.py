"""Upload throughput and server memory: a 10^6 x 64 float32 .npy (256 MB) over loopback.

Starts the service as a real process (uvicorn, embedded mode, a fresh data folder), streams the
file with httpx, and reports MB/s (10^6 bytes per second, whole request: send, validation,
hashing, storage and answer) and the growth of the server's peak resident memory (VmHWM) over its
resident memory before the first upload, against the array size. Each run changes one value so
that every upload is new data (201), then the last array is sent once more (the 200 path).

    .venv/bin/python bench/upload.py [--n 1000000] [--d 64] [--runs 3]
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="lipwass-bench-upload-") as tmp:
        tmp_path = Path(tmp)
        array = tmp_path / "x.npy"
        nbytes = make_array(array, args.n, args.d)
        size = array.stat().st_size
        port = free_port()
        env = {
            **os.environ,
            "LIPWASS_DATA_DIR": str(tmp_path / "data"),
            "LIPWASS_LOG_LEVEL": "INFO",
            "LIPWASS_MAX_BODY_BYTES": str(4 * 1024**3),
        }
        cmd = [
            sys.executable, "-m", "uvicorn", "--factory", "service.app:create_app",
            "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
            "--no-access-log",
        ]  # fmt: skip
        log_path = tmp_path / "server.log"
        log_file = open(log_path, "w")  # noqa: SIM115 - closed below
        server = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=log_file)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("the server did not start")
                time.sleep(0.2)
            before = proc_status(server.pid)
            rates, codes, cpu = [], [], []
            with httpx.Client(timeout=600) as client:
                for run in range(args.runs + 1):
                    if run < args.runs:
                        bump(array, run)
                    headers = {"content-type": "application/x-npy", "content-length": str(size)}
                    c0, t0 = cpu_seconds(server.pid), time.perf_counter()
                    r = client.post(f"{base}/v1/datasets", content=chunks(array), headers=headers)
                    dt = time.perf_counter() - t0
                    cpu.append(cpu_seconds(server.pid) - c0)
                    if r.status_code not in (200, 201):
                        raise SystemExit(f"upload failed: {r.status_code} {r.text}")
                    codes.append(r.status_code)
                    rates.append(size / dt / 1e6)
                    print(
                        f"run {run}: HTTP {r.status_code} {dt:.2f} s {size / dt / 1e6:.0f} MB/s, "
                        f"server CPU {cpu[-1]:.2f} s, load average {os.getloadavg()[0]:.1f}"
                    )
            after = proc_status(server.pid)
        finally:
            server.terminate()
            server.wait(timeout=30)
            log_file.close()
        for line in log_path.read_text().splitlines():
            if '"dataset upload' in line:
                print("server:", json.loads(line)["msg"])
    growth = after["VmHWM"] - before["VmRSS"]
    new = rates[: args.runs]
    print(
        f"upload {args.n} x {args.d} float32 .npy ({size / 1e6:.0f} MB): "
        f"median {statistics.median(new):.0f} MB/s over {args.runs} new uploads "
        f"(min {min(new):.0f}, max {max(new):.0f}); same data again (HTTP {codes[-1]}): "
        f"{rates[-1]:.0f} MB/s"
    )
    print(
        f"server CPU per new upload: median {statistics.median(cpu[: args.runs]):.2f} s "
        f"(= {size / statistics.median(cpu[: args.runs]) / 1e6:.0f} MB per CPU second)"
    )
    print(
        f"server RSS before {before['VmRSS'] / 1e6:.0f} MB, peak {after['VmHWM'] / 1e6:.0f} MB: "
        f"growth {growth / 1e6:.0f} MB = {growth / nbytes:.2f} x the array ({nbytes / 1e6:.0f} MB)"
    )


if __name__ == "__main__":
    main()
