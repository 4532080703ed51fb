"""The API as an outside tool sees it: schemathesis, every check and every phase (examples,
coverage, fuzzing, stateful: create a dataset, then follow the OpenAPI links to the routes that
take its id), against a real `lipwass serve` over HTTP. Configuration and the one documented
allowance: tests/service/conformance/schemathesis.toml."""

from __future__ import annotations

import os
import re
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
    # The stateful phase ran its sequences (how many links it covers depends on how often the
    # generator hits a valid upload; test_links_lead_to_the_created_resources checks each link).
    scenarios = re.search(r"Scenarios:\s+(\d+)", out.stdout)
    assert scenarios is not None and int(scenarios.group(1)) >= 20, report


def test_links_lead_to_the_created_resources(api) -> None:
    """Every OpenAPI link of the create routes, followed from a real dataset and estimate,
    reaches the resource (no 404): the ids the links carry are the ones the routes take."""
    spec = api.get("/openapi.json").json()
    by_id = {
        op["operationId"]: (path, method)
        for path, ops in spec["paths"].items()
        for method, op in ops.items()
    }
    upload = spec["paths"]["/v1/datasets"]["post"]["responses"]["201"]["links"]
    submit = spec["paths"]["/v1/estimates"]["post"]["responses"]["202"]["links"]
    assert {"GetDataset", "EstimateAgainstItself"} <= set(upload) and "GetEstimate" in submit
    dataset = api.post("/v1/datasets", json={"samples": [[0.0, 1.0], [2.0, 3.0]]}).json()
    body = upload["EstimateAgainstItself"]["requestBody"]
    body = {k: dataset["id"] if v == "$response.body#/id" else v for k, v in body.items()}
    estimate = api.post("/v1/estimates", json=body)
    assert estimate.status_code == 202, estimate.text
    for links, created in ((upload, dataset), (submit, estimate.json())):
        for name, link in links.items():
            path, method = by_id[link["operationId"]]
            if method == "delete" or "parameters" not in link:
                continue
            if link["operationId"] == "estimate_events":  # streams until the job ends
                continue
            ((param, expr),) = link["parameters"].items()
            assert expr == "$response.body#/id"
            where, _, key = param.rpartition(".")
            if where == "query":
                r = api.request(method.upper(), path, params={key: created["id"]})
            else:
                r = api.request(method.upper(), path.replace("{" + key + "}", created["id"]))
            assert r.status_code != 404 or "No potential" in r.text, (name, r.text)
