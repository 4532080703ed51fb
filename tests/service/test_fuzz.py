"""Fuzz the API from its own OpenAPI (schemathesis, in-process): no 5xx, errors are problem+json.

The stateful phase (sequences following the OpenAPI links) runs against a real server in
test_conformance.py, where the state it builds lives in a server, not in this process.

Bounded for CI: a few examples per operation, on an app whose executor only records jobs, with
one stored dataset and one finished estimate so that some generated ids can hit real rows.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from service.app import create_app
from service.settings import Settings
from tests.service.conftest import RecordingExecutor

MAX_EXAMPLES = 12
PROBLEM = "application/problem+json"


RESULT = {
    "method": "lipschitz", "w1": 1.0, "lower_bound": 1.0, "lipschitz_constant": 1.0,
    "holdout": None, "exact": None, "relative_gap": None, "diagnostics": None,
    "potential_center": 0.0, "device": "cpu", "seconds": 0.1, "steps": 3, "config": None,
}  # fmt: skip


@pytest.fixture
def fuzz_app(tmp_path):
    """The app with one dataset, one queued and one finished estimate (with a potential)."""
    import torch
    from fastapi.testclient import TestClient
    from sqlalchemy import update

    from lipcore.potential import save_potential
    from service.store import EstimateRow

    # job_timeout_s bounds how long /events follows a job that never runs here.
    s = Settings(_env_file=None, data_dir=tmp_path / "data", job_timeout_s=0.3)
    app = create_app(s, executor=RecordingExecutor())
    x = np.random.default_rng(0).normal(size=(5, 2))
    with TestClient(app) as c:
        ds = c.post("/v1/datasets", content=_npy(x), headers={"content-type": "application/x-npy"})
        assert ds.status_code == 201, ds.text
        ids = {"dataset_id": ds.json()["id"]}
        body = {"source": ids["dataset_id"], "target": ids["dataset_id"]}
        queued, done = (
            c.post("/v1/estimates", json={**body, "seed": k}).json()["id"] for k in (0, 1)
        )
    model = torch.nn.Sequential(torch.nn.Linear(2, 1, dtype=torch.float64))
    save_potential(app.state.blobs.potential_path(done), model, {"d": 2, "lipschitz_constant": 1.0})
    with app.state.db.session() as session:
        session.execute(
            update(EstimateRow)
            .where(EstimateRow.id == done)
            .values(status="succeeded", result=RESULT, history=[[1, 0.5], [3, 1.0]])
        )
    app.state.fuzz_ids = {**ids, "estimate_id": done, "queued_id": queued}
    return app


def _npy(x: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, x)
    return buf.getvalue()


def problem_json_on_errors(ctx, response, case) -> None:
    """Every 4xx/5xx answer is an RFC 9457 document with its status in the body."""
    if response.status_code < 400:
        return None
    ctype = response.headers.get("content-type", [""])
    ctype = ctype[0] if isinstance(ctype, list) else ctype
    assert ctype.startswith(PROBLEM), f"{response.status_code} answered with {ctype!r}"
    body = response.json()
    assert body.get("status") == response.status_code and body.get("title"), body
    return None


def test_no_server_errors_and_problem_json(fuzz_app) -> None:
    """Every operation, positive and negative data: no 5xx, problem+json on every error."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", fuzz_app)
    seen: dict[str, set[int]] = {}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 12, [op.label for op in operations]
    t0 = time.perf_counter()
    real = fuzz_app.state.fuzz_ids
    for op in operations:
        names = {p.name for p in op.iter_parameters() if p.location == "path"}
        fixed = {k: v for k, v in real.items() if k in names}
        if op.method.upper() == "DELETE" and "estimate_id" in fixed:
            fixed["estimate_id"] = real["queued_id"]  # keep the finished one for the others
        strategies = [op.as_strategy(mode) for mode in GenerationMode]
        if fixed:  # also hit the stored rows, with fuzzed queries and bodies
            strategies += [op.as_strategy(mode, path_parameters=fixed) for mode in GenerationMode]

        @given(case=st.one_of(strategies))
        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        def run(case) -> None:
            t = time.perf_counter()
            response = case.call()
            case.validate_response(response, checks=[not_a_server_error])
            problem_json_on_errors(None, response, case)
            assert time.perf_counter() - t < 10, f"{case.operation.label} took over 10 s"
            seen.setdefault(case.operation.label, set()).add(response.status_code)

        run()
    assert time.perf_counter() - t0 < 120
    # The fuzzer reached past validation somewhere (not only 404/422 everywhere).
    assert any(code < 400 for codes in seen.values() for code in codes), seen
    for label in ("report.png", "/potential"):
        codes = next(c for k, c in seen.items() if k.endswith(label))
        assert 200 in codes, (label, codes)
