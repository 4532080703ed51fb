"""The Parquet reader: numeric columns by name, nulls refused with column and row, batches."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from ingestfixtures import ingest_body, refusal

from service import ingest

LIMITS = ingest.Limits(max_n=10_000, max_d=64)
PARQUET = ingest.format_for("application/vnd.apache.parquet")


def parquet(table: pa.Table, **kw: object) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, **kw)
    return buf.getvalue()


def run(tmp: Path, body: bytes, **options: str) -> tuple[ingest.Ingested, np.ndarray]:
    return ingest_body(tmp, PARQUET, body, LIMITS, **options)


def rejects(tmp: Path, body: bytes, *words: str, status: int = 422, **options: str) -> None:
    refusal(tmp, PARQUET, body, LIMITS, status, *words, **options)


def test_round_trip_names_and_the_same_hash_as_the_array(tmp_path: Path) -> None:
    a = np.random.default_rng(0).normal(size=(100, 3))
    t = pa.table({"u": a[:, 0], "v": a[:, 1], "w": a[:, 2]})
    ds, stored = run(tmp_path, parquet(t))
    np.testing.assert_array_equal(stored, a)
    assert ds.columns == ["u", "v", "w"] and ds.dtype == "float64"
    assert ds.sha256 == ingest.canonical_sha256(a, columns=["u", "v", "w"])


def test_float32_stays_float32_and_integers_become_float64(tmp_path: Path) -> None:
    t = pa.table({"a": np.array([1.5, 2.5], dtype=np.float32)})
    assert run(tmp_path, parquet(t))[0].dtype == "float32"
    t = pa.table({"a": np.array([1.5, 2.5], dtype=np.float32), "n": pa.array([1, 2], pa.int32())})
    ds, stored = run(tmp_path, parquet(t))
    assert ds.dtype == "float64" and stored.tolist() == [[1.5, 1.0], [2.5, 2.0]]


def test_columns_exclude_and_weights_pick_by_name(tmp_path: Path) -> None:
    t = pa.table({"id": [10, 11], "x": [1.0, 2.0], "y": [3.0, 4.0], "w": [1.0, 3.0]})
    ds, stored = run(tmp_path, parquet(t), columns="y,x", weights="w")
    assert ds.columns == ["y", "x"] and stored.tolist() == [[3.0, 1.0], [4.0, 2.0]]
    assert ds.weights.tolist() == [0.25, 0.75]
    ds, _ = run(tmp_path, parquet(t), exclude="id")
    assert ds.columns == ["x", "y", "w"] and ds.weights is None


@pytest.mark.parametrize("row_group_size", [3, 1000])
def test_a_null_is_refused_naming_column_and_row(tmp_path: Path, row_group_size: int) -> None:
    t = pa.table({"a": [1.0, 2.0, 3.0, 4.0, 5.0], "b": pa.array([1.0, 2.0, 3.0, None, 5.0])})
    rejects(tmp_path, parquet(t, row_group_size=row_group_size), "'b'", "null", "row 3")


def test_a_null_weight_is_refused(tmp_path: Path) -> None:
    t = pa.table({"a": [1.0, 2.0], "w": pa.array([1.0, None])})
    rejects(tmp_path, parquet(t), "'w'", "null", weights="w")


@pytest.mark.parametrize(
    ("column", "words"),
    [
        (pa.array(["p", "q"]), ("'label'", "string", "?exclude=label")),
        (pa.array([True, False]), ("'label'", "boolean", "?exclude=label")),
        (pa.array([1, 2**60]), ("'label'", "2**53", "row 1")),
    ],
)
def test_non_numeric_or_inexact_columns_are_refused(
    tmp_path: Path, column: pa.Array, words: tuple[str, ...]
) -> None:
    rejects(tmp_path, parquet(pa.table({"a": [1.0, 2.0], "label": column})), *words)


def test_garbage_truncated_and_csv_options_are_refused(tmp_path: Path) -> None:
    body = parquet(pa.table({"a": np.arange(100, dtype=np.float64)}))
    rejects(tmp_path, body[: len(body) // 2], "parquet")
    rejects(tmp_path, b"PAR1 not really", "parquet")
    rejects(tmp_path, body, "?header", "csv", header="false")
    rejects(tmp_path, body, "?delimiter", "csv", delimiter=";")


def test_limits_are_checked_from_the_metadata(tmp_path: Path) -> None:
    small = ingest.Limits(max_n=10, max_d=2)
    body = parquet(pa.table({"a": np.arange(11, dtype=np.float64)}))
    refusal(tmp_path, PARQUET, body, small, 413, "n=11")
    wide = parquet(pa.table({k: [1.0] for k in "abc"}))
    refusal(tmp_path, PARQUET, wide, small, 413, "d=3")
    assert ingest_body(tmp_path, PARQUET, wide, small, columns="a,c")[0].d == 2


def test_many_row_groups_in_small_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("service.ingest.base.CHUNK_BYTES", 40)
    a = np.random.default_rng(3).normal(size=(37, 3)).astype(np.float32)
    t = pa.table({f"x{j}": a[:, j] for j in range(3)})
    ds, stored = run(tmp_path, parquet(t, row_group_size=5))
    np.testing.assert_array_equal(stored, a)
    assert ds.sha256 == ingest.canonical_sha256(a)  # x0.. names: the hash of the bare array


def test_an_empty_table_is_empty(tmp_path: Path) -> None:
    rejects(tmp_path, parquet(pa.table({"a": pa.array([], pa.float64())})), "empty")
