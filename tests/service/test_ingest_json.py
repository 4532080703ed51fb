"""The JSON reader: {"samples": [[...]], "weights": [...]}, float64, finite numbers only."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from ingestfixtures import ingest_body, refusal

from service import ingest
from service.ingest.base import MAX_ABS

LIMITS = ingest.Limits(max_n=1000, max_d=8)
JSON = ingest.format_for("application/json")


def run(tmp: Path, body: str | bytes, limits: ingest.Limits = LIMITS):
    return ingest_body(tmp, JSON, body, limits)


def rejects(tmp: Path, body: str | bytes, *words: str, status: int = 422) -> None:
    refusal(tmp, JSON, body, LIMITS, status, *words)


FIXTURE_OK = [HealthCheck.function_scoped_fixture]


@settings(max_examples=40, deadline=None, suppress_health_check=FIXTURE_OK)
@given(
    a=hnp.arrays(
        np.float64,
        st.tuples(st.integers(1, 12), st.integers(1, 4)),
        elements=st.floats(
            allow_nan=False, allow_infinity=False, min_value=-MAX_ABS, max_value=MAX_ABS
        ),
    ),
    weighted=st.booleans(),
)
def test_round_trip_of_random_float_arrays(tmp_path: Path, a: np.ndarray, weighted: bool) -> None:
    doc = {"samples": a.tolist()}
    w = np.linspace(1, 2, a.shape[0])
    if weighted:
        doc["weights"] = w.tolist()
    ds, stored = run(tmp_path, json.dumps(doc))
    np.testing.assert_array_equal(stored, a)
    assert ds.dtype == "float64"
    assert ds.sha256 == ingest.canonical_sha256(a, w if weighted else None)


def test_flat_samples_are_n_by_one_and_integers_are_floats(tmp_path: Path) -> None:
    ds, stored = run(tmp_path, '{"samples": [1, 2, 3], "weights": null}')
    assert (ds.n, ds.d) == (3, 1) and stored.dtype == np.float64 and ds.weights is None


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ("{", ("malformed",)),
        ("[1, 2]", ("object",)),
        ('{"weights": [1]}', ("samples",)),
        ('{"samples": [[1, 2]], "extra": 1}', ("extra",)),
        ('{"samples": "abc"}', ("array",)),
        ('{"samples": [[1, 2], [3]]}', ("row 1", "same columns")),
        ('{"samples": [[1, "2"]]}', ("row 0", "column 1", '"2"', "unquoted")),
        ('{"samples": [[1, "a"]]}', ("row 0", "column 1", '"a"', "not a number")),
        ('{"samples": [[1, null]]}', ("null", "missing")),
        ('{"samples": [[1, 2], [true, false]]}', ("row 1", "column 0", "boolean")),
        ('{"samples": [[1]], "weights": [true]}', ("weight 0", "boolean")),
        ('{"samples": [[1]], "weights": ["1"]}', ("weight 0", "unquoted")),
        ('{"samples": [[1, ' + "9" * 5000 + "]]}", ("5000 digits", "float64 range")),
        ('{"samples": [[1, ' + "9" * 400 + "]]}", ("400 digits", "float64 range")),
        ('{"samples": [[1, 2]], "columns": ["a"]}', ("1 names", "2 values")),
        ('{"samples": [[1, 2]], "columns": ["a", "a"]}', ("'a'", "unique")),
        ('{"samples": [[1, 2]], "columns": ["a", 2]}', ("names",)),
        ('{"samples": [[1, NaN]]}', ("nan",)),
        ('{"samples": [[1, Infinity]]}', ("infinity",)),
        ('{"samples": [[1, 1e400]]}', ("non-finite",)),
        ('{"samples": []}', ("empty",)),
        ('{"samples": [[]]}', ("empty",)),
        ('{"samples": [[[1]]]}', ("not a number",)),
        ('{"samples": [[1], [2]], "weights": [1]}', ("2 samples",)),
        ('{"samples": [[1], [2]], "weights": [1, -2]}', ("negative",)),
        ('{"samples": [[1], [2]], "weights": [0, 0]}', ("positive",)),
        ('{"samples": [[1], [2]], "weights": [[1], [2]]}', ("flat",)),
        (b'{"samples": [[1]], "x": "\xff"}', ("utf-8",)),
        ("[" * 100_000, ("object",)),
        ("{" * 100_000, ("malformed",)),
    ],
)
def test_bad_json_is_refused(tmp_path: Path, body: str, words: tuple[str, ...]) -> None:
    rejects(tmp_path, body, *words)


def test_huge_finite_weights_do_not_overflow(tmp_path: Path) -> None:
    ds, _ = run(tmp_path, '{"samples": [[1], [2]], "weights": [1e308, 1.5e308]}')
    np.testing.assert_allclose(ds.weights, [0.4, 0.6])


def test_limits_are_413(tmp_path: Path) -> None:
    rejects(tmp_path, json.dumps({"samples": [[0] * 9]}), "d=9", status=413)
    rejects(tmp_path, json.dumps({"samples": [[0]] * 1001}), "n=1001", status=413)


def test_columns_member_names_the_columns_and_options_pick_them(tmp_path: Path) -> None:
    doc = {"samples": [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], "columns": ["a", "w", "b"]}
    ds, stored = run(tmp_path, json.dumps(doc))
    assert ds.columns == ["a", "w", "b"] and ds.weights is None
    ds, stored = ingest_body(tmp_path, JSON, json.dumps(doc), LIMITS, weights="w", exclude="b")
    assert ds.columns == ["a"] and stored.tolist() == [[1.0], [4.0]]
    np.testing.assert_allclose(ds.weights, [2 / 7, 5 / 7])
    assert ds.sha256 == ingest.canonical_sha256(stored, [2, 5], ["a"])


def test_weights_twice_are_refused(tmp_path: Path) -> None:
    doc = {"samples": [[1.0, 2.0]], "weights": [1.0]}
    refusal(tmp_path, JSON, json.dumps(doc), LIMITS, 422, "twice", weights="x1")


def test_integers_within_range_are_floats(tmp_path: Path) -> None:
    ds, stored = run(tmp_path, '{"samples": [[1, 123456789012345678901234567890]]}')
    assert stored.tolist() == [[1.0, 1.2345678901234568e29]]


def test_a_large_document_costs_about_its_own_size(tmp_path: Path) -> None:
    """Streamed into a float64 buffer: the peak is under the body's size (json.load's lists
    took about 6x the body, and the whole request path 25x)."""
    import tracemalloc

    a = np.random.default_rng(0).normal(size=(200_000, 3)).round(6)
    body = json.dumps({"samples": a.tolist()}).encode()
    path = tmp_path / "big.json"
    path.write_bytes(body)
    tracemalloc.start()
    try:
        parsed = JSON.parse(path, LIMITS_BIG, ingest.Options())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (parsed.n, parsed.d) == (200_000, 3)
    assert peak < len(body), (peak, len(body))


LIMITS_BIG = ingest.Limits(max_n=1_000_000, max_d=8)
