"""End to end: `lipwass serve` as a real process, driven over HTTP by the CLI and the client.

Uploads two datasets, estimates with an exact cross-check (through `lipwass estimate --server`),
follows SSE while cancelling a long job, then SIGKILLs the server's whole process tree while a
job runs, restarts it on the same data folder and finds everything still there: datasets,
finished jobs with their results and potentials, and the interrupted job finished (attempt 2).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from jobfixtures import wait_for
from servers import Server

from service.client import Client, parse_sse

pytestmark = pytest.mark.slow

TINY = {"width": 16, "depth": 2, "steps": 30, "batch_size": 64}
LONG = {**TINY, "steps": 50_000, "patience": 0, "progress_every": 1}
MEDIUM = {**TINY, "patience": 0, "progress_every": 5}  # steps: sized to this machine below
MEDIUM_SECONDS = 8.0  # the interrupted job's training time, so the kill lands mid-run
REPO = Path(__file__).resolve().parents[2]
E2E_ENV = {
    "LIPWASS_LEASE_S": "3",
    "LIPWASS_HEARTBEAT_S": "0.3",
    "LIPWASS_REAPER_INTERVAL_S": "0.3",
    "LIPWASS_PROGRESS_INTERVAL_S": "0.1",
    "LIPWASS_EVENTS_POLL_S": "0.1",
    "LIPWASS_CANCEL_GRACE_S": "3",
    "LIPWASS_REQUEUE_AFTER_S": "2",
}


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Callable[[], Server]]:
    made: list[Server] = []

    def start() -> Server:
        s = Server(tmp_path / "data", tmp_path / "server.log", E2E_ENV)
        made.append(s)
        s.wait_ready()
        return s

    yield start
    for s in made:
        s.kill()


def test_serve_estimate_cancel_crash_restart(servers, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 2)), rng.normal(size=(50, 2)) + [1.5, 0.0]
    np.save(tmp_path / "x.npy", x)
    np.savetxt(tmp_path / "y.csv", y, delimiter=",", header="u,v", comments="", fmt="%.17g")

    t0 = time.monotonic()

    def phase(name: str) -> None:  # shown with the failure report, and with -s
        print(f"[e2e] {time.monotonic() - t0:6.1f} s  {name}", file=sys.stderr)

    server = servers()
    phase("server ready")
    c = Client(server.url, timeout=30)

    # 1. The CLI against the server: upload both files, estimate with a cross-check, wait.
    cmd = [sys.executable, "-m", "service.cli", "estimate", str(tmp_path / "x.npy")]
    cmd += [str(tmp_path / "y.csv"), "--server", server.url, "--method", "lipschitz"]
    cmd += ["--crosscheck", "always", "--config", json.dumps(TINY), "--json", "-q"]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr + server.tail()
    first = json.loads(out.stdout)
    assert first["method"] == "lipschitz" and first["w1"] == first["lower_bound"]
    assert first["exact"]["solver"] == "pot.emd2"
    assert first["lower_bound"] <= first["exact"]["value"] * (1 + 1e-9)
    assert first["relative_gap"] == pytest.approx(
        (first["exact"]["value"] - first["lower_bound"]) / first["exact"]["value"]
    )
    assert first["lipschitz_constant"] > 0 and first["holdout"]["n_source"] == 12
    assert set(first["diagnostics"]["grad_norm"]) == {"q05", "q50", "q95"}
    done_id = first["id"]
    phase("CLI estimate done")

    # The same data again is the same dataset (200), whichever format it came in.
    src = c.upload(x)["id"]
    tgt = c.upload(tmp_path / "y.csv")["id"]
    done = c.get(done_id)
    assert (done["source"], done["target"], done["status"]) == (src, tgt, "succeeded")
    potential = tmp_path / "f.safetensors"
    c.download_potential(done_id, potential)
    values = c.evaluate(done_id, x[:3], gradient=True)
    assert len(values["values"]) == 3 and len(values["gradients"][0]) == 2
    assert all(np.linalg.norm(g) <= 1 + 1e-6 for g in values["gradients"])  # 1-Lipschitz
    png = c.report_png(done_id)
    assert png[:4] == b"\x89PNG"

    phase("potential, evaluate, report checked")

    # 2. Follow SSE on a long job; once it has trained a while (which also measures this
    # machine's speed), cancel it and see the stream end with the job cancelled.
    long_id = c.submit(src, tgt, method="lipschitz", crosscheck="never", config=LONG)["id"]
    events: list[str] = []
    seen: list[dict] = []
    with httpx.stream("GET", f"{server.url}/v1/estimates/{long_id}/events", timeout=120) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        for event, data in parse_sse(r.iter_lines()):
            events.append(event)
            if event == "progress":
                assert data["total_steps"] == LONG["steps"]
                seen.append(data)
                trained = data["step"] >= seen[0]["step"] + 20
                if trained and data["elapsed_s"] > seen[0]["elapsed_s"] and "cancel" not in events:
                    assert c.cancel(long_id)["id"] == long_id
                    events.append("cancel")
            if event in ("result", "error"):
                final = data
                break
    assert events[0] == "progress" and "cancel" in events and events[-1] == "error", events
    assert final["status"] == "cancelled"
    assert final["progress"]["step"] < LONG["steps"]
    first, last = seen[0], next(p for p in seen if p["step"] >= seen[0]["step"] + 20)
    rate = (last["step"] - first["step"]) / (last["elapsed_s"] - first["elapsed_s"])  # steps/s
    medium = {**MEDIUM, "steps": int(min(max(MEDIUM_SECONDS * rate, 40), 5000))}

    phase(f"long job cancelled; {rate:.0f} steps/s, interrupted job: {medium['steps']} steps")

    # 3. Crash the server (and its job child) while a job runs; restart on the same data.
    medium_id = c.submit(src, tgt, method="lipschitz", crosscheck="never", config=medium)["id"]
    wait_for(
        lambda: (c.get(medium_id).get("progress") or {}).get("step", 0) > 0,
        120,
        "the medium job to run",
        every=0.2,
        detail=server.tail,
    )
    phase("medium job running; killing the server")
    server.kill()
    c.close()

    server = servers()
    phase("restarted")
    c = Client(server.url, timeout=30)
    listed = {d["id"] for d in c.datasets()["items"]}
    assert {src, tgt} <= listed
    again = c.get(done_id)
    assert again["status"] == "succeeded" and again["result"] == done["result"]
    assert c.get(long_id)["status"] == "cancelled"
    restored = tmp_path / "g.safetensors"
    c.download_potential(done_id, restored)
    assert restored.read_bytes() == potential.read_bytes()
    import lipcore

    assert lipcore.read_potential_metadata(restored)["d"] == 2

    final = c.wait(medium_id, timeout=240)
    phase("medium job finished")
    assert final["status"] == "succeeded" and final["attempt"] >= 2, final
    assert final["result"]["steps"] == medium["steps"]
    metrics = httpx.get(server.url + "/metrics", timeout=10).text
    assert 'lipwass_jobs{status="succeeded"} 2.0' in metrics
    assert 'lipwass_jobs{status="cancelled"} 1.0' in metrics
