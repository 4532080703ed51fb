"""Validation of the user's sample sets and weights: a clear ValueError, never a wrong number.

Samples may be numpy arrays (or anything ``np.asarray`` reads), torch tensors, or data frames:
pandas and polars DataFrames and pyarrow Tables, recognised by their type's module (none of
those libraries is imported here, nor needed unless the object is one of theirs). A frame's
columns must all be numeric; two frames must have the same columns in the same order.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

# Sums of weights may be off 1 by this much (float32 weights written by a user): beyond, an error.
WEIGHT_SUM_TOL = 1e-6
_CHUNK = 1 << 20  # elements checked at a time for finiteness (bounded temporary memory)


def _library(x: object) -> str:
    """The top-level package of ``x``'s type: 'pandas', 'polars', 'pyarrow', 'numpy', ..."""
    return type(x).__module__.split(".", 1)[0]


def is_frame(x: object) -> bool:
    """Whether ``x`` is a pandas or polars DataFrame or a pyarrow Table (by duck type)."""
    lib = _library(x)
    if lib in ("pandas", "polars"):
        return type(x).__name__ == "DataFrame"
    return lib == "pyarrow" and type(x).__name__ == "Table"


def column_names(x: object) -> list[str] | None:
    """The column names of a frame (:func:`is_frame`), else None."""
    if not is_frame(x):
        return None
    f: Any = x
    names = f.column_names if _library(x) == "pyarrow" else f.columns
    return [str(c) for c in names]


def _frame_to_numpy(x: object, name: str) -> np.ndarray:
    """A frame's columns as an (n, d) array; a non-numeric or null-holding column is named."""
    f: Any = x
    names = column_names(x) or []
    if _library(x) == "pyarrow":
        cols = [f.column(i) for i in range(f.num_columns)]
    else:
        cols = [f[c] for c in f.columns]
    parts: list[np.ndarray] = []
    for label, col in zip(names, cols, strict=True):
        lib = _library(x)
        if lib == "pyarrow":
            nulls = col.null_count
        elif lib == "polars":
            nulls = col.null_count()
        else:  # pandas: NaN, None and NA alike
            nulls = int(col.isna().sum())
        if nulls:
            raise ValueError(f"{name}: column {label!r} has {nulls} missing values")
        values = np.asarray(col.to_numpy())
        if values.dtype == object or not (
            np.issubdtype(values.dtype, np.floating) or np.issubdtype(values.dtype, np.integer)
        ):
            raise ValueError(
                f"{name}: column {label!r} is not numeric (dtype {values.dtype}): drop it first"
            )
        parts.append(values)
    if not parts:
        raise ValueError(f"{name}: the frame has no columns")
    dtype = np.result_type(*parts)
    out = np.empty((len(parts[0]), len(parts)), dtype=dtype)
    for j, values in enumerate(parts):
        out[:, j] = values
    return out


def _to_numpy(x: object, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    elif is_frame(x):
        return _frame_to_numpy(x, name)
    try:
        arr = np.asarray(x)
    except Exception as exc:  # noqa: BLE001 - ragged lists and the like
        raise ValueError(f"{name}: cannot be read as a numeric array ({exc})") from None
    if arr.dtype == object or not (
        np.issubdtype(arr.dtype, np.floating)
        or np.issubdtype(arr.dtype, np.integer)
        or arr.dtype == np.bool_
    ):
        raise ValueError(f"{name}: expected a real numeric array, got dtype {arr.dtype}")
    return arr


def _all_finite(arr: np.ndarray) -> bool:
    flat = arr.reshape(-1)
    return all(np.isfinite(flat[i : i + _CHUNK]).all() for i in range(0, flat.size, _CHUNK))


def as_samples(x: object, name: str) -> np.ndarray:
    """Returns x as a 2-D float32 or float64 numpy array (n, d), n >= 1, d >= 1, all finite.

    A 1-D array is read as n samples of dimension 1. float32 and float64 are kept as they are
    (no copy of a large array); other real types are converted to float64.
    """
    arr = _to_numpy(x, name)
    if arr.ndim == 1:
        arr = arr.reshape(-1, 1)
    if arr.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array (n, d), got {arr.ndim} dimensions")
    n, d = arr.shape
    if n == 0:
        raise ValueError(f"{name}: empty sample set (n = 0)")
    if d == 0:
        raise ValueError(f"{name}: samples have dimension d = 0")
    if arr.dtype not in (np.float32, np.float64):
        arr = arr.astype(np.float64)
    if not _all_finite(arr):
        raise ValueError(f"{name}: contains NaN or infinite values")
    return arr


def normalised_weights(w: object, n: int) -> NDArray[np.float64]:
    """Weights of n samples as float64 summing to 1: uniform for None, else w / sum(w).

    The one normalisation of weights. It does not validate (``as_weights`` does, then calls it):
    use it on weights already checked, such as those of a stored dataset.
    """
    if w is None:
        return np.full(n, 1.0 / n)
    arr = np.asarray(w, dtype=np.float64).reshape(-1)
    if arr.shape[0] != n:
        raise ValueError(f"weights: {arr.shape[0]} weights for {n} samples")
    out: NDArray[np.float64] = arr / arr.sum()
    return out


def as_weights(w: object, n: int, name: str) -> np.ndarray:
    """Returns float64 weights of length n, >= 0, renormalised to sum exactly to 1.

    None means uniform. A sum off 1 by more than WEIGHT_SUM_TOL is an error, not silently fixed:
    it usually means the weights belong to other samples or were not normalised at all.
    """
    if w is None:
        return normalised_weights(None, n)
    arr = _to_numpy(w, name)
    if arr.ndim == 2 and 1 in arr.shape:
        arr = arr.reshape(-1)
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array of weights, got shape {arr.shape}")
    if arr.shape[0] != n:
        raise ValueError(f"{name}: has {arr.shape[0]} weights for {n} samples")
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name}: contains NaN or infinite weights")
    if (arr < 0).any():
        raise ValueError(f"{name}: contains negative weights")
    total = float(arr.sum())
    if abs(total - 1.0) > WEIGHT_SUM_TOL:
        raise ValueError(f"{name}: weights must sum to 1, they sum to {total!r}")
    return normalised_weights(arr, n)


def check_columns(x: object, y: object) -> None:
    """Two frames must name the same columns in the same order (else the features would be
    compared crosswise); arrays, or a frame with an array, are not checked."""
    cx, cy = column_names(x), column_names(y)
    if cx is not None and cy is not None and cx != cy:
        raise ValueError(f"x and y: different columns, x has {cx} and y has {cy}")


def check_pair(x: np.ndarray, y: np.ndarray) -> None:
    if x.shape[1] != y.shape[1]:
        raise ValueError(
            f"x and y: mismatched dimensions, x has d = {x.shape[1]} and y has d = {y.shape[1]}"
        )


def validate_inputs(
    x: object, y: object, a: object, b: object
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    check_columns(x, y)
    xs = as_samples(x, "x")
    ys = as_samples(y, "y")
    check_pair(xs, ys)
    return xs, ys, as_weights(a, xs.shape[0], "a"), as_weights(b, ys.shape[0], "b")
