"""The body cap on JSON requests: 413 problem+json, by Content-Length or while streaming."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from fastapi.testclient import TestClient

from service.settings import Settings


def _small(settings: Settings) -> Settings:
    return settings.model_copy(update={"max_request_bytes": 1000})


def test_declared_length_over_the_cap_is_413(make_client: Callable, settings, recording) -> None:
    api: TestClient = make_client(_small(settings), executor=recording)
    r = api.post(
        "/v1/estimates",
        content=b"{" + b" " * 2000 + b"}",
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 413
    assert r.headers["content-type"] == "application/problem+json"
    assert "1000 bytes" in r.json()["detail"]
    assert recording.submitted == []


def test_chunked_body_over_the_cap_is_413(make_client: Callable, settings, recording) -> None:
    api: TestClient = make_client(_small(settings), executor=recording)

    def chunks() -> Iterator[bytes]:
        for _ in range(10):
            yield b" " * 200

    r = api.post("/v1/estimates", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert r.json()["title"] == "Request body too large"


def test_small_bodies_pass_through(make_client: Callable, settings, recording) -> None:
    api: TestClient = make_client(_small(settings), executor=recording)
    r = api.post("/v1/estimates", json={"source": "ds_x", "target": "ds_y"})
    assert r.status_code == 422  # reaches validation: unknown datasets


def test_uploads_are_not_capped_by_the_json_limit(
    make_client: Callable, settings, recording
) -> None:
    import io

    import numpy as np

    api: TestClient = make_client(_small(settings), executor=recording)
    buf = io.BytesIO()
    np.save(buf, np.zeros((100, 4), dtype=np.float32))
    assert len(buf.getvalue()) > 1000
    r = api.post(
        "/v1/datasets", content=buf.getvalue(), headers={"content-type": "application/x-npy"}
    )
    assert r.status_code == 201, r.text
