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
    ".tsv": "text/csv",
    ".json": "application/json",
    ".arrow": "application/vnd.apache.arrow.stream",
    ".arrows": "application/vnd.apache.arrow.stream",
    ".ipc": "application/vnd.apache.arrow.stream",
    ".parquet": "application/vnd.apache.parquet",
    ".pq": "application/vnd.apache.parquet",
}
#: The upload's query options (see the README): which columns, which holds the weights, CSV.
UPLOAD_OPTIONS = ("columns", "exclude", "header", "delimiter")
CHUNK = 1 << 20
FINISHED = ("succeeded", "failed", "cancelled")

#: An array, a file path, or a data frame (pandas, polars) or pyarrow Table.
ArrayOrPath = np.ndarray | str | os.PathLike | Any
#: Weights: one per sample, or (a str) the name of the column that holds them.
Weights = np.ndarray | list[float] | str | None


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
    flat = a.reshape(-1).data.cast("B") if a.size else memoryview(b"")
    for i in range(0, len(flat), CHUNK):
        yield bytes(flat[i : i + CHUNK])


def _frame_table(data: Any) -> Any:
    """A pandas or polars DataFrame, or a pyarrow Table, as a pyarrow Table (names kept as
    strings); None for anything else. pandas and polars are never imported here."""
    from lipcore.validation import is_frame

    if not is_frame(data):
        return None
    import pyarrow as pa

    lib = type(data).__module__.split(".", 1)[0]
    if lib == "pandas":
        table = pa.Table.from_pandas(data, preserve_index=False)
    elif lib == "polars":
        table = data.to_arrow()
    else:
        table = data
    return table.rename_columns([str(c) for c in table.column_names])


def _array_table(a: np.ndarray) -> Any:
    """An (n, d) array as a pyarrow Table with columns x0 … x{d-1}."""
    import pyarrow as pa

    a = np.asarray(a)
    if a.ndim == 1:
        a = a.reshape(-1, 1)
    return pa.table({f"x{j}": np.ascontiguousarray(a[:, j]) for j in range(a.shape[1])})


def _with_weights(table: Any, weights: Any) -> tuple[Any, str]:
    """``table`` with a column of ``weights`` under a name it does not use: (table, name)."""
    name = "weight"
    while name in table.column_names:
        name = "_" + name
    return table.append_column(name, [np.asarray(weights, dtype=np.float64).reshape(-1)]), name


def _arrow_stream(table: Any) -> Iterator[bytes]:
    """The Arrow IPC stream of ``table``, a record batch at a time (no second copy in memory)."""
    import pyarrow as pa

    class Pending:
        def __init__(self) -> None:
            self.parts: list[bytes] = []
            self.closed = False

        def write(self, b: Any) -> int:
            self.parts.append(bytes(b))
            return len(b)

        def flush(self) -> None:
            pass

        def close(self) -> None:
            self.closed = True

        def take(self) -> bytes:
            out, self.parts = b"".join(self.parts), []
            return out

    out = Pending()
    writer = pa.ipc.new_stream(out, table.schema)
    yield out.take()
    row_bytes = max(1, table.nbytes // max(1, table.num_rows))
    for batch in table.to_batches(max_chunksize=max(1, 8 * CHUNK // row_bytes)):
        writer.write_batch(batch)
        yield out.take()
    writer.close()
    yield out.take()


def _named(ds: dict[str, Any]) -> bool:
    """Whether a dataset's columns are names (not the x0 … x{d-1} of unnamed data)."""
    cols: list[str] = ds.get("columns") or []
    return bool(cols) and cols != [f"x{j}" for j in range(len(cols))]


def _file_stream(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            yield chunk


def parse_sse(lines: Iterator[str]) -> Iterator[tuple[str, Any]]:
    """(event, data) pairs of a Server-Sent Events stream; data JSON-decoded when it parses."""
    event, data = "message", list[str]()
    for line in lines:
        if line == "":
            if data:
                text = "\n".join(data)
                try:
                    value: Any = json.loads(text)
                except ValueError:
                    value = text
                yield event, value
            event, data = "message", list[str]()
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
        self,
        url: str = "http://127.0.0.1:8000",
        timeout: float = 30.0,
        http: Any = None,
        api_key: str | None = None,
    ) -> None:
        """``api_key`` (default: ``LIPWASS_API_KEY``) is sent as ``Authorization: Bearer``;
        ``http`` replaces the httpx.Client (e.g. a Starlette TestClient in tests)."""
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.http: httpx.Client = http or httpx.Client(base_url=self.url, timeout=timeout)
        key = api_key if api_key is not None else os.environ.get("LIPWASS_API_KEY")
        if key:
            self.http.headers["Authorization"] = f"Bearer {key}"

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
        weights: Weights = None,
        name: str | None = None,
        **options: str | list[str] | None,
    ) -> dict[str, Any]:
        """Upload an array, a data frame or a file; returns the dataset (with its ``columns``).

        ``data``: a numpy array (streamed as .npy; columns x0 … x{d-1}), a pandas or polars
        DataFrame or a pyarrow Table (streamed as Arrow; its column names kept), or a file
        (.npy, .csv, .tsv, .json, .arrow, .parquet: streamed as is). ``weights``: one per
        sample, or the name of the column that holds them (nothing else is ever read as
        weights). ``options``: ``columns`` and ``exclude`` (names, a list or comma-separated),
        ``header`` (auto, true, false) and ``delimiter`` for CSV: the upload's query options.
        """
        params: dict[str, str] = {} if name is None else {"name": name}
        for key, value in options.items():
            if key not in UPLOAD_OPTIONS:
                raise TypeError(f"upload() got an unexpected option {key!r}")
            if value is not None:
                params[key] = value if isinstance(value, str) else ",".join(value)
        if isinstance(weights, str):
            params["weights"] = weights
            weights = None
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
                    raise ValueError(
                        f"{path}: name the file's weight column instead (weights='<column>')"
                    )
                data = np.load(path, allow_pickle=False)
            else:
                headers = {
                    "content-type": ctype,
                    "content-length": str(path.stat().st_size),
                }
                return self._post_dataset(_file_stream(path), headers, params)
        table = _frame_table(data)
        if table is None and weights is None:
            arr = np.asarray(data)
            stream = _npy_stream(arr)
            head = next(stream)
            headers = {
                "content-type": "application/x-npy",
                "content-length": str(len(head) + arr.size * arr.itemsize),
            }

            def chunks() -> Iterator[bytes]:
                yield head
                yield from stream

            return self._post_dataset(chunks(), headers, params)
        if table is None:
            table = _array_table(np.asarray(data))
        if weights is not None:
            table, params["weights"] = _with_weights(table, weights)
        headers = {"content-type": "application/vnd.apache.arrow.stream"}
        return self._post_dataset(_arrow_stream(table), headers, params)

    def _post_dataset(
        self, body: Iterator[bytes], headers: dict[str, str], params: dict[str, str]
    ) -> dict[str, Any]:
        return self._json(
            "POST", "/v1/datasets", content=body, headers=headers, params=params or None
        )

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
        a: Weights = None,
        b: Weights = None,
        method: str = "auto",
        wait: bool = True,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
        timeout: float | None = None,
        upload: dict[str, Any] | None = None,
        **options: Any,
    ) -> dict[str, Any]:
        """Upload both sets (a ``ds_...`` id is used as is), submit, and wait for the job.

        Returns the estimate (``id``, ``status``, ``result`` with ``w1``, ``lower_bound``, ...);
        with ``wait=False`` the queued estimate. ``a``/``b``: weights, or their column's name.
        ``upload``: :meth:`upload` options for both sets (columns, exclude, header, delimiter).
        ``options``: crosscheck, holdout, seed, config. Two sets with named columns that
        differ (names or order) are refused before any job is submitted.
        """
        src_ds = self._dataset(x, a, upload or {})
        tgt_ds = self._dataset(y, b, upload or {})
        src, tgt = src_ds["id"], tgt_ds["id"]
        if _named(src_ds) and _named(tgt_ds) and src_ds["columns"] != tgt_ds["columns"]:
            raise ValueError(
                f"x and y have different columns: {src_ds.get('columns')} and "
                f"{tgt_ds.get('columns')}; pick the same ones (columns=...)"
            )
        est = self.submit(src, tgt, method=method, **options)
        if not wait:
            return est
        return self.wait(est["id"], on_progress=on_progress, timeout=timeout)

    def _dataset(self, data: ArrayOrPath, weights: Any, upload: dict[str, Any]) -> dict[str, Any]:
        if isinstance(data, str) and data.startswith("ds_") and not Path(data).exists():
            return self.dataset(data)
        return self.upload(data, weights, **upload)
