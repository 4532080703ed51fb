"""The Arrow IPC stream reader: numeric columns picked by name, ?weights=, full validation."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from ingestfixtures import ingest_body, refusal

from service import ingest

LIMITS = ingest.Limits(max_n=10_000, max_d=64)
ARROW = ingest.format_for("application/vnd.apache.arrow.stream")


def stream(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    with pa.ipc.new_stream(buf, table.schema) as w:
        w.write_table(table)
    return buf.getvalue()


def table_of(a: np.ndarray, weights: np.ndarray | None = None) -> pa.Table:
    cols = {f"x{j}": a[:, j] for j in range(a.shape[1])}
    if weights is not None:
        cols["weight"] = weights
    return pa.table(cols)


def run(tmp: Path, body: bytes, **options: str) -> tuple[ingest.Ingested, np.ndarray]:
    return ingest_body(tmp, ARROW, body, LIMITS, **options)


def rejects(tmp: Path, body: bytes, *words: str, **options: str) -> None:
    refusal(tmp, ARROW, body, LIMITS, 422, *words, **options)


FIXTURE_OK = [HealthCheck.function_scoped_fixture]


@settings(max_examples=30, deadline=None, suppress_health_check=FIXTURE_OK)
@given(
    a=st.sampled_from([np.float32, np.float64]).flatmap(
        lambda dt: hnp.arrays(
            dt,
            st.tuples(st.integers(1, 15), st.integers(1, 5)),
            elements=st.floats(-1e6, 1e6, width=32),
        )
    ),
    weighted=st.booleans(),
)
def test_round_trip_and_same_hash_as_npy(tmp_path: Path, a: np.ndarray, weighted: bool) -> None:
    w = np.arange(1, a.shape[0] + 1, dtype=np.float64) if weighted else None
    ds, stored = run(
        tmp_path, stream(table_of(a, w)), **({"weights": "weight"} if weighted else {})
    )
    np.testing.assert_array_equal(stored, a)
    assert stored.dtype == a.dtype and stored.flags.c_contiguous
    assert ds.sha256 == ingest.canonical_sha256(a, w)
    if weighted:
        np.testing.assert_allclose(ds.weights, w / w.sum())
        assert ds.weights.sum() == pytest.approx(1.0)
    else:
        assert ds.weights is None


def test_float16_columns_become_float32_and_mixed_widths_float64(tmp_path: Path) -> None:
    t = pa.table({"a": np.array([1, 2], dtype=np.float16), "b": np.array([3, 4], np.float16)})
    ds, stored = run(tmp_path, stream(t))
    assert ds.dtype == "float32" and stored.tolist() == [[1, 3], [2, 4]]
    t = pa.table({"a": np.array([1, 2], dtype=np.float32), "b": np.array([3, 4], np.float64)})
    ds, _ = run(tmp_path, stream(t))
    assert ds.dtype == "float64"


def test_integer_columns_are_float64_and_exact_only(tmp_path: Path) -> None:
    ds, stored = run(tmp_path, stream(pa.table({"a": [1.0, 2.0], "b": [1, 2]})))
    assert ds.dtype == "float64" and stored.tolist() == [[1.0, 1.0], [2.0, 2.0]]
    big = pa.table({"a": [1.0, 2.0], "b": [1, 2**53 + 1]})
    rejects(tmp_path, stream(big), "'b'", "row 1", "2**53")


@pytest.mark.parametrize(
    ("column", "words"),
    [
        (pa.array(["x", "y"]), ("'b'", "string", "?exclude=b")),
        (pa.array([True, False]), ("'b'", "boolean", "?exclude=b")),
    ],
)
def test_non_numeric_columns_name_the_fix(tmp_path: Path, column: pa.Array, words) -> None:
    t = pa.table({"a": [1.0, 2.0], "b": column})
    rejects(tmp_path, stream(t), *words)
    ds, _ = run(tmp_path, stream(t), exclude="b")
    assert ds.columns == ["a"]


def test_field_names_are_the_columns_and_a_weight_column_is_a_feature(tmp_path: Path) -> None:
    t = pa.table({"u": [1.0, 2.0], "weight": [70.0, 80.0], "v": [3.0, 4.0]})
    ds, _ = run(tmp_path, stream(t))
    assert (ds.d, ds.columns, ds.weights) == (3, ["u", "weight", "v"], None)
    ds, stored = run(tmp_path, stream(t), weights="weight", columns="v,u")
    assert ds.columns == ["v", "u"] and stored.tolist() == [[3.0, 1.0], [4.0, 2.0]]


def test_nulls_are_refused(tmp_path: Path) -> None:
    rejects(tmp_path, stream(pa.table({"a": pa.array([1.0, None])})), "'a'", "null", "row 1")


def test_nan_is_refused(tmp_path: Path) -> None:
    rejects(tmp_path, stream(pa.table({"a": [1.0, float("nan")]})), "non-finite")


@pytest.mark.parametrize(
    ("weights", "words"),
    [
        (pa.array(["a", "b"]), ("'weight'", "?weights", "numbers")),
        (pa.array([1.0, -1.0]), ("negative",)),
        (pa.array([0.0, 0.0]), ("positive",)),
        (pa.array([1.0, None]), ("null",)),
        (pa.array([1.0, float("inf")]), ("finite",)),
    ],
)
def test_bad_weight_columns_are_refused(tmp_path: Path, weights: pa.Array, words) -> None:
    t = pa.table({"a": [1.0, 2.0], "weight": weights})
    rejects(tmp_path, stream(t), *words, weights="weight")


def test_integer_weights_are_accepted(tmp_path: Path) -> None:
    ds, _ = run(tmp_path, stream(pa.table({"a": [1.0, 2.0], "weight": [1, 3]})), weights="weight")
    assert ds.weights.tolist() == [0.25, 0.75]


def test_only_a_weight_column_is_empty(tmp_path: Path) -> None:
    rejects(tmp_path, stream(pa.table({"weight": [1.0]})), "no feature column", weights="weight")


def test_garbage_and_truncated_streams_are_refused(tmp_path: Path) -> None:
    body = stream(pa.table({"a": np.arange(100, dtype=np.float64)}))
    rejects(tmp_path, body[: len(body) // 2], "arrow")
    rejects(tmp_path, b"not arrow at all", "arrow")


def test_invalid_utf8_fails_full_validation(tmp_path: Path) -> None:
    # A string column holding invalid UTF-8: only full validation sees it.
    offsets = pa.py_buffer(np.array([0, 2, 4], np.int32).tobytes())
    bad = pa.Array.from_buffers(pa.string(), 2, [None, offsets, pa.py_buffer(b"\xff\xfeab")])
    t = pa.Table.from_arrays([pa.array([1.0, 2.0]), bad], names=["a", "weight"])
    with pytest.raises(pa.ArrowInvalid):
        t.validate(full=True)
    rejects(tmp_path, stream(t), "utf", exclude="weight")  # validated even if not picked


@pytest.mark.parametrize("chunk_bytes", [8, 100, 1 << 20])
def test_multi_batch_streams_in_small_row_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk_bytes: int
) -> None:
    monkeypatch.setattr("service.ingest.base.CHUNK_BYTES", chunk_bytes)
    a = np.random.default_rng(3).normal(size=(37, 3)).astype(np.float32)
    t = table_of(a, np.ones(37))
    buf = io.BytesIO()
    with pa.ipc.new_stream(buf, t.schema) as w:
        w.write_table(t, max_chunksize=5)
    ds, stored = run(tmp_path, buf.getvalue(), weights="weight")
    np.testing.assert_array_equal(stored, a)
    assert ds.sha256 == ingest.canonical_sha256(a, np.ones(37))


def test_a_stream_without_rows_is_empty(tmp_path: Path) -> None:
    schema = pa.schema([("a", pa.float64())])
    buf = io.BytesIO()
    with pa.ipc.new_stream(buf, schema):
        pass
    rejects(tmp_path, buf.getvalue(), "empty", "n=0")
