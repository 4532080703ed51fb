"""The connection guard against a real `lipwass serve`: slow headers and bodies are cut with 408,
connection floods are answered 503 without costing the server fds or threads, uploads at once
are bounded, and bodiless methods take no body. Every loop is bounded in count and seconds."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from servers import Server

LIMITS = {
    "LIPWASS_HEADER_TIMEOUT_S": "1",
    "LIPWASS_BODY_TIMEOUT_S": "1",
    "LIPWASS_MAX_CLIENT_CONNECTIONS": "40",
    "LIPWASS_MAX_CONNECTIONS": "60",
    "LIPWASS_MAX_CONCURRENT_UPLOADS": "3",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("guard")
    s = Server(root / "data", root / "server.log", env=LIMITS)
    s.data_dir = root / "data"  # type: ignore[attr-defined]
    try:
        s.wait_ready()
        yield s
    finally:
        s.kill()


def _connect(server: Server) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    return sock


def _read_all(sock: socket.socket, timeout: float = 5.0) -> bytes:
    sock.settimeout(timeout)
    out = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except (TimeoutError, ConnectionResetError):
            break
        if not chunk:
            break
        out += chunk
    return out


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def _healthz_seconds(server: Server) -> float:
    t0 = time.perf_counter()
    assert httpx.get(server.url + "/healthz", timeout=5).status_code == 200
    return time.perf_counter() - t0


def _tmp_files(server: Server) -> list[str]:
    tmp = Path(server.data_dir) / "blobs" / "tmp"  # type: ignore[attr-defined]
    return [p.name for p in tmp.iterdir()] if tmp.exists() else []


def test_headers_that_never_finish_get_408_and_the_connection_closes(server: Server) -> None:
    sock = _connect(server)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    t0 = time.monotonic()
    answer = _read_all(sock)
    waited = time.monotonic() - t0
    sock.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"/problems/request-timeout" in answer
    assert 0.5 < waited < 4.0


def test_an_idle_connection_that_sends_nothing_is_closed(server: Server) -> None:
    sock = _connect(server)
    t0 = time.monotonic()
    answer = _read_all(sock)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 408")
    assert time.monotonic() - t0 < 4.0


def test_a_stalled_upload_gets_408_and_its_temp_file_is_removed_at_once(server: Server) -> None:
    sock = _connect(server)
    head = (
        "POST /v1/datasets HTTP/1.1\r\nHost: x\r\nContent-Type: text/csv\r\n"
        "Content-Length: 10000000\r\n\r\n"
    )
    sock.sendall(head.encode() + b"a,b\n" + b"1,2\n" * 1000)
    deadline = time.monotonic() + 3
    while not _tmp_files(server) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _tmp_files(server), "the upload should have a temporary file while it streams"
    answer = _read_all(sock)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    deadline = time.monotonic() + 3
    while _tmp_files(server) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _tmp_files(server) == []


def test_a_connection_flood_is_refused_past_the_per_client_bound(server: Server) -> None:
    pid = server.proc.pid
    fds0, threads0 = _fds(pid), _threads(pid)
    socks = []
    try:
        for _ in range(120):  # 3x the per-client bound
            s = _connect(server)
            socks.append(s)
        time.sleep(0.3)
        refused = 0
        for s in socks[40:]:
            s.settimeout(2)
            try:
                data = s.recv(4096)
            except TimeoutError:
                data = b""
            if data.startswith(b"HTTP/1.1 503"):
                assert b"too-many-connections" in data
                refused += 1
        assert refused == 80
        # The server holds at most the bound's connections: its fds and threads stay bounded.
        assert _fds(pid) <= fds0 + 45
        assert _threads(pid) <= threads0 + 5
    finally:
        for s in socks:
            s.close()
    time.sleep(0.3)
    assert _healthz_seconds(server) < 1.0


def test_uploads_at_once_are_bounded_and_the_next_gets_503(server: Server) -> None:
    head = (
        "POST /v1/datasets HTTP/1.1\r\nHost: x\r\nContent-Type: text/csv\r\n"
        "Content-Length: 1000000\r\n\r\na,b\n"
    )
    socks = []
    try:
        for _ in range(3):
            s = _connect(server)
            s.sendall(head.encode())
            socks.append(s)
        deadline = time.monotonic() + 3
        while len(_tmp_files(server)) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        r = httpx.post(
            server.url + "/v1/datasets",
            content=b"a,b\n1,2\n",
            headers={"content-type": "text/csv"},
            timeout=5,
        )
        assert r.status_code == 503
        assert r.json()["type"] == "/problems/too-many-uploads"
        assert r.headers["retry-after"] == "1"
    finally:
        for s in socks:
            s.close()
    time.sleep(1.5)
    r = httpx.post(
        server.url + "/v1/datasets",
        content=b"a,b\n1,2\n3,4\n",
        headers={"content-type": "text/csv"},
        timeout=5,
    )
    assert r.status_code in (200, 201), r.text


def test_a_get_with_a_large_body_is_answered_without_buffering_it(server: Server) -> None:
    """The route reads no body: the answer comes while most of the body is still unsent."""
    pid = server.proc.pid
    rss0 = _rss_kib(pid)
    sock = _connect(server)
    head = "GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 50000000\r\n\r\n"
    sock.sendall(head.encode() + b"x" * 100_000)
    answer = sock.recv(4096)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert _rss_kib(pid) - rss0 < 20_000


def _rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(ln for ln in status.splitlines() if ln.startswith("VmRSS:")).split()[1])
