"""Operations routes: /healthz, /readyz (and its 503s), /metrics (requests, jobs, bytes)."""

from __future__ import annotations

from datetime import timedelta

from service.metrics import iter_samples
from service.store import EstimateRow
from service.store.models import DatasetRow, utcnow
from tests.service.conftest import RecordingExecutor


def test_healthz(api):
    r = api.get("/healthz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}


def test_readyz_ok(api):
    r = api.get("/readyz")
    assert r.status_code == 200, r.text
    assert r.json()["checks"] == {"database": "ok", "blobs": "ok", "executor": "ok"}


class BrokenExecutor(RecordingExecutor):
    def check(self) -> None:
        raise RuntimeError("no worker process")


def test_readyz_names_the_failed_check(make_client):
    client = make_client(executor=BrokenExecutor())
    r = client.get("/readyz")
    assert r.status_code == 503
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["status"] == 503
    assert "executor" in body["detail"] and "no worker process" in body["detail"]
    assert "database" not in body["detail"]


def test_readyz_blobs_unwritable(make_client, recording):
    client = make_client(executor=recording)
    client.app.state.blobs.tmp = client.app.state.blobs.root / "missing" / "tmp"
    r = client.get("/readyz")
    assert r.status_code == 503
    assert "blobs" in r.json()["detail"]


def test_readyz_times_out_slow_check(make_client, settings):
    import time

    class Slow(RecordingExecutor):
        def check(self) -> None:
            time.sleep(1.0)

    client = make_client(settings.model_copy(update={"readyz_timeout_s": 0.1}), executor=Slow())
    t = time.perf_counter()
    r = client.get("/readyz")
    assert r.status_code == 503
    assert "executor" in r.json()["detail"] and "0.1 s" in r.json()["detail"]
    assert time.perf_counter() - t < 0.9


def _scrape(client) -> str:
    r = client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    return r.text


def test_metrics_counts_requests_by_route_template(api):
    for _ in range(3):
        api.get("/healthz")
    api.get("/no/such/path")
    text = _scrape(api)
    counts = {
        (lab["method"], lab["route"], lab["status"]): v
        for lab, v in iter_samples(text, "lipwass_http_requests_total")
    }
    assert counts[("GET", "/healthz", "200")] == 3
    assert counts[("GET", "<unmatched>", "404")] == 1
    latency = dict(
        (lab["route"], v) for lab, v in iter_samples(text, "lipwass_http_request_seconds_count")
    )
    assert latency["/healthz"] == 3


def test_metrics_are_per_app(make_client, recording):
    a = make_client(executor=recording)
    a.get("/healthz")
    b = make_client(executor=RecordingExecutor())
    text = _scrape(b)
    assert not [
        v
        for lab, v in iter_samples(text, "lipwass_http_requests_total")
        if lab["route"] == "/healthz"
    ]


def _add_rows(db) -> None:
    now = utcnow()
    with db.session() as s:
        s.add(
            DatasetRow(
                id="ds_a",
                name=None,
                n=3,
                d=1,
                dtype="float64",
                weighted=False,
                sha256="a" * 64,
                bytes=1000,
            )
        )
        s.add(
            DatasetRow(
                id="ds_b",
                name=None,
                n=3,
                d=1,
                dtype="float64",
                weighted=False,
                sha256="b" * 64,
                bytes=234,
            )
        )
        s.flush()
        common = dict(
            source_id="ds_a",
            target_id="ds_b",
            method="lipschitz",
            crosscheck="never",
            holdout=0.2,
            seed=0,
            config={},
            request_hash="h",
        )
        s.add(EstimateRow(id="est_1", status="queued", **common))
        s.add(EstimateRow(id="est_2", status="running", started_at=now, **common))
        s.add(
            EstimateRow(
                id="est_3",
                status="succeeded",
                result={"seconds": 3.0},
                started_at=now - timedelta(seconds=50),
                finished_at=now,
                **common,
            )
        )
        s.add(
            EstimateRow(
                id="est_4",
                status="failed",
                started_at=now - timedelta(seconds=0.3),
                finished_at=now,
                **common,
            )
        )


def test_metrics_jobs_and_bytes_from_the_store(api):
    _add_rows(api.app.state.db)
    text = _scrape(api)
    jobs = {lab["status"]: v for lab, v in iter_samples(text, "lipwass_jobs")}
    assert jobs == {"queued": 1, "running": 1, "succeeded": 1, "failed": 1, "cancelled": 0}
    assert list(iter_samples(text, "lipwass_datasets_bytes")) == [({}, 1234.0)]
    assert list(iter_samples(text, "lipwass_datasets")) == [({}, 2.0)]
    sums = {lab["status"]: v for lab, v in iter_samples(text, "lipwass_job_seconds_sum")}
    assert sums["succeeded"] == 3.0  # result.seconds wins over the wall time (50 s)
    assert abs(sums["failed"] - 0.3) < 1e-6
    buckets = {
        lab["le"]: v
        for lab, v in iter_samples(text, "lipwass_job_seconds_bucket")
        if lab["status"] == "succeeded"
    }
    assert buckets["2.0"] == 0 and buckets["5.0"] == 1 and buckets["+Inf"] == 1
    # A second scrape counts nothing twice.
    text = _scrape(api)
    counts = {lab["status"]: v for lab, v in iter_samples(text, "lipwass_job_seconds_count")}
    assert counts == {"succeeded": 1, "failed": 1}


def test_metrics_counts_upload_bytes(api):
    body = b"x" * 4321
    api.post("/v1/datasets", content=body, headers={"content-type": "application/octet-stream"})
    text = _scrape(api)
    assert list(iter_samples(text, "lipwass_upload_bytes_total")) == [({}, 4321.0)]


def test_openapi_documents_ops(api):
    spec = api.get("/openapi.json").json()
    assert "503" in spec["paths"]["/readyz"]["get"]["responses"]
    assert (
        "text/plain; version=0.0.4; charset=utf-8"
        in (spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"])
    )


def test_store_down_readyz_503_and_metrics_still_scrape(api):
    from sqlalchemy import create_engine
    from sqlalchemy.orm import sessionmaker

    db = api.app.state.db
    good = db.engine
    db.engine = create_engine("sqlite:////nonexistent-dir/lipwass.db")
    db.sessions = sessionmaker(db.engine)
    try:
        r = api.get("/readyz")
        assert r.status_code == 503 and "database" in r.json()["detail"]
        text = _scrape(api)
        assert list(iter_samples(text, "lipwass_store_scrape_ok")) == [({}, 0.0)]
        assert not list(iter_samples(text, "lipwass_jobs"))
    finally:
        db.engine = good
        db.sessions = sessionmaker(good, expire_on_commit=False)
    assert list(iter_samples(_scrape(api), "lipwass_store_scrape_ok")) == [({}, 1.0)]
