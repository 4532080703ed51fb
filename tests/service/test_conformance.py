"""The API as an outside tool sees it: schemathesis, every check and every phase (examples,
coverage, fuzzing, stateful: create a dataset, then follow the OpenAPI links to the routes that
take its id), against a real `lipwass serve` over HTTP. Configuration and the one documented
allowance: tests/service/conformance/schemathesis.toml."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from servers import Server

pytestmark = pytest.mark.slow

HERE = Path(__file__).parent / "conformance"
# Small, fast jobs: whatever the fuzzer submits finishes in a second or two on this machine.
SMALL_SERVER = {
    "LIPWASS_MAX_STEPS": "40",
    "LIPWASS_MAX_WIDTH": "32",
    "LIPWASS_MAX_DEPTH": "3",
    "LIPWASS_MAX_BATCH_SIZE": "256",
    "LIPWASS_MAX_EVAL_CHUNK": "4096",
    "LIPWASS_MAX_ORTHO_ITERS": "20",
    "LIPWASS_EXACT_MAX_PAIRS": "250000",
    "LIPWASS_JOB_TIMEOUT_S": "20",
    "LIPWASS_EVENTS_POLL_S": "0.1",
    "LIPWASS_MAX_EVALUATE_POINTS": "1000",
}


def test_schemathesis_all_checks_all_phases(tmp_path: Path) -> None:
    server = Server(tmp_path / "data", tmp_path / "server.log", SMALL_SERVER)
    try:
        server.wait_ready()
        cmd = [sys.executable, "-m", "schemathesis.cli", "--no-color"]
        cmd += ["--config-file", str(HERE / "schemathesis.toml"), "run"]
        cmd += [f"{server.url}/openapi.json", "--checks", "all", "--seed", "1", "-w", "1"]
        cmd += ["--report", "junit", "--report-dir", str(tmp_path / "reports")]
        env = {**os.environ, "SCHEMATHESIS_HOOKS": ""}
        out = subprocess.run(
            cmd, capture_output=True, text=True, timeout=420, env=env, cwd=tmp_path
        )
    finally:
        server.kill()
    report = out.stdout[-6000:] + out.stderr[-2000:]
    assert out.returncode == 0, report + "\n--- server log ---\n" + server.tail()
    # It reached the stateful phase and followed links from a created dataset.
    assert "Stateful" in out.stdout and "No issues found" in out.stdout, report
