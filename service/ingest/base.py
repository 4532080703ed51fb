"""What every upload format shares: the errors, the limits, and the canonical form with its hash.

Each format module turns an uploaded file into a :class:`Parsed` (shape, source dtype, a way to
read the samples in row chunks, optional weights). :func:`canonicalize` then validates it (limits,
finite values, weights) and writes the one canonical form every format converges to: a C-order,
little-endian float32 or float64 ``.npy`` of shape (n, d), hashed while it is written, so the same
data sent as ``.npy``, Arrow, CSV or JSON (with the same dtype) gets the same sha256.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from service.problems import lookup

#: Rows are read, checked, hashed and written in chunks of about this many bytes.
CHUNK_BYTES = 8 * 1024 * 1024
#: numpy's own loader refuses longer headers without extra arguments; longer ones are rewritten.
NUMPY_HEADER_LIMIT = 10_000


class IngestError(ValueError):
    """An upload that cannot become a dataset, with its problem code (service.problems)."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = lookup(code)
        self.detail = detail

    @property
    def code(self) -> str:
        return self.kind.code

    @property
    def status(self) -> int:
        return self.kind.status

    @property
    def type(self) -> str:
        return self.kind.type

    @property
    def title(self) -> str:
        return self.kind.title


def invalid(detail: str) -> IngestError:
    """A 422: the body is not a valid dataset (malformed, wrong dtype, NaN, bad weights...)."""
    return IngestError("invalid-upload", detail)


def too_large(detail: str) -> IngestError:
    """A 413: the body or the array is beyond a configured limit."""
    return IngestError("upload-too-large", detail)


def unsupported(detail: str) -> IngestError:
    """A 415: a Content-Type that no format reads."""
    return IngestError("unsupported-media-type", detail)


@dataclass(frozen=True)
class Limits:
    """The upload limits a format checks as early as it can (from the settings)."""

    max_n: int
    max_d: int
    max_npy_header_bytes: int = NUMPY_HEADER_LIMIT


@dataclass
class Parsed:
    """An upload read by a format module, before validation of values and weights.

    ``chunks(rows)`` yields consecutive (k, d) arrays of ``dtype`` covering all n rows.
    ``reusable`` names the uploaded file when it already is the canonical ``.npy`` byte for
    byte in its data (and has a header numpy reads), so it can be moved into place unchanged.
    """

    n: int
    d: int
    dtype: np.dtype
    chunks: Callable[[int], Iterator[np.ndarray]]
    weights: np.ndarray | None = None
    reusable: Path | None = None


@dataclass(frozen=True)
class Ingested:
    """A validated dataset: its canonical samples file, normalised weights and identity."""

    samples_file: Path
    weights: np.ndarray | None
    n: int
    d: int
    dtype: str
    sha256: str
    bytes: int


def canonical_dtype(dtype: np.dtype) -> np.dtype:
    """float16 becomes float32; float32 and float64 stay; always little-endian."""
    if dtype.kind != "f" or dtype.itemsize not in (2, 4, 8):
        raise invalid(
            f"dtype {dtype.str!r} ({dtype.name}) is not supported: send float16, float32 or float64"
        )
    return np.dtype("<f4") if dtype.itemsize in (2, 4) else np.dtype("<f8")


def canonical_hasher(dtype: np.dtype, n: int, d: int) -> hashlib._Hash:
    """A sha256 primed with the canonical dtype and shape; feed it the C-order sample bytes."""
    h = hashlib.sha256()
    h.update(f"lipwass-dataset-v1\0{np.dtype(dtype).str}\0{n},{d}\0".encode())
    return h


def finish_hash(h: hashlib._Hash, weights: np.ndarray | None) -> str:
    """Close the hash: the normalised float64 weights count when given."""
    if weights is not None:
        h.update(b"\0weights\0")
        h.update(np.ascontiguousarray(weights, dtype="<f8").tobytes())
    return h.hexdigest()


def canonical_sha256(samples: np.ndarray, weights: np.ndarray | None = None) -> str:
    """The dataset hash of an in-memory array (1-D is n x 1); the uploads compute the same."""
    a = np.asarray(samples)
    if a.ndim == 1:
        a = a.reshape(-1, 1)
    a = np.ascontiguousarray(a, dtype=canonical_dtype(a.dtype))
    h = canonical_hasher(a.dtype, a.shape[0], a.shape[1])
    h.update(memoryview(a).cast("B"))
    w = None if weights is None else normalise_weights(np.asarray(weights), a.shape[0])
    return finish_hash(h, w)


def npy_header(dtype: np.dtype, n: int, d: int) -> bytes:
    """The header ``np.save`` writes for a C-order (n, d) array of ``dtype``."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": np.dtype(dtype).str, "fortran_order": False, "shape": (n, d)}
    )
    return buf.getvalue()


def check_shape(n: int, d: int, limits: Limits) -> None:
    """n >= 1, d >= 1 (422) and within the limits (413)."""
    if n < 1 or d < 1:
        raise invalid(f"the dataset is empty (n={n}, d={d}): need at least one sample and column")
    if n > limits.max_n:
        raise too_large(f"n={n} samples is more than the limit of {limits.max_n}")
    if d > limits.max_d:
        raise too_large(f"d={d} dimensions is more than the limit of {limits.max_d}")


def normalise_weights(weights: np.ndarray, n: int) -> np.ndarray:
    """Finite, non-negative, positive-sum weights, one per sample, scaled to sum 1 (float64)."""
    w = np.asarray(weights)
    if w.dtype.kind not in "fiu":
        raise invalid(f"weights must be numbers, got dtype {w.dtype.name}")
    w = w.astype(np.float64).reshape(-1)
    if w.shape[0] != n:
        raise invalid(f"{w.shape[0]} weights for {n} samples: need one weight per sample")
    if not np.isfinite(w).all():
        raise invalid(f"weights must be finite: weight {int(np.argmin(np.isfinite(w)))} is not")
    if (w < 0).any():
        raise invalid(f"weights must be non-negative: weight {int(np.argmax(w < 0))} is negative")
    top = float(w.max())
    if not top > 0:
        raise invalid("weights must have a positive sum: they are all zero")
    w = w / top  # first scale by the largest, so that huge finite weights cannot overflow the sum
    return w / w.sum(dtype=np.float64)


def _first_non_finite(chunk: np.ndarray, row0: int) -> str:
    bad = np.argwhere(~np.isfinite(chunk))[0]
    value = chunk[bad[0], bad[1]]
    return f"non-finite value {value} at row {row0 + int(bad[0])}, column {int(bad[1])}"


def all_finite(chunk: np.ndarray) -> bool:
    """Whether every value of a float array is finite, at about the cost of one sum."""
    # A finite sum proves every term finite (inf and nan propagate); only when the sum is not
    # finite (a non-finite value, or an overflow of large finite ones) is the exact check needed.
    with np.errstate(over="ignore", invalid="ignore"):
        if np.isfinite(np.add.reduce(chunk, axis=None)):
            return True
    return bool(np.isfinite(chunk).all())


def canonicalize(parsed: Parsed, limits: Limits, out: Path, digest: Any = None) -> Ingested:
    """Validate ``parsed`` and write (or reuse) its canonical ``.npy``, hashing it on the way.

    The samples are read in chunks of about ``CHUNK_BYTES``: memory stays bounded whatever n is.
    ``out`` is a temporary file the caller owns; it is written unless ``parsed.reusable``.
    ``digest`` (an ``NpyDigest`` fed while the body arrived) saves that pass when it followed
    this very data and found it finite.
    """
    n, d = parsed.n, parsed.d
    check_shape(n, d, limits)
    target = canonical_dtype(parsed.dtype)
    weights = None if parsed.weights is None else normalise_weights(parsed.weights, n)
    rows = max(1, CHUNK_BYTES // max(1, d * target.itemsize))
    h = canonical_hasher(target, n, d)
    reuse = parsed.reusable is not None and parsed.dtype == target
    streamed = digest.result_for(parsed) if reuse and digest is not None else None
    if streamed is not None and digest.finite:
        return Ingested(
            samples_file=parsed.reusable,  # type: ignore[arg-type]
            weights=None,
            n=n,
            d=d,
            dtype=target.name,
            sha256=finish_hash(streamed, None),
            bytes=n * d * target.itemsize,
        )
    seen = 0
    with open(out, "wb") if not reuse else contextlib.nullcontext() as f:
        if not reuse:
            f.write(npy_header(target, n, d))
        for chunk in parsed.chunks(rows):
            c = chunk if chunk.dtype == target else chunk.astype(target)
            if c.ndim != 2 or c.shape[1] != d:
                raise invalid(f"inconsistent row length near row {seen}: expected {d} columns")
            if not all_finite(c):
                raise invalid("samples must be finite: " + _first_non_finite(c, seen))
            c = np.ascontiguousarray(c)
            view = memoryview(c).cast("B")
            h.update(view)
            if not reuse:
                f.write(view)
            seen += c.shape[0]
    if seen != n:
        raise invalid(f"the data holds {seen} rows where the header announced {n}")
    nbytes = n * d * target.itemsize + (n * 8 if weights is not None else 0)
    return Ingested(
        samples_file=parsed.reusable if reuse else out,  # type: ignore[arg-type]
        weights=weights,
        n=n,
        d=d,
        dtype=target.name,
        sha256=finish_hash(h, weights),
        bytes=nbytes,
    )


def array_chunks(a: np.ndarray) -> Callable[[int], Iterator[np.ndarray]]:
    """``Parsed.chunks`` for an in-memory (n, d) array."""

    def chunks(rows: int) -> Iterator[np.ndarray]:
        for i in range(0, a.shape[0], rows):
            yield a[i : i + rows]

    return chunks


def from_array(samples: np.ndarray, weights: np.ndarray | None, limits: Limits) -> Parsed:
    """A :class:`Parsed` for an in-memory array: 1-D becomes n x 1, other ranks are refused."""
    a = np.asarray(samples)
    if a.ndim == 1:
        a = a.reshape(-1, 1)
    if a.ndim != 2:
        raise invalid(f"samples must be 1-D or 2-D (n x d), got {a.ndim}-D shape {a.shape}")
    canonical_dtype(a.dtype)
    check_shape(a.shape[0], a.shape[1], limits)
    return Parsed(
        n=a.shape[0], d=a.shape[1], dtype=a.dtype, chunks=array_chunks(a), weights=weights
    )
