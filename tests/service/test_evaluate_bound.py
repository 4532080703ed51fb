"""/evaluate refuses too many points before parsing them (issue 13)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from fastapi.testclient import TestClient
from starlette.requests import Request

from service.api.estimate_models import EvaluateRequest
from service.settings import Settings
from tests.service.conftest import RecordingExecutor
from tests.service.test_api_estimates import pair, set_row

JSON = {"content-type": "application/json"}
PROBLEM = "application/problem+json"


def finished(client: TestClient) -> str:
    src, tgt = pair(client, n=20, m=20)  # d = 2
    est = client.post("/v1/estimates", json={"source": src, "target": tgt}).json()
    set_row(client, est["id"], status="succeeded")
    return f"/v1/estimates/{est['id']}/evaluate"


@pytest.fixture
def no_parse(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records any parse of an /evaluate body (into Python objects or the model)."""
    parsed: list[str] = []
    real = Request.json

    async def json(self: Request) -> object:
        if self.url.path.endswith("/evaluate"):
            parsed.append("json")
        return await real(self)

    def validate(*a: object, **k: object) -> object:
        parsed.append("model")
        raise AssertionError("the body was parsed")

    monkeypatch.setattr(Request, "json", json)
    monkeypatch.setattr(EvaluateRequest, "model_validate_json", validate)
    return parsed


def test_100001_points_are_refused_before_parsing(api: TestClient, no_parse: list[str]) -> None:
    url = finished(api)
    body = b'{"points": [' + b",".join([b"[0,0]"] * 100_001) + b"]}"
    r = api.post(url, content=body, headers=JSON)
    assert r.status_code == 422 and r.headers["content-type"].startswith(PROBLEM)
    assert "100000" in r.json()["detail"] and no_parse == []


def test_a_body_longer_than_the_points_can_be_is_413_at_once(
    make_client: Callable[..., TestClient],
    settings: Settings,
    recording: RecordingExecutor,
    no_parse: list[str],
) -> None:
    client = make_client(settings.model_copy(update={"max_evaluate_points": 3}), recording)
    url = finished(client)
    # 3 points of d = 2 take at most 3 * (48 * 2 + 8) + 4096 = 4408 bytes.
    padded = b'{"points": [[0, 0]]' + b" " * 5000 + b"}"
    r = client.post(url, content=padded, headers=JSON)
    assert r.status_code == 413 and r.headers["content-type"].startswith(PROBLEM)
    assert "4408" in r.json()["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while it arrives
        yield b'{"points": [[0, 0]]'
        for _ in range(100):
            yield b" " * 100
        yield b"}"

    r = client.post(url, content=chunks(), headers=JSON)
    assert r.status_code == 413 and "4408" in r.json()["detail"]
    assert no_parse == []


def test_a_body_within_the_bound_is_parsed_and_validated(api: TestClient) -> None:
    url = finished(api)
    r = api.post(url, content=b'{"points": [[0, 0]], "extra": 1}', headers=JSON)
    assert r.status_code == 422 and "extra" in r.json()["detail"]
    r = api.post(url, content=b'{"points": [[0, 0]', headers=JSON)
    assert r.status_code == 422 and r.headers["content-type"].startswith(PROBLEM)
    r = api.post(url, json={"points": [[0, 0]]})
    assert r.status_code not in (413, 422)  # past the body: this estimate has no potential
