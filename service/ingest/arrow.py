"""Arrow IPC stream uploads: float columns are the dimensions, an optional ``weight`` column.

The stream is memory-mapped, read and validated in full (``Table.validate(full=True)``) before
any value is used; columns must be floating point without nulls.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from service.ingest.base import Limits, Parsed, check_shape, from_array, invalid

WEIGHT = "weight"


def _column(table: pa.Table, name: str, i: int) -> np.ndarray:
    col = table.column(i)
    if col.null_count:
        raise invalid(f"column {name!r} has {col.null_count} null values")
    return col.to_numpy()


def parse(path: Path, limits: Limits) -> Parsed:
    """Read an Arrow IPC stream into an (n, d) array of the widest float column type."""
    try:
        with pa.memory_map(str(path), "r") as source:
            reader = pa.ipc.open_stream(source)
            schema = reader.schema
            names = schema.names
            if len(names) != len(set(names)):
                raise invalid("Arrow column names must be unique")
            dims = [f for f in schema if f.name != WEIGHT]
            check_shape(1, len(dims), limits)
            for f in dims:
                if not pa.types.is_floating(f.type):
                    raise invalid(
                        f"Arrow column {f.name!r} has type {f.type}: "
                        "sample columns must be float16, float32 or float64"
                    )
            table = reader.read_all()
            table.validate(full=True)
            check_shape(table.num_rows, len(dims), limits)
            wi = names.index(WEIGHT) if WEIGHT in names else None
            weights = None
            if wi is not None:
                wtype = schema.field(wi).type
                if not (pa.types.is_floating(wtype) or pa.types.is_integer(wtype)):
                    raise invalid(f"the {WEIGHT!r} column has type {wtype}: it must be numeric")
                weights = _column(table, WEIGHT, wi).astype(np.float64)
            dtype = np.result_type(*[f.type.to_pandas_dtype() for f in dims])
            if dtype == np.float16:
                dtype = np.dtype(np.float32)
            samples = np.empty((table.num_rows, len(dims)), dtype=dtype)
            j = 0
            for i, name in enumerate(names):
                if i == wi:
                    continue
                samples[:, j] = _column(table, name, i)
                j += 1
            del table
    except (pa.ArrowException, OSError) as e:
        raise invalid(f"not a valid Arrow IPC stream: {e}") from None
    return from_array(samples, weights, limits)
