"""Uploads to datasets: pick the format by Content-Type, validate, canonicalise and hash.

Usage: ``fmt = format_for(content_type)`` before reading the body (415 early), then, once the
body is in a temporary file, ``ingest(path, fmt, limits, out, options=...)``. Every format
converges on one canonical ``.npy`` (C order, little-endian float32/float64, shape (n, d)) whose
sha256 covers dtype, shape, bytes, the normalised weights and the column names (when not the
default x0 … x{d-1}): the same table in two formats is one dataset. :class:`Options` say which
columns are features and which holds the weights; nothing is inferred from a column's name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from service.ingest import arrow, csv, jsonfmt, npy, parquet
from service.ingest.base import (
    Ingested,
    IngestError,
    Limits,
    Options,
    Parsed,
    canonical_sha256,
    canonicalize,
    default_columns,
    invalid,
    too_large,
    unsupported,
)

__all__ = [
    "FORMATS",
    "Format",
    "IngestError",
    "Ingested",
    "Limits",
    "Options",
    "canonical_sha256",
    "default_columns",
    "format_for",
    "ingest",
    "invalid",
    "too_large",
    "unsupported",
]


@dataclass(frozen=True)
class Format:
    """One upload format: its name, its parser, and whether the (smaller) text limit applies."""

    name: str
    parse: Callable[[Path, Limits, Options], Parsed]
    text: bool


_NPY = Format("npy", npy.parse, text=False)
_ARROW = Format("arrow", arrow.parse, text=False)
_PARQUET = Format("parquet", parquet.parse, text=False)
_CSV = Format("csv", csv.parse, text=True)
_JSON = Format("json", jsonfmt.parse, text=True)

#: Media type -> format. Parameters (``; charset=utf-8``) are ignored.
FORMATS: dict[str, Format] = {
    "application/octet-stream": _NPY,
    "application/x-npy": _NPY,
    "application/vnd.apache.arrow.stream": _ARROW,
    "application/vnd.apache.parquet": _PARQUET,
    "text/csv": _CSV,
    "application/json": _JSON,
}


def format_for(content_type: str | None) -> Format:
    """The format for a Content-Type header, or a 415 IngestError naming the accepted ones."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    fmt = FORMATS.get(media)
    if fmt is None:
        shown = repr(media) if media else "no Content-Type"
        raise unsupported(f"{shown} is not an upload format; send one of {', '.join(FORMATS)}")
    return fmt


def ingest(
    path: Path,
    fmt: Format,
    limits: Limits,
    out: Path,
    digest: npy.NpyDigest | None = None,
    options: Options | None = None,
) -> Ingested:
    """Parse the uploaded file at ``path`` and write its canonical form to ``out`` (or reuse it).

    ``digest``: what :class:`~service.ingest.stream.UploadSink` computed while receiving.
    ``options``: columns, weights, CSV header and delimiter (CSV-only ones refused elsewhere).
    Raises IngestError (4xx) for anything that is not a valid dataset within the limits.
    """
    options = options or Options()
    options.check_for(fmt.name)
    parsed = fmt.parse(path, limits, options)
    return canonicalize(parsed, limits, out, digest)
