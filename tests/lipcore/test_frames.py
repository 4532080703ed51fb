"""Data frames as inputs: pandas, polars and pyarrow tables give the numbers of their arrays."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pytest

from lipcore import exact_w1
from lipcore.validation import as_samples, validate_inputs

X = np.random.default_rng(0).normal(size=(12, 3))
Y = np.random.default_rng(1).normal(size=(9, 3)) + 0.5
NAMES = ["a", "b", "c"]


def frames(a: np.ndarray, names: list[str] = NAMES) -> dict[str, object]:
    data = {n: a[:, j] for j, n in enumerate(names)}
    return {"pandas": pd.DataFrame(data), "polars": pl.DataFrame(data), "pyarrow": pa.table(data)}


@pytest.mark.parametrize("kind", ["pandas", "polars", "pyarrow"])
def test_a_frame_reads_as_its_array(kind: str) -> None:
    got = as_samples(frames(X)[kind], "x")
    np.testing.assert_array_equal(got, X)
    assert got.dtype == np.float64 and got.shape == (12, 3)
    assert exact_w1(frames(X)[kind], frames(Y)[kind]) == pytest.approx(exact_w1(X, Y))


def test_integer_and_float32_columns() -> None:
    df = pd.DataFrame({"i": np.arange(3), "f": np.ones(3, np.float32)})
    assert as_samples(df, "x").tolist() == [[0.0, 1.0], [1.0, 1.0], [2.0, 1.0]]
    assert as_samples(pl.DataFrame({"f": np.ones(3, np.float32)}), "x").dtype == np.float32


@pytest.mark.parametrize("kind", ["pandas", "polars", "pyarrow"])
def test_a_text_column_is_named(kind: str) -> None:
    data = {"a": [1.0, 2.0], "label": ["p", "q"]}
    frame = {"pandas": pd.DataFrame, "polars": pl.DataFrame, "pyarrow": pa.table}[kind](data)
    with pytest.raises(ValueError, match="'label' is not numeric"):
        as_samples(frame, "x")


@pytest.mark.parametrize("kind", ["pandas", "polars", "pyarrow"])
def test_a_missing_value_is_named(kind: str) -> None:
    data = {"a": [1.0, 2.0], "b": [1.0, None]}
    frame = {"pandas": pd.DataFrame, "polars": pl.DataFrame, "pyarrow": pa.table}[kind](data)
    with pytest.raises(ValueError, match="'b' has 1 missing"):
        as_samples(frame, "x")


def test_two_frames_must_have_the_same_columns_in_order() -> None:
    with pytest.raises(ValueError, match="different columns"):
        validate_inputs(frames(X)["pandas"], frames(Y, ["a", "c", "b"])["polars"], None, None)
    xs, ys, _, _ = validate_inputs(frames(X)["pandas"], Y, None, None)  # a frame and an array
    np.testing.assert_array_equal(xs, X)


def test_weights_may_be_series() -> None:
    w = pd.Series(np.full(12, 1 / 12))
    _, _, a, _ = validate_inputs(X, Y, w, pl.Series(np.full(9, 1 / 9)))
    np.testing.assert_allclose(a, np.full(12, 1 / 12))


def test_lipcore_imports_neither_pandas_nor_polars() -> None:
    code = "import sys, lipcore; print('pandas' in sys.modules, 'polars' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
