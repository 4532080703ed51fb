"""Helpers of the reader tests: run an upload body through ingest.ingest, expect a refusal."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service import ingest


def ingest_body(
    tmp: Path, fmt: ingest.Format, body: str | bytes, limits: ingest.Limits, **options: str
) -> tuple[ingest.Ingested, np.ndarray]:
    """Ingest ``body`` as ``fmt`` under ``limits`` with the upload's query ``options``
    (weights=, columns=, exclude=, header=, delimiter=): (the result, its stored samples)."""
    src, out = tmp / f"body.{fmt.name}", tmp / "out.npy"
    src.write_bytes(body.encode() if isinstance(body, str) else body)
    out.unlink(missing_ok=True)
    opts = ingest.Options.from_query(**options)
    ds = ingest.ingest(src, fmt, limits, out, options=opts)
    return ds, np.load(ds.samples_file, allow_pickle=False)


def refusal(
    tmp: Path,
    fmt: ingest.Format,
    body: str | bytes,
    limits: ingest.Limits,
    status: int,
    *words: str,
    **options: str,
) -> ingest.IngestError:
    """Ingesting ``body`` fails with ``status`` and a detail naming every one of ``words``."""
    with pytest.raises(ingest.IngestError) as e:
        ingest_body(tmp, fmt, body, limits, **options)
    assert e.value.status == status, e.value.detail
    for w in words:
        assert w.lower() in e.value.detail.lower(), e.value.detail
    return e.value
