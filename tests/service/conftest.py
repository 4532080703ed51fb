"""Fixtures shared by the service tests: isolated settings and an in-process client."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.executors.base import Executor
from service.settings import Settings


class RecordingExecutor:
    """An executor that only records what the API handed it (the API tests' transport seam)."""

    def __init__(self) -> None:
        self.submitted: list[str] = []
        self.cancelled: list[str] = []

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def submit(self, job_id: str) -> None:
        self.submitted.append(job_id)

    def cancel(self, job_id: str) -> None:
        self.cancelled.append(job_id)

    def check(self) -> None: ...


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Embedded settings in a fresh data folder, blind to any .env file."""
    # Property tests upload hundreds of datasets a minute through one app: no upload-rate quota
    # here (tests/service/test_auth.py tests it with its own settings).
    return Settings(
        _env_file=None,
        data_dir=tmp_path / "data",
        progress_interval_s=0.0,
        max_uploads_per_minute=1_000_000,
    )


@pytest.fixture
def make_client(settings: Settings) -> Iterator[Callable[..., TestClient]]:
    """Builds a TestClient (lifespan running) for settings and an optional executor."""
    clients: list[TestClient] = []

    def make(s: Settings | None = None, executor: Executor | None = None) -> TestClient:
        client = TestClient(create_app(s or settings, executor=executor))
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for c in clients:
        c.__exit__(None, None, None)


@pytest.fixture
def recording() -> RecordingExecutor:
    return RecordingExecutor()


@pytest.fixture
def api(make_client: Callable[..., TestClient], recording: RecordingExecutor) -> TestClient:
    """A client on an app whose executor only records submissions (no job runs)."""
    return make_client(executor=recording)
