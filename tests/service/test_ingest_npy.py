"""The .npy reader: bounded header, no pickles, float dtypes only, exact data length."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from ingestfixtures import ingest_body, refusal

from service import ingest
from service.ingest.base import npy_header

LIMITS = ingest.Limits(max_n=10_000, max_d=64)
NPY = ingest.format_for("application/x-npy")


def run(
    tmp: Path, body: bytes, limits: ingest.Limits = LIMITS
) -> tuple[ingest.Ingested, np.ndarray]:
    return ingest_body(tmp, NPY, body, limits)


def npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=True)
    return buf.getvalue()


def raw_npy(header: str, data: bytes = b"", version: int = 1) -> bytes:
    h = header.encode("latin1")
    return b"\x93NUMPY" + bytes([version, 0]) + struct.pack("<H", len(h)) + h + data


def rejects(tmp: Path, body: bytes, status: int, *words: str) -> ingest.IngestError:
    return refusal(tmp, NPY, body, LIMITS, status, *words)


floats = st.sampled_from([np.float16, np.float32, np.float64, np.dtype(">f4"), np.dtype(">f8")])


FIXTURE_OK = [HealthCheck.function_scoped_fixture]


@settings(max_examples=40, deadline=None, suppress_health_check=FIXTURE_OK)
@given(
    a=floats.flatmap(
        lambda dt: hnp.arrays(
            dt,
            hnp.array_shapes(min_dims=1, max_dims=2, min_side=1, max_side=12),
            elements=st.floats(-1e4, 1e4, width=16 if np.dtype(dt).itemsize == 2 else 32),
        )
    )
)
def test_round_trip_of_random_float_arrays(tmp_path: Path, a: np.ndarray) -> None:
    ds, stored = run(tmp_path, npy_bytes(a))
    expected = a.reshape(a.shape[0], -1)
    assert stored.flags.c_contiguous and stored.ndim == 2
    assert stored.dtype == (np.float64 if a.dtype.itemsize == 8 else np.float32)
    assert stored.dtype.byteorder in ("<", "=")
    np.testing.assert_array_equal(stored, expected.astype(stored.dtype))
    assert (ds.n, ds.d, ds.dtype) == (expected.shape[0], expected.shape[1], stored.dtype.name)
    assert ds.sha256 == ingest.canonical_sha256(a)
    assert ds.weights is None


def test_canonical_upload_is_reused_without_a_copy(tmp_path: Path) -> None:
    a = np.arange(12, dtype=np.float32).reshape(4, 3)
    ds, stored = run(tmp_path, npy_bytes(a))
    assert ds.samples_file == tmp_path / "body.npy"
    assert not (tmp_path / "out.npy").exists() or (tmp_path / "out.npy").stat().st_size == 0
    np.testing.assert_array_equal(stored, a)


def test_one_dimensional_is_n_by_one_and_float16_becomes_float32(tmp_path: Path) -> None:
    ds, stored = run(tmp_path, npy_bytes(np.array([1.5, 2.5, -3.0], dtype=np.float16)))
    assert (ds.n, ds.d, ds.dtype) == (3, 1, "float32")
    assert stored.shape == (3, 1)


def test_hash_depends_on_dtype_and_shape_not_only_bytes(tmp_path: Path) -> None:
    a = np.arange(6, dtype=np.float64)
    assert ingest.canonical_sha256(a.reshape(2, 3)) != ingest.canonical_sha256(a.reshape(3, 2))
    assert ingest.canonical_sha256(a) != ingest.canonical_sha256(a.astype(np.float32))
    # Weights scaled by a constant are the same normalised weights: the same dataset.
    assert ingest.canonical_sha256(a, [1.0] * 6) == ingest.canonical_sha256(a, [3.0] * 6)
    assert ingest.canonical_sha256(a, [1.0] * 6) != ingest.canonical_sha256(a)


def test_object_dtype_is_refused_without_unpickling(tmp_path: Path) -> None:
    body = npy_bytes(np.array([{"a": 1}, None], dtype=object))
    rejects(tmp_path, body, 422, "object", "unpickl")


def test_pickle_payload_is_not_a_npy(tmp_path: Path) -> None:
    import pickle

    rejects(tmp_path, pickle.dumps(np.zeros(3)), 422, "magic")


def test_fortran_order_is_refused(tmp_path: Path) -> None:
    body = npy_bytes(np.asfortranarray(np.ones((3, 2))))
    rejects(tmp_path, body, 422, "fortran")


def test_truncated_and_padded_data_are_refused(tmp_path: Path) -> None:
    body = npy_bytes(np.ones((10, 4), dtype=np.float32))
    rejects(tmp_path, body[:-5], 422, "truncated", "160")
    rejects(tmp_path, body + b"\0" * 4, 422, "longer")


def test_huge_header_length_is_refused_before_reading(tmp_path: Path) -> None:
    body = b"\x93NUMPY\x02\x00" + struct.pack("<I", 0xFFFFFFF0) + b"{"
    rejects(tmp_path, body, 422, "header length", "limit")


def test_absurd_shape_is_refused(tmp_path: Path) -> None:
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (5, 1000000000000), }\n"
    rejects(tmp_path, raw_npy(header, b"\0" * 16), 413, "d=")
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000000000, 3), }\n"
    rejects(tmp_path, raw_npy(header, b"\0" * 16), 413, "n=")
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (-1, 3), }\n"
    rejects(tmp_path, raw_npy(header), 422, "shape")


@pytest.mark.parametrize(
    ("array", "words"),
    [
        (np.array([[1.0, np.nan]]), ("non-finite", "nan", "column 1")),
        (np.array([[1.0], [np.inf]], dtype=np.float32), ("non-finite", "inf", "row 1")),
        (np.arange(6).reshape(2, 3), ("int64", "float32")),
        (np.ones((2, 2), dtype=np.complex64), ("complex",)),
        (np.ones((2, 2, 2)), ("3-d",)),
        (np.ones((0, 3)), ("empty",)),
        (np.ones((3, 0)), ("empty",)),
        (np.zeros(2, dtype=[("x", "<f4"), ("y", "<f4")]), ("structured",)),
    ],
)
def test_bad_arrays_are_refused(tmp_path: Path, array: np.ndarray, words: tuple[str, ...]) -> None:
    rejects(tmp_path, npy_bytes(array), 422, *words)


def test_large_finite_values_that_overflow_a_sum_are_accepted(tmp_path: Path) -> None:
    a = np.full((4, 2), np.finfo(np.float32).max, dtype=np.float32)
    ds, stored = run(tmp_path, npy_bytes(a))
    np.testing.assert_array_equal(stored, a)


@pytest.mark.parametrize(
    "header",
    [
        "{'descr': '<f4', 'fortran_order': False}\n",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'x': 1}\n",
        "['descr']\n",
        "__import__('os').system('true')\n",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (2.5,), }\n",
        "{'descr': '<f4', 'fortran_order': 0, 'shape': (2,), }\n",
        "((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((",
    ],
)
def test_malformed_headers_are_refused(tmp_path: Path, header: str) -> None:
    rejects(tmp_path, raw_npy(header, b"\0" * 8), 422)


def test_limits_are_413(tmp_path: Path) -> None:
    small = ingest.Limits(max_n=5, max_d=3)
    for a in (np.ones((6, 2)), np.ones((2, 4))):
        with pytest.raises(ingest.IngestError) as e:
            run(tmp_path, npy_bytes(a), small)
        assert e.value.status == 413


def test_big_endian_header_is_rewritten_canonically(tmp_path: Path) -> None:
    a = np.arange(6, dtype=">f8").reshape(3, 2)
    ds, stored = run(tmp_path, npy_bytes(a))
    assert ds.samples_file == tmp_path / "out.npy"
    assert (tmp_path / "out.npy").read_bytes().startswith(npy_header(np.dtype("<f8"), 3, 2))
    np.testing.assert_array_equal(stored, a)


@pytest.mark.parametrize("chunk_bytes", [1, 24, 1000])
def test_small_row_chunks_give_the_same_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk_bytes: int
) -> None:
    monkeypatch.setattr("service.ingest.base.CHUNK_BYTES", chunk_bytes)
    a = np.random.default_rng(4).normal(size=(41, 3)).astype(">f8")
    ds, stored = run(tmp_path, npy_bytes(a))
    np.testing.assert_array_equal(stored, a)
    assert ds.sha256 == ingest.canonical_sha256(a)
    bad = a.copy()
    bad[40, 2] = np.inf
    with pytest.raises(ingest.IngestError, match="row 40, column 2"):
        run(tmp_path, npy_bytes(bad))


def test_a_header_numpy_would_refuse_is_rewritten(tmp_path: Path) -> None:
    # Within our (raised) header limit, but longer than numpy's loader reads by default: the
    # stored file gets a canonical header, so the workers can np.load it.
    a = np.arange(6, dtype=np.float32).reshape(3, 2)
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 2), }" + " " * 20_000 + "\n"
    h = header.encode("latin1")
    body = b"\x93NUMPY\x02\x00" + struct.pack("<I", len(h)) + h + a.tobytes()
    limits = ingest.Limits(max_n=100, max_d=10, max_npy_header_bytes=30_000)
    ds, stored = run(tmp_path, body, limits)
    assert ds.samples_file == tmp_path / "out.npy"  # rewritten with a header numpy reads
    np.testing.assert_array_equal(stored, a)
    assert ds.sha256 == ingest.canonical_sha256(a)
