"""The datasets routes: uploads in every format, dedup across formats, problems, list/get/delete."""

from __future__ import annotations

import io
import json
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from service.ingest.base import MAX_ABS
from service.settings import Settings
from service.store import EstimateRow

NPY = {"content-type": "application/x-npy"}
ARROW = {"content-type": "application/vnd.apache.arrow.stream"}
CSV = {"content-type": "text/csv"}
PROBLEM = "application/problem+json"


def npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=True)
    return buf.getvalue()


def arrow(a: np.ndarray, weights: np.ndarray | None = None) -> bytes:
    cols = {f"x{j}": a[:, j] for j in range(a.shape[1])}
    if weights is not None:
        cols["weight"] = weights
    t = pa.table(cols)
    buf = io.BytesIO()
    with pa.ipc.new_stream(buf, t.schema) as w:
        w.write_table(t)
    return buf.getvalue()


def csv(a: np.ndarray, weights: np.ndarray | None = None) -> str:
    names = [f"x{j}" for j in range(a.shape[1])] + (["weight"] if weights is not None else [])
    rows = [list(r) + ([weights[i]] if weights is not None else []) for i, r in enumerate(a)]
    return ",".join(names) + "\n" + "\n".join(",".join(repr(float(v)) for v in r) for r in rows)


def problem(r, status: int, type_: str, *words: str) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM)
    body = r.json()
    assert body["status"] == status and body["type"] == type_ and body["title"]
    for w in words:
        assert w.lower() in body["detail"].lower(), body["detail"]
    return body


def stored(api: TestClient, sha256: str) -> tuple[np.ndarray, np.ndarray | None]:
    return api.app.state.blobs.load_dataset(sha256, mmap=False)


def test_npy_upload_creates_then_finds_the_same_dataset(api: TestClient) -> None:
    a = np.random.default_rng(1).normal(size=(50, 3)).astype(np.float32)
    r = api.post("/v1/datasets", params={"name": "gauss"}, content=npy(a), headers=NPY)
    assert r.status_code == 201, r.text
    ds = r.json()
    assert r.headers["location"] == f"/v1/datasets/{ds['id']}"
    assert ds["id"].startswith("ds_") and ds["name"] == "gauss"
    assert (ds["n"], ds["d"], ds["dtype"], ds["weighted"], ds["bytes"]) == (
        50,
        3,
        "float32",
        False,
        600,
    )
    samples, weights = stored(api, ds["sha256"])
    np.testing.assert_array_equal(samples, a)
    assert weights is None
    # The same bytes again: 200 with the existing dataset, its first name kept.
    r2 = api.post("/v1/datasets", params={"name": "other"}, content=npy(a), headers=NPY)
    assert r2.status_code == 200 and r2.json() == ds
    assert "location" not in r2.headers
    assert api.get("/v1/datasets").json()["total"] == 1


def test_same_data_as_npy_arrow_csv_json_is_one_dataset(api: TestClient) -> None:
    a = np.random.default_rng(2).normal(size=(20, 2))
    first = api.post("/v1/datasets", content=npy(a), headers=NPY)
    assert first.status_code == 201
    for r in (
        api.post("/v1/datasets", content=arrow(a), headers=ARROW),
        api.post("/v1/datasets", content=csv(a), headers=CSV),
        api.post("/v1/datasets", json={"samples": a.tolist()}),
        api.post(
            "/v1/datasets", content=npy(a), headers={"content-type": "application/octet-stream"}
        ),
    ):
        assert r.status_code == 200, r.text
        assert r.json()["id"] == first.json()["id"]
    # float32 of the same numbers is other data (other dtype): a new dataset.
    r = api.post("/v1/datasets", content=npy(a.astype(np.float32)), headers=NPY)
    assert r.status_code == 201 and r.json()["sha256"] != first.json()["sha256"]


def test_weights_are_normalised_and_scale_free(api: TestClient) -> None:
    a = np.arange(8, dtype=np.float64).reshape(4, 2)
    w = np.array([1.0, 2.0, 3.0, 4.0])
    r = api.post("/v1/datasets", content=arrow(a, w), headers=ARROW, params={"weights": "weight"})
    assert r.status_code == 201 and r.json()["weighted"] is True
    assert r.json()["columns"] == ["x0", "x1"]
    assert r.json()["bytes"] == 4 * 2 * 8 + 4 * 8
    samples, weights = stored(api, r.json()["sha256"])
    np.testing.assert_allclose(weights, w / 10)
    assert weights.dtype == np.float64
    # The same data with weights scaled by 10, as CSV and JSON: the same dataset.
    again = api.post(
        "/v1/datasets", content=csv(a, w * 10), headers=CSV, params={"weights": "weight"}
    )
    assert again.status_code == 200 and again.json()["id"] == r.json()["id"]
    again = api.post("/v1/datasets", json={"samples": a.tolist(), "weights": (w * 3).tolist()})
    assert again.status_code == 200 and again.json()["id"] == r.json()["id"]
    # Without weights it is another dataset, unweighted even though uniform would be equal.
    plain = api.post("/v1/datasets", json={"samples": a.tolist()})
    assert plain.status_code == 201 and plain.json()["weighted"] is False


@pytest.mark.parametrize(
    ("body", "headers", "status", "type_", "words"),
    [
        (npy(np.array([1, None], dtype=object)), NPY, 422, "invalid-upload", ("object",)),
        (b"\x80\x04\x95pickle", NPY, 422, "invalid-upload", ("magic",)),
        (npy(np.asfortranarray(np.ones((3, 2)))), NPY, 422, "invalid-upload", ("fortran",)),
        (npy(np.ones((9, 3)))[:-7], NPY, 422, "invalid-upload", ("truncated",)),
        (b"\x93NUMPY\x02\x00\xff\xff\xff\x7f{", NPY, 422, "invalid-upload", ("header length",)),
        (npy(np.array([[np.nan, 1.0]])), NPY, 422, "invalid-upload", ("non-finite",)),
        (npy(np.array([[np.inf]])), NPY, 422, "invalid-upload", ("non-finite",)),
        (npy(np.ones((2, 2), dtype=np.int32)), NPY, 422, "invalid-upload", ("int32",)),
        (npy(np.ones((2, 2, 2))), NPY, 422, "invalid-upload", ("3-d",)),
        (npy(np.ones((0, 2))), NPY, 422, "invalid-upload", ("empty",)),
        (b"", NPY, 422, "invalid-upload", ("empty",)),
        (
            b'{"samples": [[1], [1]], "weights": [1, -1]}',
            {"content-type": "application/json"},
            422,
            "invalid-upload",
            ("negative",),
        ),
        (
            b'{"samples": [[1], [1]], "weights": [0, 0]}',
            {"content-type": "application/json"},
            422,
            "invalid-upload",
            ("positive",),
        ),
        (b"x,weight\n1,a\n", CSV, 422, "invalid-upload", ("'weight'", "line 2", "?exclude")),
        (
            b'{"samples": [[1, 2]',
            {"content-type": "application/json"},
            422,
            "invalid-upload",
            ("malformed",),
        ),
        (b"1,2", {"content-type": "text/plain"}, 415, "unsupported-media-type", ("text/plain",)),
        (b"1,2", {}, 415, "unsupported-media-type", ("content-type",)),
        (
            b"\x1f\x8b",
            {**NPY, "content-encoding": "gzip"},
            415,
            "unsupported-media-type",
            ("gzip",),
        ),
    ],
)
def test_bad_uploads_are_problems(
    api: TestClient, body: bytes, headers: dict, status: int, type_: str, words: tuple[str, ...]
) -> None:
    r = api.post("/v1/datasets", content=body, headers=headers)
    problem(r, status, f"/problems/{type_}", *words)
    assert api.get("/v1/datasets").json()["total"] == 0


def test_weight_column_must_be_numeric(api: TestClient) -> None:
    r = api.post("/v1/datasets", content=b"x,weight\n1,2\n", headers=CSV)
    assert r.status_code == 201 and r.json()["columns"] == ["x", "weight"]  # a feature
    t = pa.table({"x": [1.0, 2.0], "weight": ["a", "b"]})
    buf = io.BytesIO()
    with pa.ipc.new_stream(buf, t.schema) as w:
        w.write_table(t)
    problem(
        api.post(
            "/v1/datasets", content=buf.getvalue(), headers=ARROW, params={"weights": "weight"}
        ),
        422,
        "/problems/invalid-upload",
        "'weight'",
        "?weights",
    )


def test_limits_from_settings(make_client: Callable[..., TestClient], settings: Settings) -> None:
    small = settings.model_copy(
        update={"max_body_bytes": 4096, "max_json_bytes": 200, "max_n": 100, "max_d": 4}
    )
    api = make_client(small)
    big = npy(np.ones((200, 4), dtype=np.float64))  # 6.5 kB > 4096
    problem(
        api.post("/v1/datasets", content=big, headers=NPY),
        413,
        "/problems/upload-too-large",
        "4096",
    )
    # Streamed without Content-Length: stopped as the count passes the limit.
    r = api.post("/v1/datasets", content=iter([big[:3000], big[3000:]]), headers=NPY)
    problem(r, 413, "/problems/upload-too-large", "4096")
    # JSON and CSV bodies have their own (smaller) limit.
    doc = json.dumps({"samples": [[1.0]] * 60})
    problem(
        api.post("/v1/datasets", content=doc, headers={"content-type": "application/json"}),
        413,
        "/problems/upload-too-large",
        "200",
    )
    problem(
        api.post("/v1/datasets", content=npy(np.ones((101, 1))), headers=NPY),
        413,
        "/problems/upload-too-large",
        "n=101",
    )
    problem(
        api.post("/v1/datasets", content=npy(np.ones((2, 5))), headers=NPY),
        413,
        "/problems/upload-too-large",
        "d=5",
    )
    # A lying Content-Length larger than the limit is refused before reading.
    r = api.post("/v1/datasets", content=b"x", headers={**NPY, "content-length": "999999"})
    problem(r, 413, "/problems/upload-too-large", "999999")


def test_name_is_length_limited(api: TestClient) -> None:
    body = npy(np.ones((2, 2)))
    problem(
        api.post("/v1/datasets", params={"name": "x" * 201}, content=body, headers=NPY),
        422,
        "/problems/validation",
        "200",
    )
    problem(
        api.post("/v1/datasets", params={"name": "a\nb"}, content=body, headers=NPY),
        422,
        "/problems/validation",
        "control",
    )


def test_list_get_and_pagination(api: TestClient) -> None:
    ids = []
    for i in range(5):
        r = api.post("/v1/datasets", json={"samples": [[float(i)]]})
        assert r.status_code == 201
        ids.append(r.json()["id"])
    page = api.get("/v1/datasets", params={"limit": 2}).json()
    assert page["total"] == 5 and page["next_offset"] == 2
    assert [d["id"] for d in page["items"]] == ids[::-1][:2]  # newest first
    seen = []
    offset: int | None = 0
    while offset is not None:
        page = api.get("/v1/datasets", params={"limit": 2, "offset": offset}).json()
        seen += [d["id"] for d in page["items"]]
        offset = page["next_offset"]
    assert seen == ids[::-1]
    one = api.get(f"/v1/datasets/{ids[0]}")
    assert one.status_code == 200 and one.json()["n"] == 1
    problem(api.get("/v1/datasets/ds_nope"), 404, "/problems/dataset-not-found", "ds_nope")
    problem(api.get("/v1/datasets", params={"limit": 1001}), 422, "/problems/validation")
    problem(api.get("/v1/datasets", params={"limit": 0}), 422, "/problems/validation")


def _estimate(api: TestClient, eid: str, source: str, target: str, status: str) -> None:
    with api.app.state.db.session() as s:
        s.add(
            EstimateRow(
                id=eid,
                status=status,
                source_id=source,
                target_id=target,
                method="lipschitz",
                crosscheck="never",
                holdout=0.2,
                seed=0,
                config={},
                request_hash="0" * 64,
            )
        )


def _set_status(api: TestClient, eid: str, status: str) -> None:
    with api.app.state.db.session() as s:
        s.get(EstimateRow, eid).status = status


def test_delete_removes_row_and_blobs(api: TestClient) -> None:
    r = api.post("/v1/datasets", json={"samples": [[1.0, 2.0]], "weights": [1.0]})
    ds = r.json()
    blobs = api.app.state.blobs
    assert blobs.has_dataset(ds["sha256"]) and blobs.weights_path(ds["sha256"]).exists()
    d = api.delete(f"/v1/datasets/{ds['id']}")
    assert d.status_code == 204 and d.content == b""
    assert not blobs.dataset_dir(ds["sha256"]).exists()
    problem(api.get(f"/v1/datasets/{ds['id']}"), 404, "/problems/dataset-not-found")
    problem(api.delete(f"/v1/datasets/{ds['id']}"), 404, "/problems/dataset-not-found")
    # Uploading it again creates it afresh.
    again = api.post("/v1/datasets", json={"samples": [[1.0, 2.0]], "weights": [1.0]})
    assert again.status_code == 201 and blobs.has_dataset(ds["sha256"])


def test_delete_is_409_while_an_estimate_uses_it(api: TestClient) -> None:
    src = api.post("/v1/datasets", json={"samples": [[1.0]]}).json()
    tgt = api.post("/v1/datasets", json={"samples": [[2.0]]}).json()
    _estimate(api, "est_running", src["id"], tgt["id"], "running")
    for ds in (src, tgt):
        problem(
            api.delete(f"/v1/datasets/{ds['id']}"),
            409,
            "/problems/dataset-in-use",
            "est_running",
            "running",
        )
    _set_status(api, "est_running", "queued")
    problem(api.delete(f"/v1/datasets/{tgt['id']}"), 409, "/problems/dataset-in-use", "queued")
    # Finished: still referred to, so still 409, with a hint to delete the estimate first.
    _set_status(api, "est_running", "succeeded")
    problem(
        api.delete(f"/v1/datasets/{src['id']}"),
        409,
        "/problems/dataset-in-use",
        "delete them first",
    )
    assert api.app.state.blobs.has_dataset(src["sha256"])
    with api.app.state.db.session() as s:
        s.delete(s.get(EstimateRow, "est_running"))
    assert api.delete(f"/v1/datasets/{src['id']}").status_code == 204


def test_openapi_documents_every_response(api: TestClient) -> None:
    spec = api.get("/openapi.json").json()
    post = spec["paths"]["/v1/datasets"]["post"]
    assert {"200", "201", "400", "413", "415", "422"} <= set(post["responses"])
    assert "Location" in post["responses"]["201"]["headers"]
    assert set(post["requestBody"]["content"]) == {
        "application/octet-stream",
        "application/x-npy",
        "application/vnd.apache.arrow.stream",
        "application/vnd.apache.parquet",
        "text/csv",
        "application/json",
    }
    assert {"204", "404", "409"} <= set(
        spec["paths"]["/v1/datasets/{dataset_id}"]["delete"]["responses"]
    )
    assert "Dataset" in spec["components"]["schemas"]


def test_concurrent_identical_upload_returns_the_row_that_won(
    api: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service.store import datasets as rows

    body = {"samples": [[1.0, 2.0], [3.0, 4.0]]}
    first = api.post("/v1/datasets", json=body).json()
    real = rows.by_sha
    calls = []

    def blind_once(db, sha256, tenant):  # the other upload's row is not visible at first look
        calls.append(sha256)
        return None if len(calls) == 1 else real(db, sha256, tenant)

    monkeypatch.setattr(rows, "by_sha", blind_once)
    r = api.post("/v1/datasets", json=body)
    assert r.status_code == 200 and r.json()["id"] == first["id"]
    assert len(calls) == 2  # looked again after the unique (tenant, sha256) refused the insert
    assert api.get("/v1/datasets").json()["total"] == 1


def test_bad_content_length_is_400(api: TestClient) -> None:
    r = api.post("/v1/datasets", content=b"x", headers={**NPY, "content-length": "-5"})
    assert r.status_code == 400 and r.headers["content-type"].startswith(PROBLEM)


def test_upload_leaves_no_temporary_files(api: TestClient) -> None:
    api.post("/v1/datasets", content=npy(np.ones((3, 2))), headers=NPY)
    api.post("/v1/datasets", content=npy(np.ones((3, 2))), headers=NPY)
    api.post("/v1/datasets", content=b"junk", headers=NPY)
    api.post("/v1/datasets", content=arrow(np.ones((3, 2))), headers=ARROW)
    assert _tmp_empty(api)


def _tmp_empty(api: TestClient, wait_s: float = 5.0) -> bool:
    """Whether the blob tmp folder empties (left-over uploads are removed in the background)."""
    import time

    deadline = time.monotonic() + wait_s
    while list(api.app.state.blobs.tmp.iterdir()):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.mark.parametrize(
    ("header_of", "words"),
    [
        (np.ones((10, 2), dtype=np.int64), ("int64",)),
        (np.asfortranarray(np.ones((10, 2))), ("fortran",)),
        (np.ones((10, 2, 2)), ("3-d",)),
    ],
)
def test_a_refused_npy_header_stops_the_upload_early(
    tmp_path, header_of: np.ndarray, words: tuple[str, ...]
) -> None:
    import asyncio

    from service import ingest
    from service.api.datasets import _receive
    from service.ingest.stream import UploadSink
    from service.problems import ProblemError

    head = npy(header_of)[: -header_of.nbytes]
    sent = []

    class Streamed:  # the request's body as it arrives, counted
        async def stream(self):
            yield head
            for i in range(400):  # 400 x 64 kB = 25 MB that should never be needed
                sent.append(i)
                yield b"\0" * 65536
                await asyncio.sleep(0.001)

    async def upload() -> None:
        limits = ingest.Limits(max_n=1000, max_d=10)
        async with UploadSink(tmp_path / "b", limits, digest=True, block_bytes=65536) as sink:
            await _receive(Streamed(), sink, 1 << 30, ingest.format_for("application/x-npy"))

    with pytest.raises(ProblemError) as e:
        asyncio.run(upload())
    assert e.value.status == 422 and e.value.kind.type == "/problems/invalid-upload"
    for w in words:
        assert w in e.value.detail.lower()
    assert len(sent) < 100


def test_a_npy_header_announcing_more_than_the_limit_is_413_early(
    make_client: Callable[..., TestClient], settings: Settings
) -> None:
    api = make_client(settings.model_copy(update={"max_body_bytes": 8 * 1024**2}))
    head = npy(np.ones((1, 1), dtype=np.float32))[:-4].replace(b"(1, 1)", b"(9999999, 1)")
    r = api.post("/v1/datasets", content=iter([head, b"\0" * 1024]), headers=NPY)
    problem(r, 413, "/problems/upload-too-large", "announces")


def test_a_full_disk_is_507(api: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(*_: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(api.app.state.blobs, "put_dataset_file", full)
    r = api.post("/v1/datasets", json={"samples": [[1.0]]})
    problem(r, 507, "/problems/insufficient-storage", "full")
    assert _tmp_empty(api)


def test_list_filters_by_name_and_hash(api: TestClient) -> None:
    from service.ingest import canonical_sha256

    a = np.arange(4.0).reshape(2, 2)
    ds = api.post("/v1/datasets", params={"name": "a"}, json={"samples": a.tolist()}).json()
    api.post("/v1/datasets", params={"name": "b"}, json={"samples": [[9.0]]})
    assert [d["id"] for d in api.get("/v1/datasets", params={"name": "a"}).json()["items"]] == [
        ds["id"]
    ]
    # A client can compute the canonical hash locally and ask before sending the data.
    page = api.get("/v1/datasets", params={"sha256": canonical_sha256(a)}).json()
    assert page["total"] == 1 and page["items"][0]["id"] == ds["id"]
    assert api.get("/v1/datasets", params={"sha256": "0" * 64}).json()["items"] == []
    problem(api.get("/v1/datasets", params={"sha256": "xyz"}), 422, "/problems/validation")


@hsettings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    a=hnp.arrays(
        np.float64,
        st.tuples(st.integers(1, 8), st.integers(1, 3)),
        elements=st.floats(
            allow_nan=False, allow_infinity=False, width=64, min_value=-MAX_ABS, max_value=MAX_ABS
        ),
    ),
    fmt=st.sampled_from(["npy", "arrow", "csv", "json"]),
)
def test_http_round_trip_of_random_arrays_in_every_format(
    api: TestClient, a: np.ndarray, fmt: str
) -> None:
    from service.ingest import canonical_sha256

    if fmt == "npy":
        r = api.post("/v1/datasets", content=npy(a), headers=NPY)
    elif fmt == "arrow":
        r = api.post("/v1/datasets", content=arrow(a), headers=ARROW)
    elif fmt == "csv":
        r = api.post("/v1/datasets", content=csv(a), headers=CSV)
    else:
        r = api.post("/v1/datasets", json={"samples": a.tolist()})
    assert r.status_code in (200, 201), r.text
    ds = r.json()
    assert ds["sha256"] == canonical_sha256(a) and (ds["n"], ds["d"]) == a.shape
    samples, _ = stored(api, ds["sha256"])
    np.testing.assert_array_equal(samples, a)
    assert api.get(f"/v1/datasets/{ds['id']}").json() == ds
