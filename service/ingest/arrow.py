"""Arrow IPC stream uploads: float columns are the dimensions, an optional ``weight`` column.

The stream is memory-mapped, read and validated in full (``Table.validate(full=True)``) before
any value is used; columns must be floating point without nulls.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa

from service.ingest.base import Limits, Parsed, check_shape, invalid

WEIGHT = "weight"


def _column(table: pa.Table, name: str, i: int) -> np.ndarray:
    col = table.column(i)
    if col.null_count:
        raise invalid(f"column {name!r} has {col.null_count} null values")
    return col.to_numpy()


def parse(path: Path, limits: Limits) -> Parsed:
    """Read and fully validate an Arrow IPC stream; rows are then gathered chunk by chunk.

    The stream is memory-mapped, so the table's columns point into the file: memory holds one
    row chunk of the (n, d) array at a time, never the whole dataset.
    """
    try:
        source = pa.memory_map(str(path), "r")
        reader = pa.ipc.open_stream(source)
        schema = reader.schema
        names = schema.names
        if len(names) != len(set(names)):
            raise invalid("Arrow column names must be unique")
        dims = [i for i, f in enumerate(schema) if f.name != WEIGHT]
        check_shape(1, len(dims), limits)
        for i in dims:
            f = schema.field(i)
            if not pa.types.is_floating(f.type):
                raise invalid(
                    f"Arrow column {f.name!r} has type {f.type}: "
                    "sample columns must be float16, float32 or float64"
                )
        table = reader.read_all()
        table.validate(full=True)
        check_shape(table.num_rows, len(dims), limits)
        weights = None
        if WEIGHT in names:
            wi = names.index(WEIGHT)
            wtype = schema.field(wi).type
            if not (pa.types.is_floating(wtype) or pa.types.is_integer(wtype)):
                raise invalid(f"the {WEIGHT!r} column has type {wtype}: it must be numeric")
            weights = _column(table, WEIGHT, wi).astype(np.float64)
        for i in dims:
            if table.column(i).null_count:
                raise invalid(f"column {names[i]!r} has {table.column(i).null_count} null values")
    except (pa.ArrowException, OSError) as e:
        raise invalid(f"not a valid Arrow IPC stream: {e}") from None
    dtype = np.result_type(*[schema.field(i).type.to_pandas_dtype() for i in dims])
    if dtype == np.float16:
        dtype = np.dtype(np.float32)

    def chunks(rows: int) -> Iterator[np.ndarray]:
        for start in range(0, table.num_rows, rows):
            part = table.slice(start, rows)
            block = np.empty((part.num_rows, len(dims)), dtype=dtype)
            for j, i in enumerate(dims):
                block[:, j] = part.column(i).to_numpy()
            yield block

    return Parsed(n=table.num_rows, d=len(dims), dtype=dtype, chunks=chunks, weights=weights)
