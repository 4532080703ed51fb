"""API keys, tenants and quotas: who may do what, and one tenant never sees another's objects."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from service import cli
from service.auth import parse_env_keys, parse_scopes
from service.settings import Settings
from service.store import EstimateRow
from service.store import keys as key_rows
from tests.service.conftest import RecordingExecutor

S = "s" * 40  # a long enough secret; each key below differs by its prefix
KEYS = {
    "alpha": "alpha-" + S,
    "beta": "beta-" + S,
    "alpha_ro": "alpha-ro-" + S,
    "admin": "admin-" + S,
}
ENV_KEYS = ",".join(
    [
        f"alpha:read+write:{KEYS['alpha']}",
        f"beta:read+write:{KEYS['beta']}",
        f"alpha:read:{KEYS['alpha_ro']}",
        f"ops:admin:{KEYS['admin']}",
    ]
)


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS.get(key, key)}"}


def npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


NPY = {"content-type": "application/x-npy"}


def upload(api: TestClient, key: str, a: np.ndarray) -> dict[str, Any]:
    r = api.post("/v1/datasets", content=npy(a), headers={**NPY, **auth(key)})
    assert r.status_code in (200, 201), r.text
    return r.json()


@pytest.fixture
def keyed(
    make_client: Callable[..., TestClient], settings: Settings, recording: RecordingExecutor
) -> TestClient:
    s = settings.model_copy(update={"api_keys": ENV_KEYS, "auth_cache_s": 0.0})
    return make_client(s, executor=recording)


def _objects(api: TestClient) -> dict[str, str]:
    """Alpha's dataset and a finished estimate on it (with a potential-less result)."""
    rng = np.random.default_rng(0)
    x = upload(api, "alpha", rng.normal(size=(30, 2)))
    y = upload(api, "alpha", rng.normal(size=(30, 2)) + 1)
    body = {"source": x["id"], "target": y["id"]}
    r = api.post("/v1/estimates", json=body, headers=auth("alpha"))
    assert r.status_code == 202, r.text
    est = r.json()["id"]
    with api.app.state.db.session() as s:
        s.execute(update(EstimateRow).where(EstimateRow.id == est).values(status="succeeded"))
    return {"dataset_id": x["id"], "estimate_id": est, "target": y["id"]}


def test_without_a_key_every_route_but_the_open_ones_is_401(keyed: TestClient) -> None:
    for path in ("/healthz", "/readyz"):
        assert keyed.get(path).status_code == 200
    for method, path in [
        ("GET", "/v1/datasets"),
        ("POST", "/v1/datasets"),
        ("GET", "/v1/estimates"),
        ("POST", "/v1/estimates"),
        ("GET", "/v1/estimates/est_x"),
        ("GET", "/metrics"),
    ]:
        r = keyed.request(method, path)
        assert r.status_code == 401, (method, path, r.text)
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert r.json()["type"] == "/problems/unauthorized"
    r = keyed.get("/v1/datasets", headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401 and "unknown or revoked" in r.json()["detail"]
    r = keyed.get("/v1/datasets", headers={"Authorization": "Basic abc"})
    assert r.status_code == 401


def test_another_tenant_gets_404_on_every_route_with_an_id(keyed: TestClient) -> None:
    ids = _objects(keyed)
    checked = 0
    calls = [
        (method.upper(), template.format(**ids))
        for template, operations in keyed.app.openapi()["paths"].items()
        if "{" in template
        for method in operations
    ]
    calls.sort(key=lambda c: c[0] == "DELETE")  # deletes last: the others need the objects
    for method, path in calls:
        body = {"points": [[0.0, 0.0]]} if path.endswith("/evaluate") else None
        theirs = keyed.request(method, path, json=body, headers=auth("beta"))
        mine = keyed.request(method, path, json=body, headers=auth("alpha"))
        assert theirs.status_code == 404, (method, path, theirs.text)
        assert theirs.json()["type"] in (
            "/problems/estimate-not-found",
            "/problems/dataset-not-found",
        )
        assert mine.status_code != 404 or "no-potential" in mine.text, (method, path, mine.text)
        checked += 1
    assert checked >= 9  # dataset get/delete; estimate get/delete/events/cancel/potential/...
    # Alpha's objects are intact after every one of beta's attempts.
    assert keyed.get(f"/v1/datasets/{ids['target']}", headers=auth("alpha")).status_code == 200


def test_lists_and_submissions_see_only_the_tenants_own(keyed: TestClient) -> None:
    ids = _objects(keyed)
    for path in ("/v1/datasets", "/v1/estimates"):
        assert keyed.get(path, headers=auth("beta")).json()["total"] == 0
        assert keyed.get(path, headers=auth("alpha")).json()["total"] >= 1
    body = {"source": ids["dataset_id"], "target": ids["target"]}
    r = keyed.post("/v1/estimates", json=body, headers=auth("beta"))
    assert r.status_code == 422 and "no dataset with id" in r.text


def test_same_bytes_in_two_tenants_are_two_datasets_sharing_files(keyed: TestClient) -> None:
    a = np.arange(20.0).reshape(10, 2)
    mine, theirs = upload(keyed, "alpha", a), upload(keyed, "beta", a)
    assert mine["id"] != theirs["id"] and mine["sha256"] == theirs["sha256"]
    assert upload(keyed, "beta", a)["id"] == theirs["id"]  # known within the tenant
    r = keyed.delete(f"/v1/datasets/{mine['id']}", headers=auth("alpha"))
    assert r.status_code == 204
    assert keyed.app.state.blobs.has_dataset(theirs["sha256"])  # beta's row keeps the files
    keyed.delete(f"/v1/datasets/{theirs['id']}", headers=auth("beta"))
    assert not keyed.app.state.blobs.has_dataset(theirs["sha256"])


def test_idempotency_keys_are_per_tenant(keyed: TestClient) -> None:
    a = np.random.default_rng(1).normal(size=(20, 2))
    bodies = {}
    for who in ("alpha", "beta"):
        x, y = upload(keyed, who, a), upload(keyed, who, a + 1)
        bodies[who] = {"source": x["id"], "target": y["id"]}
    h = {"Idempotency-Key": "same-key"}
    first = keyed.post("/v1/estimates", json=bodies["alpha"], headers={**h, **auth("alpha")})
    other = keyed.post("/v1/estimates", json=bodies["beta"], headers={**h, **auth("beta")})
    assert first.status_code == other.status_code == 202
    assert first.json()["id"] != other.json()["id"]
    again = keyed.post("/v1/estimates", json=bodies["alpha"], headers={**h, **auth("alpha")})
    assert again.json()["id"] == first.json()["id"]


def test_scopes_read_write_admin(keyed: TestClient) -> None:
    a = np.ones((5, 2))
    r = keyed.post("/v1/datasets", content=npy(a), headers={**NPY, **auth("alpha_ro")})
    assert r.status_code == 403 and "'write'" in r.json()["detail"]
    assert keyed.get("/v1/datasets", headers=auth("alpha_ro")).status_code == 200
    assert keyed.get("/metrics", headers=auth("alpha")).status_code == 403
    assert keyed.get("/metrics", headers=auth("admin")).status_code == 200


def test_database_keys_work_and_revocation_takes_effect(keyed: TestClient) -> None:
    db = keyed.app.state.db
    row, key = key_rows.create(db, "gamma", ("read",), "ci")
    h = {"Authorization": f"Bearer {key}"}
    assert keyed.get("/v1/datasets", headers=h).status_code == 200
    wrong = {"Authorization": f"Bearer {key[:-2]}xx"}
    assert keyed.get("/v1/datasets", headers=wrong).status_code == 401
    assert key_rows.revoke(db, row.id)
    assert keyed.get("/v1/datasets", headers=h).status_code == 401  # auth_cache_s = 0
    assert db_secret_not_stored(db, key)


def db_secret_not_stored(db: Any, key: str) -> bool:
    secret = key.split("_", 2)[2]
    with db.session() as s:
        stored = [r.secret_sha256 for r in key_rows.all_keys(db)]
    return secret not in stored and all(len(h) == 64 for h in stored) and s is not None


def test_no_key_at_all_is_the_open_default_tenant(api: TestClient) -> None:
    assert api.get("/v1/datasets").status_code == 200
    assert api.get("/metrics").status_code == 200


def test_quota_on_active_jobs_is_429_naming_it(
    make_client: Callable[..., TestClient], settings: Settings
) -> None:
    s = settings.model_copy(update={"api_keys": ENV_KEYS, "max_active_jobs": 1})
    api = make_client(s, executor=RecordingExecutor())
    a = np.random.default_rng(2).normal(size=(20, 2))
    x, y = upload(api, "alpha", a), upload(api, "alpha", a + 1)
    body = {"source": x["id"], "target": y["id"]}
    assert api.post("/v1/estimates", json=body, headers=auth("alpha")).status_code == 202
    r = api.post("/v1/estimates", json={**body, "seed": 1}, headers=auth("alpha"))
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    assert r.json()["type"] == "/problems/quota-exceeded" and "max_active_jobs" in r.text
    # Another tenant is not held back by alpha's jobs.
    bx, by = upload(api, "beta", a), upload(api, "beta", a + 1)
    body_b = {"source": bx["id"], "target": by["id"]}
    assert api.post("/v1/estimates", json=body_b, headers=auth("beta")).status_code == 202


def test_quota_on_uploads_per_minute_and_stored_bytes(
    make_client: Callable[..., TestClient], settings: Settings
) -> None:
    s = settings.model_copy(
        update={"api_keys": ENV_KEYS, "max_uploads_per_minute": 2, "max_stored_bytes": 4000}
    )
    api = make_client(s, executor=RecordingExecutor())
    upload(api, "alpha", np.zeros((10, 2)))
    upload(api, "alpha", np.ones((10, 2)))
    r = api.post("/v1/datasets", content=npy(np.ones((3, 2))), headers={**NPY, **auth("alpha")})
    assert r.status_code == 429 and "max_uploads_per_minute" in r.text
    assert int(r.headers["retry-after"]) >= 1
    big = npy(np.ones((400, 2)))  # 6.4 kB: beyond beta's 4000-byte quota
    r = api.post("/v1/datasets", content=big, headers={**NPY, **auth("beta")})
    assert r.status_code == 429 and "max_stored_bytes" in r.text


def test_a_job_too_large_for_memory_is_refused_up_front(keyed: TestClient) -> None:
    a = np.random.default_rng(3).normal(size=(20, 2))
    x, y = upload(keyed, "alpha", a), upload(keyed, "alpha", a + 1)
    config = {"width": 2048, "depth": 16, "batch_size": 1 << 20}
    body = {"source": x["id"], "target": y["id"], "config": config}
    r = keyed.post("/v1/estimates", json=body, headers=auth("alpha"))
    assert r.status_code == 422, r.text
    doc = r.json()
    assert doc["type"] == "/problems/job-too-large" and "max_job_memory_bytes" in doc["detail"]
    assert doc["errors"][0]["loc"] == ["body", "config", "batch_size"]


def test_env_keys_and_scopes_are_checked() -> None:
    assert parse_scopes("read+write") == ("read", "write")
    with pytest.raises(ValueError, match="scopes"):
        parse_scopes("read,root")
    with pytest.raises(ValueError, match="at least 32"):
        parse_env_keys("alpha:read:short")
    with pytest.raises(ValueError, match="tenant"):
        parse_env_keys("Alpha!:read:" + S)
    assert [k.tenant for k in parse_env_keys(ENV_KEYS)] == ["alpha", "beta", "alpha", "ops"]


def test_cli_keys_create_list_revoke(tmp_path, capsys) -> None:
    data = str(tmp_path / "d")
    assert cli.main(["keys", "--data-dir", data, "create", "--tenant", "team-a"]) == 0
    key = capsys.readouterr().out.strip()
    assert key.startswith("lw_")
    assert cli.main(["keys", "--data-dir", data, "list", "--json"]) == 0
    import json

    listed = json.loads(capsys.readouterr().out)
    assert listed[0]["tenant"] == "team-a" and listed[0]["scopes"] == ["read", "write"]
    assert key.split("_", 2)[2] not in json.dumps(listed)
    assert cli.main(["keys", "--data-dir", data, "revoke", listed[0]["id"]]) == 0
    assert cli.main(["keys", "--data-dir", data, "revoke", listed[0]["id"]]) == 1


def test_serve_refuses_a_public_address_without_keys(tmp_path, capsys, monkeypatch) -> None:
    import uvicorn

    ran = []
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: ran.append(k["host"]))
    data = str(tmp_path / "d")
    assert cli.main(["serve", "--host", "0.0.0.0", "--data-dir", data]) == 2
    assert "refusing to serve on 0.0.0.0 without API keys" in capsys.readouterr().err
    assert ran == []
    assert cli.main(["serve", "--host", "0.0.0.0", "--data-dir", data, "--insecure"]) == 0
    assert ran == ["0.0.0.0"]
    assert cli.main(["keys", "--data-dir", data, "create"]) == 0
    assert cli.main(["serve", "--host", "0.0.0.0", "--data-dir", data]) == 0
    assert cli.main(["serve", "--host", "127.0.0.1", "--data-dir", str(tmp_path / "e")]) == 0


def test_revoking_the_last_key_locks_out_rather_than_opens(
    make_client: Callable[..., TestClient], settings: Settings
) -> None:
    api = make_client(
        settings.model_copy(update={"auth_cache_s": 0.0}), executor=RecordingExecutor()
    )
    assert api.get("/v1/datasets").status_code == 200  # no key at all: open
    db = api.app.state.db
    row, key = key_rows.create(db, "solo", ("read",))
    assert api.get("/v1/datasets").status_code == 401
    assert api.get("/v1/datasets", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    assert key_rows.revoke(db, row.id)
    assert api.get("/v1/datasets").status_code == 401  # still closed, not open again
