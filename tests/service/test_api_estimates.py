"""The estimate resource: submission and its validation, idempotency, listing, cancel, delete,
SSE, and (with a real, tiny job run in-process) results, potential download and /evaluate."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import jobfixtures
import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

import lipcore
from service import estimates as estimates_service
from service.settings import Settings
from service.store import EstimateRow

TINY = {"width": 16, "depth": 2, "steps": 30, "batch_size": 64, "min_steps": 0}


def add_dataset(client: TestClient, samples: np.ndarray, weights: np.ndarray | None = None) -> str:
    """Store a dataset the way the upload route does (row + content-addressed blob)."""
    state = client.app.state
    return jobfixtures.add_dataset(state.db, state.blobs, samples, weights, distinct=False)


def pair(client: TestClient, n: int = 40, m: int = 40, d: int = 2, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    y = rng.normal(size=(m, d)) + np.eye(d)[0] * 2.0
    return add_dataset(client, x), add_dataset(client, y)


def set_row(client: TestClient, est_id: str, **values: Any) -> None:
    with client.app.state.db.session() as s:
        s.execute(update(EstimateRow).where(EstimateRow.id == est_id).values(**values))


def sse_events(text: str) -> list[tuple[str, Any]]:
    out = []
    for block in text.strip().split("\n\n"):
        lines = block.splitlines()
        event = next((ln[7:] for ln in lines if ln.startswith("event: ")), None)
        data = next((ln[6:] for ln in lines if ln.startswith("data: ")), None)
        if event is not None:
            out.append((event, json.loads(data) if data else None))
    return out


# -- submission -------------------------------------------------------------------------------
def test_submit_answers_202_with_location_and_hands_the_job_over(api, recording) -> None:
    src, tgt = pair(api)
    r = api.post("/v1/estimates", json={"source": src, "target": tgt, "config": {"width": 16}})
    assert r.status_code == 202, r.text
    body = r.json()
    assert r.headers["location"] == f"/v1/estimates/{body['id']}"
    assert r.headers["retry-after"] == "1" and "idempotent-replayed" not in r.headers
    assert body["id"].startswith("est_") and body["status"] == "queued"
    assert (body["method"], body["crosscheck"], body["holdout"], body["seed"]) == (
        "auto",
        "auto",
        0.2,
        0,
    )
    assert body["config"]["width"] == 16 and body["config"]["depth"] == 6  # defaults filled in
    assert body["result"] is None and body["progress"] is None and body["attempt"] == 0
    assert recording.submitted == [body["id"]]
    g = api.get(r.headers["location"])
    assert g.status_code == 200 and g.json()["id"] == body["id"]
    assert g.headers["retry-after"] == "1"


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"source": "ds_missing"}, "source"),
        ({"target": "ds_missing"}, "target"),
        ({"target": "OTHER_D"}, "target"),
        ({"config": {"widht": 16}}, "config"),
        ({"config": {"width": 15}}, "config.width"),  # maxmin needs an even width
        ({"config": {"steps": 4001}}, "config.steps"),  # over the server's max_steps
        ({"config": {"width": 130}}, "config.width"),  # over max_width
        ({"config": {"depth": 7}}, "config.depth"),
        ({"config": {"batch_size": 2049}}, "config.batch_size"),
        ({"config": {"steps": "many"}}, "config.steps"),
        ({"config": {"ortho_iters": 51}}, "config.ortho_iters"),
        ({"config": {"reproject_iters": 10**9}}, "config.reproject_iters"),
        ({"config": {"eval_chunk": 2**21}}, "config.eval_chunk"),
        ({"config": {"grad_samples": 2**40}}, "config.grad_samples"),
        ({"config": {"lr": "fast"}}, "config.lr"),
        ({"config": []}, "config"),
        ({"holdout": 1.0}, "holdout"),
        ({"holdout": -0.1}, "holdout"),
        ({"holdout": False}, "holdout"),
        ({"holdout": "0.1"}, "holdout"),
        ({"seed": -1}, "seed"),
        ({"seed": 2**63}, "seed"),
        ({"seed": True}, "seed"),
        ({"seed": 1.5}, "seed"),
        ({"method": "sinkhorn"}, "method"),
        ({"crosscheck": "sometimes"}, "crosscheck"),
        ({"surprise": 1}, "surprise"),
        ({"method": "exact", "source": "BIG", "target": "BIG"}, "method"),
        ({"crosscheck": "always", "source": "BIG", "target": "BIG"}, "crosscheck"),
        ({"holdout": 0.6, "method": "lipschitz", "source": "ONE"}, "holdout"),
    ],
)
def test_submit_rejects_bad_requests_naming_the_field(
    make_client, settings, recording, patch, field
):
    limited = settings.model_copy(
        update={
            "max_steps": 4000,
            "max_width": 128,
            "max_depth": 6,
            "max_batch_size": 2048,
            "exact_max_pairs": 100,
        }
    )
    client = make_client(limited, executor=recording)
    src, tgt = pair(client, n=5, m=5)
    names = {
        "OTHER_D": add_dataset(client, np.zeros((5, 3))),
        "BIG": add_dataset(client, np.arange(40.0).reshape(20, 2)),
        "ONE": add_dataset(client, np.ones((1, 2))),
    }
    body: dict[str, Any] = {"source": src, "target": tgt, **patch}
    body = {k: names.get(v, v) if isinstance(v, str) else v for k, v in body.items()}
    r = client.post("/v1/estimates", json=body)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    problem = r.json()
    assert field in problem["detail"]
    assert recording.submitted == []
    assert client.get("/v1/estimates").json()["total"] == 0


def test_exact_on_large_1d_sets_is_accepted(make_client, settings, recording) -> None:
    client = make_client(settings.model_copy(update={"exact_max_pairs": 10}), executor=recording)
    src = add_dataset(client, np.arange(50.0))
    tgt = add_dataset(client, np.arange(50.0) + 1)
    r = client.post("/v1/estimates", json={"source": src, "target": tgt, "method": "exact"})
    assert r.status_code == 202, r.text
    r = client.post("/v1/estimates", json={"source": src, "target": tgt, "holdout": 0})
    assert r.status_code == 202 and r.json()["holdout"] == 0.0


# -- idempotency ------------------------------------------------------------------------------
def test_idempotency_key_replays_the_same_job_and_refuses_another_body(api, recording) -> None:
    src, tgt = pair(api)
    body = {"source": src, "target": tgt, "seed": 3}
    key = {"Idempotency-Key": "k-123"}
    first = api.post("/v1/estimates", json=body, headers=key)
    # The same request written differently (defaults spelled out) is the same request.
    again = api.post(
        "/v1/estimates",
        json={**body, "method": "auto", "config": {"width": 64}},
        headers=key,
    )
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["location"] == first.headers["location"]
    assert again.headers["idempotent-replayed"] == "true"
    assert recording.submitted == [first.json()["id"]]
    other = api.post("/v1/estimates", json={**body, "seed": 4}, headers=key)
    assert other.status_code == 409
    assert first.json()["id"] in other.json()["detail"]
    # Without a key, every POST is a new job.
    assert api.post("/v1/estimates", json=body).json()["id"] != first.json()["id"]
    assert api.post("/v1/estimates", json=body, headers={"Idempotency-Key": ""}).status_code == 422


def test_idempotency_race_on_the_unique_key_returns_the_winner(api, recording, monkeypatch):
    src, tgt = pair(api)
    body = {"source": src, "target": tgt}
    winner = api.post("/v1/estimates", json=body, headers={"Idempotency-Key": "race"}).json()
    real = estimates_service.replay
    calls = []

    def blind_first(db, tenant, key, digest):  # the loser looked before the winner's insert
        calls.append(key)
        return None if len(calls) == 1 else real(db, tenant, key, digest)

    monkeypatch.setattr(estimates_service, "replay", blind_first)
    r = api.post("/v1/estimates", json=body, headers={"Idempotency-Key": "race"})
    assert r.status_code == 202 and r.json()["id"] == winner["id"]
    assert len(calls) == 2 and recording.submitted == [winner["id"]]
    r = api.post("/v1/estimates", json={**body, "seed": 9}, headers={"Idempotency-Key": "race"})
    assert r.status_code == 409


# -- list, get, cancel, delete ----------------------------------------------------------------
def test_list_filters_and_paginates_newest_first(api) -> None:
    src, tgt = pair(api)
    ids = [api.post("/v1/estimates", json={"source": src, "target": tgt}).json()["id"]]
    ids += [api.post("/v1/estimates", json={"source": src, "target": tgt}).json()["id"]]
    ids += [api.post("/v1/estimates", json={"source": src, "target": tgt}).json()["id"]]
    assert api.post(f"/v1/estimates/{ids[0]}/cancel").status_code == 202
    page = api.get("/v1/estimates", params={"limit": 2}).json()
    assert [e["id"] for e in page["items"]] == ids[::-1][:2]
    assert (page["total"], page["next_offset"]) == (3, 2)
    rest = api.get("/v1/estimates", params={"limit": 2, "offset": 2}).json()
    assert [e["id"] for e in rest["items"]] == [ids[0]] and rest["next_offset"] is None
    queued = api.get("/v1/estimates", params={"status": "queued"}).json()
    assert {e["id"] for e in queued["items"]} == set(ids[1:])
    cancelled = api.get("/v1/estimates", params={"status": "cancelled"}).json()
    assert [e["id"] for e in cancelled["items"]] == [ids[0]]
    assert api.get("/v1/estimates", params={"dataset": tgt}).json()["total"] == 3
    assert api.get("/v1/estimates", params={"dataset": "ds_none"}).json()["total"] == 0
    for bad in ({"status": "done"}, {"limit": 1001}, {"limit": 0}, {"offset": -1}):
        r = api.get("/v1/estimates", params=bad)
        assert r.status_code == 422, bad
        assert r.headers["content-type"].startswith("application/problem+json")


def test_cancel_queued_then_delete(api, recording) -> None:
    src, tgt = pair(api)
    est = api.post("/v1/estimates", json={"source": src, "target": tgt}).json()
    url = f"/v1/estimates/{est['id']}"
    assert api.delete(url).status_code == 409  # queued: cancel first
    r = api.post(f"{url}/cancel")
    assert r.status_code == 202 and r.json()["status"] == "cancelled"
    assert r.json()["finished_at"] is not None and recording.cancelled == [est["id"]]
    assert api.post(f"{url}/cancel").status_code == 409  # already finished
    g = api.get(url)
    assert g.json()["status"] == "cancelled" and "retry-after" not in g.headers
    events = sse_events(api.get(f"{url}/events").text)
    assert [e for e, _ in events] == ["error"] and events[0][1]["status"] == "cancelled"
    assert api.get(f"{url}/potential").status_code == 404
    assert api.delete(url).status_code == 204
    assert api.get(url).status_code == 404
    assert api.delete(url).status_code == 404


def test_running_job_is_flagged_not_ended_by_cancel(api) -> None:
    src, tgt = pair(api)
    est = api.post("/v1/estimates", json={"source": src, "target": tgt}).json()
    set_row(api, est["id"], status="running", attempt=1)
    url = f"/v1/estimates/{est['id']}"
    r = api.post(f"{url}/cancel")
    assert r.status_code == 202
    assert r.json()["status"] == "running" and r.json()["cancel_requested"] is True
    assert api.delete(url).status_code == 409
    for path in ("potential",):
        assert api.get(f"{url}/{path}").status_code == 409
    assert api.post(f"{url}/evaluate", json={"points": [[0, 0]]}).status_code == 409


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", ""),
        ("GET", "/events"),
        ("GET", "/potential"),
        ("POST", "/cancel"),
        ("DELETE", ""),
        ("POST", "/evaluate"),
    ],
)
def test_unknown_estimate_is_a_404_problem(api, method, path) -> None:
    kw = {"json": {"points": [[0.0]]}} if path == "/evaluate" else {}
    r = api.request(method, f"/v1/estimates/est_nope{path}", **kw)
    assert r.status_code == 404
    assert r.headers["content-type"].startswith("application/problem+json")
    assert "est_nope" in r.json()["detail"]


def test_events_stream_progress_then_the_result(make_client, settings, recording) -> None:
    client = make_client(settings.model_copy(update={"events_poll_s": 0.02}), executor=recording)
    src, tgt = pair(client)
    est = client.post("/v1/estimates", json={"source": src, "target": tgt}).json()
    progress = {"step": 10, "total_steps": 30, "objective": 1.5, "elapsed_s": 0.1}
    set_row(client, est["id"], status="running", attempt=1, progress=progress)
    seen: list[str] = []
    with client.stream("GET", f"/v1/estimates/{est['id']}/events") as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        buf = ""
        for chunk in r.iter_text():
            buf += chunk
            seen = [e for e, _ in sse_events(buf)]
            if seen == ["progress"]:
                later = {**progress, "step": 20}
                threading.Thread(
                    target=set_row, args=(client, est["id"]), kwargs={"progress": later}
                ).start()
            if seen == ["progress", "progress"]:
                set_row(client, est["id"], status="failed", error={"type": "x", "title": "boom"})
    events = sse_events(buf)
    assert [e for e, _ in events] == ["progress", "progress", "error"]
    assert events[0][1] == progress and events[1][1]["step"] == 20
    assert events[2][1]["error"]["title"] == "boom"


# -- a real job, run in-process ---------------------------------------------------------------
@pytest.fixture
def one_thread() -> Any:
    """Tiny networks train ~10x faster on one thread than with OpenMP spinning on a busy CPU."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def run(client: TestClient, settings: Settings, body: dict[str, Any]) -> dict[str, Any]:
    from service.runner import run_job

    est = client.post("/v1/estimates", json=body)
    assert est.status_code == 202, est.text
    run_job(est.json()["id"], settings)
    return client.get(est.headers["location"]).json()


def test_finished_lipschitz_job_serves_result_events_potential_and_evaluate(
    api, settings, tmp_path: Path, one_thread
) -> None:
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(60, 2)), rng.normal(size=(50, 2)) + [1.5, 0.0]
    src, tgt = add_dataset(api, x), add_dataset(api, y)
    body = {
        "source": src,
        "target": tgt,
        "method": "lipschitz",
        "crosscheck": "always",
        "config": TINY,
        "seed": 5,
    }
    est = run(api, settings, body)
    assert est["status"] == "succeeded", est["error"]
    res = est["result"]
    assert res["method"] == "lipschitz" and res["w1"] == res["lower_bound"]
    assert res["exact"]["solver"] == "pot.emd2"
    assert res["lower_bound"] <= res["exact"]["value"] * (1 + 1e-9)
    assert res["relative_gap"] == pytest.approx(
        (res["exact"]["value"] - res["lower_bound"]) / res["exact"]["value"]
    )
    assert res["lipschitz_constant"] > 0 and res["holdout"]["n_source"] == 12
    assert set(res["diagnostics"]["grad_norm"]) == {"q05", "q50", "q95"}
    assert res["config"]["width"] == 16 and 0 < res["steps"] <= 30
    url = f"/v1/estimates/{est['id']}"

    events = sse_events(api.get(f"{url}/events").text)
    assert [e for e, _ in events] == ["result"]
    assert events[0][1]["result"]["w1"] == res["w1"]

    pot = api.get(f"{url}/potential")
    assert pot.status_code == 200
    assert pot.headers["content-type"] == "application/octet-stream"
    assert f"{est['id']}.safetensors" in pot.headers["content-disposition"]
    path = tmp_path / "p.safetensors"
    path.write_bytes(pot.content)
    f = lipcore.load_potential(path).double()
    import torch

    with torch.no_grad():
        fx = f(torch.from_numpy(x))[:, 0].numpy()
        fy = f(torch.from_numpy(y))[:, 0].numpy()
    assert (fx.mean() - fy.mean()) / res["lipschitz_constant"] == pytest.approx(
        res["lower_bound"], rel=1e-6
    )

    both = np.vstack([x, y])
    r = api.post(f"{url}/evaluate", json={"points": both.tolist(), "gradient": True})
    assert r.status_code == 200, r.text
    g = np.array(r.json()["values"])
    grads = np.array(r.json()["gradients"])
    assert g.shape == (110,) and grads.shape == (110, 2)
    assert (g[:60].mean() + g[60:].mean()) / 2 == pytest.approx(0.0, abs=1e-9)  # centred
    assert g[:60].mean() - g[60:].mean() == pytest.approx(res["lower_bound"], rel=1e-6)
    assert np.linalg.norm(grads, axis=1).max() <= 1 + 1e-6
    assert "gradients" not in api.post(f"{url}/evaluate", json={"points": [[0, 0]]}).json()

    for bad in ([[0.0, 0.0, 0.0]], [[0.0, "x"]], [], [[0.0], [0.0, 0.0]]):
        r = api.post(f"{url}/evaluate", json={"points": bad})
        assert r.status_code == 422, (bad, r.text)
    for raw in (b'{"points": [[0.0, NaN]]}', b'{"points": [[1e400, 0.0]]}'):
        r = api.post(f"{url}/evaluate", content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 422, raw
    assert api.post(f"{url}/cancel").status_code == 409
    assert api.delete(url).status_code == 204
    assert not api.app.state.blobs.potential_path(est["id"]).exists()


def test_evaluate_is_bounded(make_client, settings, recording) -> None:
    client = make_client(settings.model_copy(update={"max_evaluate_points": 3}), executor=recording)
    src, tgt = pair(client, n=20, m=20)
    est = client.post("/v1/estimates", json={"source": src, "target": tgt}).json()
    set_row(client, est["id"], status="succeeded")
    r = client.post(f"/v1/estimates/{est['id']}/evaluate", json={"points": [[0, 0]] * 4})
    assert r.status_code == 422 and "3" in r.json()["detail"]


def test_exact_job_has_no_potential(api, settings, one_thread) -> None:
    src, tgt = pair(api, n=30, m=20)
    est = run(api, settings, {"source": src, "target": tgt, "method": "exact"})
    assert est["status"] == "succeeded", est["error"]
    res = est["result"]
    assert res["method"] == "exact" and res["w1"] == res["exact"]["value"] > 0
    assert res["lower_bound"] is None and res["potential_center"] is None
    url = f"/v1/estimates/{est['id']}"
    assert api.get(f"{url}/potential").status_code == 404
    r = api.post(f"{url}/evaluate", json={"points": [[0, 0]]})
    assert r.status_code == 404 and r.headers["content-type"].startswith("application/problem")


def test_events_stream_is_bounded_and_notices_a_deleted_job(make_client, settings, recording):
    fast = settings.model_copy(update={"events_poll_s": 0.02, "job_timeout_s": 0.5})
    client = make_client(fast, executor=recording)
    src, tgt = pair(client)
    est = client.post("/v1/estimates", json={"source": src, "target": tgt}).json()
    r = client.get(f"/v1/estimates/{est['id']}/events")  # queued for ever: the bound ends it
    assert r.status_code == 200 and sse_events(r.text) == []
    assert "reconnect" in r.text
    with client.stream("GET", f"/v1/estimates/{est['id']}/events") as r:
        with client.app.state.db.session() as s:
            s.delete(s.get(EstimateRow, est["id"]))
        text = "".join(r.iter_text())
    assert sse_events(text) == [("error", {"id": est["id"], "status": "deleted", "error": None})]


def test_columns_must_match_by_name_unless_asked_by_position(api) -> None:
    rows = [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]]
    ab = api.post("/v1/datasets", json={"samples": rows, "columns": ["a", "b"]}).json()
    ba = api.post("/v1/datasets", json={"samples": rows, "columns": ["b", "a"]}).json()
    plain = api.post("/v1/datasets", json={"samples": rows}).json()
    r = api.post("/v1/estimates", json={"source": ab["id"], "target": ba["id"]})
    assert r.status_code == 422 and "['b', 'a']" in r.json()["detail"]
    assert "match_columns" in r.json()["detail"]
    body = {"source": ab["id"], "target": ba["id"], "match_columns": "position"}
    assert api.post("/v1/estimates", json=body).status_code == 202
    # Unnamed data (x0, x1) pairs by position with anything.
    assert (
        api.post("/v1/estimates", json={"source": ab["id"], "target": plain["id"]}).status_code
        == 202
    )
