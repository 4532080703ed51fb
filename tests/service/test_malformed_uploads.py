"""Every malformed upload is a 4xx problem document, never a 500 (issue 13)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from fastapi.testclient import TestClient

PROBLEM = "application/problem+json"
NPY = {"content-type": "application/x-npy"}


def npy_with_descr(descr: str) -> bytes:
    h = f"{{'descr': {descr!r}, 'fortran_order': False, 'shape': (2, 2), }}"
    h += " " * ((64 - (10 + len(h) + 1) % 64) % 64) + "\n"
    head = b"\x93NUMPY\x01\x00" + len(h).to_bytes(2, "little") + h.encode("latin1")
    return head + np.ones((2, 2), "<f4").tobytes()


def npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def refused(r, status: int = 422) -> str:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM)
    return r.json()["detail"]


@pytest.mark.parametrize("descr", ["<f4\n", "<f8\n", "f4 ", "<f4\x00", "<f4\n\n"])
def test_npy_dtype_with_trailing_junk_is_422(api: TestClient, descr: str) -> None:
    r = api.post("/v1/datasets", content=npy_with_descr(descr), headers=NPY)
    assert "not supported" in refused(r) or "unreadable" in refused(r)


def test_json_integer_of_4300_digits_is_422(api: TestClient) -> None:
    body = b'{"samples": [[' + b"1" * 4300 + b"]]}"
    r = api.post("/v1/datasets", content=body, headers={"content-type": "application/json"})
    refused(r)


@pytest.mark.parametrize("quoted", [False, True])
def test_csv_header_field_over_128_kib_is_4xx(api: TestClient, quoted: bool) -> None:
    name = b"a" * (129 * 1024)
    if quoted:
        name = b'"' + name + b'"'
    body = name + b",b\n1,2\n"
    r = api.post("/v1/datasets", content=body, headers={"content-type": "text/csv"})
    assert 400 <= r.status_code < 500 and r.headers["content-type"].startswith(PROBLEM)


def test_csv_data_field_over_128_kib_is_4xx(api: TestClient) -> None:
    body = b"a,b\n" + b"1" * (129 * 1024) + b",2\n"
    r = api.post("/v1/datasets", content=body, headers={"content-type": "text/csv"})
    assert 400 <= r.status_code < 500 and r.headers["content-type"].startswith(PROBLEM)


@pytest.mark.parametrize(
    ("content", "ctype"),
    [
        (b'{"samples": [[1e308], [-1e308]]}', "application/json"),
        (b"1e308,1\n-1e308,2\n", "text/csv"),
        (npy(np.array([[1e308, 0.0], [0.0, 1.0]])), "application/x-npy"),
        (npy(np.array([[1.0, 0.0], [0.0, -2e150]])), "application/x-npy"),
    ],
)
def test_values_whose_squared_distances_overflow_are_refused(
    api: TestClient, content: bytes, ctype: str
) -> None:
    detail = refused(api.post("/v1/datasets", content=content, headers={"content-type": ctype}))
    assert "1e150" in detail and "too large" in detail


def test_values_at_the_bound_are_accepted(api: TestClient) -> None:
    r = api.post("/v1/datasets", content=npy(np.array([[1e150], [-1e150]])), headers=NPY)
    assert r.status_code == 201, r.text
    r = api.post("/v1/datasets", json={"samples": [[1e150], [-1e150], [3.0]]})
    assert r.status_code == 201, r.text
