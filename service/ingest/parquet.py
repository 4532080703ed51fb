"""Parquet uploads (``application/vnd.apache.parquet``): numeric columns, streamed by row batch.

The file is opened from disk (where the upload was streamed) and read a batch of rows at a
time, only the picked columns (``?columns=``, ``?exclude=``, ``?weights=``): memory holds one
batch, never the whole table. Columns are checked as for Arrow (:func:`service.ingest.arrow.plan`):
float or integer (integers exact in float64), nulls refused with the column and row.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from service.ingest.arrow import block, plan, weights_of
from service.ingest.base import Limits, Options, Parsed, check_shape, invalid

WHAT = "Parquet"
#: Bytes of a column chunk read at a time: every picked column has its own buffer, so a small
#: one keeps a wide file's reader small (8 MB x 64 columns would be 512 MB).
READ_BUFFER = 64 * 1024
#: Rows per batch: about this many bytes of samples (the reader's own memory, its dictionaries
#: and pages for every column, dominates; smaller batches save a little more).
BATCH_BYTES = 2 * 1024 * 1024


def _open(path: Path) -> pq.ParquetFile:
    return pq.ParquetFile(path, buffer_size=READ_BUFFER, pre_buffer=False)


def parse(path: Path, limits: Limits, options: Options | None = None) -> Parsed:
    """Read a Parquet file's schema and row count; rows are then read batch by batch."""
    options = options or Options()
    try:
        pf = _open(path)
        p = plan(pf.schema_arrow, options, limits, WHAT)
        n = pf.metadata.num_rows
        check_shape(n, len(p.selection.features), limits)
        weights = None
        if p.weights_name is not None:
            col = pf.read(columns=[p.weights_name], use_threads=False).column(0)
            weights = weights_of(col, p, WHAT)
    except (pa.ArrowException, OSError) as e:
        raise invalid(f"not a valid Parquet file: {e}") from None
    picked = p.selection.names

    def chunks(rows: int) -> Iterator[np.ndarray]:
        seen = 0
        try:
            reader = _open(path)
            size = max(1, min(rows, BATCH_BYTES // (len(picked) * p.dtype.itemsize)))
            for batch in reader.iter_batches(batch_size=size, columns=picked, use_threads=True):
                yield block(batch, p, seen, WHAT)
                seen += batch.num_rows
        except (pa.ArrowException, OSError) as e:
            raise invalid(f"not a valid Parquet file: {e} (near row {seen})") from None

    wname = None if p.weights_name is None else f"the ?weights column {p.weights_name!r}"
    return Parsed(
        n=n,
        d=len(picked),
        dtype=p.dtype,
        chunks=chunks,
        weights=weights,
        columns=picked,
        weights_name=wname,
    )
