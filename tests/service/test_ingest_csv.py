"""The CSV reader: a header row, float64 values, an optional weight column."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ingestfixtures import ingest_body, refusal

from service import ingest

LIMITS = ingest.Limits(max_n=1000, max_d=8)
CSV = ingest.format_for("text/csv; charset=utf-8")


def run(tmp: Path, text: str | bytes, limits: ingest.Limits = LIMITS):
    return ingest_body(tmp, CSV, text, limits)


def rejects(tmp: Path, text: str | bytes, *words: str, status: int = 422) -> None:
    refusal(tmp, CSV, text, LIMITS, status, *words)


def test_round_trip_with_weights_in_any_column(tmp_path: Path) -> None:
    ds, stored = run(tmp_path, "x,weight,y\n1,1,2\n3.5,3,-4e-3\n")
    assert stored.dtype == np.float64
    assert stored.tolist() == [[1.0, 2.0], [3.5, -0.004]]
    assert ds.weights.tolist() == [0.25, 0.75]
    same = np.array([[1.0, 2.0], [3.5, -0.004]])
    assert ds.sha256 == ingest.canonical_sha256(same, [1, 3])


def test_float_text_round_trips_exactly(tmp_path: Path) -> None:
    a = np.random.default_rng(0).normal(size=(50, 3))
    text = "a,b,c\n" + "\n".join(",".join(repr(float(v)) for v in row) for row in a) + "\n"
    ds, stored = run(tmp_path, text)
    np.testing.assert_array_equal(stored, a)
    assert ds.sha256 == ingest.canonical_sha256(a)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", ("empty",)),
        ("x,y\n", ("empty",)),
        ("x,y\n1,2\n3\n", ("csv",)),
        ("x,y\n1,abc\n", ("csv",)),
        ("x,y\n1,\n", ("empty values",)),
        ("x,y\n1,nan\n", ("non-finite",)),
        ("x,y\n1,inf\n", ("non-finite",)),
        ("x,x\n1,2\n", ("unique",)),
        ("x,\n1,2\n", ("name",)),
        ("x,weight\n1,-1\n2,3\n", ("negative",)),
        ("x,weight\n1,0\n2,0\n", ("positive",)),
        ("weight\n1\n", ("empty",)),
        (b"x,y\n\xff\xfe,1\n", ("csv",)),
        (b"\xff\xfe\n1\n", ("utf-8",)),
    ],
)
def test_bad_csv_is_refused(tmp_path: Path, text: str | bytes, words: tuple[str, ...]) -> None:
    rejects(tmp_path, text, *words)


def test_limits_are_413(tmp_path: Path) -> None:
    rejects(tmp_path, "a,b,c,d,e,f,g,h,i\n" + ",".join("1" * 9) + "\n", "d=9", status=413)
    rejects(tmp_path, "a\n" + "1\n" * 1001, "n=1001", status=413)


def test_a_byte_order_mark_is_not_part_of_the_first_name(tmp_path: Path) -> None:
    ds, stored = run(tmp_path, "\ufeffweight,x\n1,5\n3,6\n")
    assert stored.tolist() == [[5.0], [6.0]] and ds.weights.tolist() == [0.25, 0.75]
