"""CSV uploads: a header row names the columns; an optional ``weight`` column; float64 values."""

from __future__ import annotations

import csv as pycsv
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from service.ingest.base import Limits, Parsed, check_shape, from_array, invalid

WEIGHT = "weight"


def _header(path: Path) -> list[str]:
    with open(path, encoding="utf-8-sig", newline="") as f:
        try:
            line = f.readline(1 << 20)
        except UnicodeDecodeError:
            raise invalid("the CSV is not UTF-8 text") from None
    if not line.strip():
        raise invalid("the CSV is empty: it needs a header row naming the columns")
    return next(pycsv.reader([line]))


def parse(path: Path, limits: Limits) -> Parsed:
    """Parse a CSV with a header row into float64 samples and optional weights."""
    names = [n.strip() for n in _header(path)]
    if any(not n for n in names):
        raise invalid("every CSV column needs a name in the header row")
    if len(names) != len(set(names)):
        raise invalid("CSV column names must be unique")
    dims = [n for n in names if n != WEIGHT]
    check_shape(1, len(dims), limits)
    try:
        table = pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(column_names=names, skip_rows=1),
            convert_options=pacsv.ConvertOptions(
                column_types={n: pa.float64() for n in names},
                null_values=[""],
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
    except (pa.ArrowException, OSError) as e:
        raise invalid(f"unreadable CSV: {e}") from None
    check_shape(table.num_rows, len(dims), limits)
    for n in names:
        nulls = table.column(n).null_count
        if nulls:
            raise invalid(f"CSV column {n!r} has {nulls} empty values")
    samples = np.empty((table.num_rows, len(dims)), dtype=np.float64)
    for j, n in enumerate(dims):
        samples[:, j] = table.column(n).to_numpy()
    weights = table.column(WEIGHT).to_numpy() if WEIGHT in names else None
    return from_array(samples, weights, limits)
