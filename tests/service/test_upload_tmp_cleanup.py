"""Temporary upload files: removed when the request ends, however it ends; swept at start when
their writer is gone (issue 13)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.api import datasets as routes


def npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def tmp_files(api: TestClient, wait_s: float = 5.0) -> list[str]:
    deadline = time.monotonic() + wait_s
    while (left := [p.name for p in api.app.state.blobs.tmp.iterdir()]) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.02)
    return left


async def _upload(app, chunks: list[bytes], end: str) -> list[dict]:
    """Drive the ASGI app directly: send ``chunks``, then ``end`` (disconnect or cancel)."""
    messages = [{"type": "http.request", "body": c, "more_body": True} for c in chunks]
    sent: list[dict] = []
    gate = asyncio.Event()

    async def receive() -> dict:
        if messages:
            return messages.pop(0)
        if end == "disconnect":
            return {"type": "http.disconnect"}
        gate.set()
        await asyncio.sleep(3600)  # a stalled client: the server cancels the request
        raise AssertionError

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/datasets",
        "raw_path": b"/v1/datasets",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/x-npy"), (b"host", b"test")],
        "client": ("127.0.0.1", 1),
        "server": ("test", 80),
    }
    task = asyncio.create_task(app(scope, receive, send))
    if end == "cancel":
        await gate.wait()
        await asyncio.sleep(0.05)
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.2)  # let a background removal run
    return sent


@pytest.mark.parametrize("end", ["disconnect", "cancel"])
def test_a_partial_upload_is_removed_however_the_request_ends(api: TestClient, end: str) -> None:
    body = npy_bytes(np.ones((200_000, 4)))
    chunks = [body[i : i + 65536] for i in range(0, len(body) // 2, 65536)]
    sent = api.portal.call(_upload, api.app, chunks, end)
    if end == "disconnect":
        assert sent and sent[0]["status"] == 400
    assert tmp_files(api) == []


def test_an_error_while_storing_removes_the_upload(
    api: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*a: object, **k: object) -> object:
        raise RuntimeError("boom")

    monkeypatch.setattr(routes.service, "ingest_and_store", boom)
    client = TestClient(api.app, raise_server_exceptions=False)
    r = client.post(
        "/v1/datasets",
        content=npy_bytes(np.ones((10, 2))),
        headers={"content-type": "application/x-npy"},
    )
    assert r.status_code == 500
    assert tmp_files(api) == []


def _dead_pid() -> int:
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_sweep_removes_files_whose_writer_is_gone(tmp_path) -> None:
    import os

    from service.blobs import BlobStore, _host

    blobs = BlobStore(tmp_path / "blobs")
    host = _host()
    dead = blobs.tmp / f"{host}.{_dead_pid()}.abc.npy"  # fresh, but its process is gone
    dead_discard = blobs.tmp / f"{host}.{_dead_pid()}.abc.csv.discard"
    live = blobs.tmp / f"{host}.{os.getpid()}.def.npy"  # a running upload of this host
    other = blobs.tmp / "otherhost.123.ghi.npy"  # another replica's: only past the grace
    unnamed = blobs.tmp / "tmpxyz.npy"
    for p in (dead, dead_discard, live, other, unnamed):
        p.write_bytes(b"x")
    assert blobs.sweep_tmp(3600) == 2
    assert not dead.exists() and not dead_discard.exists()
    assert live.exists() and other.exists() and unnamed.exists()
    # The embedded mode: only this host's running processes keep theirs.
    assert blobs.sweep_tmp(3600, only_writer=True) == 2
    assert live.exists() and not other.exists() and not unnamed.exists()


def test_temp_files_are_named_by_host_and_pid(tmp_path) -> None:
    import os

    from service.blobs import BlobStore, _host

    blobs = BlobStore(tmp_path / "blobs")
    with blobs.temp_path(".npy") as p:
        assert p.name.startswith(f"{_host()}.{os.getpid()}.") and p.name.endswith(".npy")


def test_embedded_start_up_sweeps_every_stale_temp_file(make_client, settings) -> None:
    import os

    from service.blobs import _host

    tmp = settings.data_dir / "blobs" / "tmp"
    tmp.mkdir(parents=True)
    stale = [tmp / "tmp1234.npy", tmp / f"{_host()}.{_dead_pid()}.x.csv.discard"]
    for p in stale:
        p.write_bytes(b"cut short by a crash a minute ago")
    live = tmp / f"{_host()}.{os.getpid()}.y.npy"
    live.write_bytes(b"in flight")
    make_client()
    assert not any(p.exists() for p in stale) and live.exists()
