"""A small Python client of the lipwass HTTP API (on httpx), used by the CLI.

    from service.client import Client
    with Client("http://127.0.0.1:8000") as c:
        est = c.estimate(x, y, config={"steps": 500})   # upload, submit, wait
        print(est["result"]["w1"], est["result"]["lower_bound"])

Every problem+json answer becomes a :class:`LipwassError` (status, title, detail); a job that
ends failed or cancelled raises :class:`EstimateFailed` / :class:`EstimateCancelled`.
"""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np

CONTENT_TYPES = {
    ".npy": "application/x-npy",
    ".csv": "text/csv",
    ".json": "application/json",
    ".arrow": "application/vnd.apache.arrow.stream",
    ".arrows": "application/vnd.apache.arrow.stream",
    ".ipc": "application/vnd.apache.arrow.stream",
}
CHUNK = 1 << 20
FINISHED = ("succeeded", "failed", "cancelled")

ArrayOrPath = np.ndarray | str | os.PathLike


class LipwassError(Exception):
    """An error answer of the service (problem+json), or a transport failure (status 0)."""

    def __init__(
        self, status: int, title: str, detail: str | None = None, body: Any = None
    ) -> None:
        super().__init__(f"{status} {title}" + (f": {detail}" if detail else ""))
        self.status = status
        self.title = title
        self.detail = detail
        self.body = body


class EstimateFailed(LipwassError):
    """The job ended ``failed``; ``estimate`` holds the job with its ``error``."""

    def __init__(self, estimate: dict[str, Any]) -> None:
        err = estimate.get("error") or {}
        super().__init__(0, err.get("title") or "Estimate failed", err.get("detail"), body=estimate)
        self.estimate = estimate


class EstimateCancelled(LipwassError):
    """The job ended ``cancelled``."""

    def __init__(self, estimate: dict[str, Any]) -> None:
        super().__init__(0, "Estimate cancelled", f"estimate {estimate.get('id')}", body=estimate)
        self.estimate = estimate


def _raise_for(r: httpx.Response) -> None:
    if r.status_code < 400:
        return
    try:
        body = r.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and "title" in body:
        raise LipwassError(r.status_code, str(body["title"]), body.get("detail"), body)
    raise LipwassError(r.status_code, r.reason_phrase or "HTTP error", r.text[:500] or None, body)


def _npy_stream(a: np.ndarray) -> Iterator[bytes]:
    """The .npy bytes of ``a`` in chunks, without a second copy of the array in memory."""
    a = np.ascontiguousarray(a)
    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(head, np.lib.format.header_data_from_array_1_0(a))
    yield head.getvalue()
    flat = memoryview(a.reshape(-1)).cast("B") if a.size else memoryview(b"")
    for i in range(0, len(flat), CHUNK):
        yield bytes(flat[i : i + CHUNK])


def _arrow_bytes(a: np.ndarray, weights: np.ndarray) -> bytes:
    """An Arrow IPC stream: one float column per dimension and a ``weight`` column."""
    import pyarrow as pa

    a = np.asarray(a)
    if a.ndim == 1:
        a = a.reshape(-1, 1)
    cols = {f"x{j}": pa.array(np.ascontiguousarray(a[:, j])) for j in range(a.shape[1])}
    cols["weight"] = pa.array(np.asarray(weights, dtype=np.float64).reshape(-1))
    table = pa.table(cols)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _file_stream(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            yield chunk


def parse_sse(lines: Iterator[str]) -> Iterator[tuple[str, Any]]:
    """(event, data) pairs of a Server-Sent Events stream; data JSON-decoded when it parses."""
    event, data = "message", []
    for line in lines:
        if line == "":
            if data:
                text = "\n".join(data)
                try:
                    value: Any = json.loads(text)
                except ValueError:
                    value = text
                yield event, value
            event, data = "message", []
        elif line.startswith(":"):
            continue
        else:
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "event":
                event = value
            elif field == "data":
                data.append(value)


class Client:
    """The lipwass API at ``url``. Use as a context manager, or call :meth:`close`."""

    def __init__(
        self, url: str = "http://127.0.0.1:8000", timeout: float = 30.0, http: Any = None
    ) -> None:
        """``http`` replaces the httpx.Client (e.g. a Starlette TestClient in tests)."""
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.http: httpx.Client = http or httpx.Client(base_url=self.url, timeout=timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    # -- plumbing ------------------------------------------------------------------------------
    def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            r = self.http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise LipwassError(0, "Transport error", f"{type(exc).__name__}: {exc}") from exc
        _raise_for(r)
        return r

    def _json(self, method: str, path: str, **kw: Any) -> Any:
        return self._request(method, path, **kw).json()

    # -- datasets ------------------------------------------------------------------------------
    def upload(
        self,
        data: ArrayOrPath,
        weights: np.ndarray | list[float] | None = None,
        name: str | None = None,
    ) -> dict[str, Any]:
        """Upload an array or a file (.npy, .csv, .json, .arrow); returns the dataset.

        An array is streamed as .npy (or as Arrow with a ``weight`` column when ``weights`` are
        given); a file is streamed as is with its content type (its own weight column counts).
        """
        params = {"name": name} if name is not None else None
        if isinstance(data, str | os.PathLike):
            path = Path(data)
            ctype = CONTENT_TYPES.get(path.suffix.lower())
            if ctype is None:
                raise ValueError(
                    f"{path}: unknown file type {path.suffix!r}; use one of "
                    + ", ".join(sorted(CONTENT_TYPES))
                )
            if not path.is_file():
                raise FileNotFoundError(f"{path}: no such file")
            if weights is not None:
                if ctype != "application/x-npy":
                    raise ValueError(f"{path}: put weights in the file (a 'weight' column)")
                data = np.load(path, allow_pickle=False)
            else:
                headers = {
                    "content-type": ctype,
                    "content-length": str(path.stat().st_size),
                }
                return self._json(
                    "POST", "/v1/datasets", content=_file_stream(path), headers=headers,
                    params=params,
                )  # fmt: skip
        arr = np.asarray(data)
        if weights is not None:
            body = _arrow_bytes(arr, np.asarray(weights))
            headers = {"content-type": "application/vnd.apache.arrow.stream"}
            return self._json("POST", "/v1/datasets", content=body, headers=headers, params=params)
        stream = _npy_stream(arr)
        head = next(stream)
        headers = {
            "content-type": "application/x-npy",
            "content-length": str(len(head) + arr.size * arr.itemsize),
        }

        def body() -> Iterator[bytes]:
            yield head
            yield from stream

        return self._json("POST", "/v1/datasets", content=body(), headers=headers, params=params)

    def datasets(self, **params: Any) -> dict[str, Any]:
        """One page of datasets: {items, ...}; ``params`` go to the query (limit, offset)."""
        return self._json("GET", "/v1/datasets", params=params or None)

    def estimates(self, **params: Any) -> dict[str, Any]:
        """One page of estimates: {items, ...}; ``params`` go to the query (status, limit...)."""
        return self._json("GET", "/v1/estimates", params=params or None)

    def dataset(self, dataset_id: str) -> dict[str, Any]:
        return self._json("GET", f"/v1/datasets/{dataset_id}")

    def delete_dataset(self, dataset_id: str) -> None:
        self._request("DELETE", f"/v1/datasets/{dataset_id}")

    # -- estimates -----------------------------------------------------------------------------
    def submit(
        self,
        source: str,
        target: str,
        *,
        method: str = "auto",
        idempotency_key: str | None = None,
        **options: Any,
    ) -> dict[str, Any]:
        """Submit an estimate of two dataset ids; ``options``: crosscheck, holdout, seed, config."""
        body = {"source": source, "target": target, "method": method, **options}
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return self._json("POST", "/v1/estimates", json=body, headers=headers)

    def get(self, estimate_id: str) -> dict[str, Any]:
        return self._json("GET", f"/v1/estimates/{estimate_id}")

    def cancel(self, estimate_id: str) -> dict[str, Any]:
        return self._json("POST", f"/v1/estimates/{estimate_id}/cancel")

    def delete(self, estimate_id: str) -> None:
        self._request("DELETE", f"/v1/estimates/{estimate_id}")

    def evaluate(
        self, estimate_id: str, points: np.ndarray | list, gradient: bool = False
    ) -> dict[str, Any]:
        """g = (f - c)/L at ``points`` (and its gradient): {values, gradients?}."""
        pts = np.asarray(points, dtype=np.float64)
        if pts.ndim == 1:
            pts = pts.reshape(1, -1)
        body = {"points": pts.tolist(), "gradient": gradient}
        return self._json("POST", f"/v1/estimates/{estimate_id}/evaluate", json=body)

    def download_potential(self, estimate_id: str, path: str | os.PathLike) -> Path:
        """Save the potential (safetensors, loadable with lipcore.load_potential) to ``path``."""
        out = Path(path)
        try:
            with self.http.stream("GET", f"/v1/estimates/{estimate_id}/potential") as r:
                if r.status_code >= 400:
                    r.read()
                    _raise_for(r)
                tmp = out.with_name(out.name + ".part")
                with open(tmp, "wb") as f:
                    for chunk in r.iter_bytes():
                        f.write(chunk)
                os.replace(tmp, out)
        except httpx.HTTPError as exc:
            raise LipwassError(0, "Transport error", f"{type(exc).__name__}: {exc}") from exc
        return out

    def report_png(self, estimate_id: str) -> bytes:
        return self._request("GET", f"/v1/estimates/{estimate_id}/report.png").content

    def wait(
        self,
        estimate_id: str,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
        timeout: float | None = None,
        poll_s: float = 0.5,
        follow: bool = True,
    ) -> dict[str, Any]:
        """Follow the job (SSE, falling back to polling; ``follow=False``: poll only) until it
        has finished; returns the estimate.

        Raises EstimateFailed / EstimateCancelled when it did not succeed, TimeoutError after
        ``timeout`` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        est: dict[str, Any] | None = None
        if follow:
            try:
                est = self._follow_events(estimate_id, on_progress, deadline)
            except LipwassError as exc:
                if exc.status == 404:
                    raise
        while est is None or est.get("status") not in FINISHED:
            est = self.get(estimate_id)
            if est.get("status") in FINISHED:
                break
            if on_progress and est.get("progress"):
                on_progress(est["progress"])
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"estimate {estimate_id} still {est.get('status')}")
            time.sleep(poll_s)
        if est.get("status") == "failed":
            raise EstimateFailed(est)
        if est.get("status") == "cancelled":
            raise EstimateCancelled(est)
        return est

    def _follow_events(
        self,
        estimate_id: str,
        on_progress: Callable[[dict[str, Any]], None] | None,
        deadline: float | None,
    ) -> dict[str, Any] | None:
        """The final estimate from the SSE stream, or None when the stream ended without one."""
        read = max(self.timeout, 60.0)
        if deadline is not None:
            read = max(min(read, deadline - time.monotonic()), 0.01)
        timeout = httpx.Timeout(self.timeout, read=read)
        try:
            with self.http.stream(
                "GET", f"/v1/estimates/{estimate_id}/events", timeout=timeout
            ) as r:
                if r.status_code >= 400:
                    r.read()
                    _raise_for(r)
                for event, data in parse_sse(r.iter_lines()):
                    if event == "progress" and on_progress and isinstance(data, dict):
                        on_progress(data)
                    elif event in ("result", "error"):
                        if isinstance(data, dict) and data.get("status") in FINISHED:
                            return data
                        return None
                    if deadline is not None and time.monotonic() > deadline:
                        raise TimeoutError(f"estimate {estimate_id} has not finished")
        except httpx.HTTPError:
            return None  # the stream broke: poll instead
        return None

    def estimate(
        self,
        x: ArrayOrPath,
        y: ArrayOrPath,
        *,
        a: np.ndarray | list[float] | None = None,
        b: np.ndarray | list[float] | None = None,
        method: str = "auto",
        wait: bool = True,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
        timeout: float | None = None,
        **options: Any,
    ) -> dict[str, Any]:
        """Upload both sets (a ``ds_...`` id is used as is), submit, and wait for the job.

        Returns the estimate (``id``, ``status``, ``result`` with ``w1``, ``lower_bound``, ...);
        with ``wait=False`` the queued estimate. ``options``: crosscheck, holdout, seed, config.
        """
        src = self._dataset_id(x, a)
        tgt = self._dataset_id(y, b)
        est = self.submit(src, tgt, method=method, **options)
        if not wait:
            return est
        return self.wait(est["id"], on_progress=on_progress, timeout=timeout)

    def _dataset_id(self, data: ArrayOrPath, weights: Any) -> str:
        if isinstance(data, str) and data.startswith("ds_") and not Path(data).exists():
            return data
        return self.upload(data, weights)["id"]
