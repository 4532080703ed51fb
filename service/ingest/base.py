"""What every upload format shares: the errors, the limits, and the canonical form with its hash.

Each format module turns an uploaded file into a :class:`Parsed` (shape, source dtype, a way to
read the samples in row chunks, optional weights). :func:`canonicalize` then validates it (limits,
finite values, weights) and writes the one canonical form every format converges to: a C-order,
little-endian float32 or float64 ``.npy`` of shape (n, d), hashed while it is written, so the same
data sent as ``.npy``, Arrow, Parquet, CSV or JSON (with the same dtype) gets the same sha256.

Nothing is implicit: which columns are features (``?columns=`` / ``?exclude=``), which one holds
the weights (``?weights=``) and, for CSV, the header and delimiter are :class:`Options`; every
format names its columns (``x0 … x{d-1}`` where the file has no names) and :func:`select` picks
them the same way for all. Column names are part of a dataset's identity: the hash covers them
whenever they are not the default ``x0 … x{d-1}`` (so hashes of unnamed data are unchanged).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import queue
import threading
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
#: The largest |value| accepted in samples: the squared distance of two points, at most
#: d·(2·MAX_ABS)² = d·4e300, stays finite in float64 for any d up to 4·10⁷ (beyond, the
#: estimators overflow: "Problem unbounded", a division by zero).
MAX_ABS = 1e150
_BOUND = np.float64(MAX_ABS)  # a float64 scalar: float32 data compares in float64 (NEP 50)
BOUND_REASON = (
    "|value| must be at most 1e150, so that squared distances (d·(2·1e150)²) stay finite in float64"
)


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


#: Accepted CSV delimiters (``?delimiter=``), with the spellings that fit in a URL or a shell.
DELIMITERS = {",": ",", ";": ";", "|": "|", "\t": "\t", "tab": "\t"}
HEADER_CHOICES = ("auto", "true", "false")
MAX_NAME_CHARS = 200


def default_columns(d: int) -> list[str]:
    """The names of columns a file does not name: x0 … x{d-1}."""
    return [f"x{j}" for j in range(d)]


def _name_list(value: str | None, flag: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    names = tuple(v.strip() for v in value.split(","))
    if not value.strip() or any(not v for v in names):
        raise invalid(f"?{flag}={value[:80]!r}: give comma-separated column names, none empty")
    if len(set(names)) != len(names):
        dup = next(v for v in names if names.count(v) > 1)
        raise invalid(f"?{flag} names column {dup!r} twice")
    return names


@dataclass(frozen=True)
class Options:
    """How to read an upload: nothing about columns, weights or headers is ever guessed.

    ``weights``: the column holding the sample weights (none: unweighted). ``columns``: the
    feature columns, in this order (none: every column but ``exclude`` and ``weights``).
    ``header`` and ``delimiter`` apply to CSV only (``auto``: see :mod:`service.ingest.csv`).
    """

    weights: str | None = None
    columns: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()
    header: str = "auto"
    delimiter: str | None = None

    @classmethod
    def from_query(
        cls,
        *,
        weights: str | None = None,
        columns: str | None = None,
        exclude: str | None = None,
        header: str | None = None,
        delimiter: str | None = None,
    ) -> Options:
        """Options from the upload's query strings (or the CLI flags); a 422 names the flag."""
        if weights is not None and not weights.strip():
            raise invalid("?weights= needs the name of the column that holds the weights")
        cols = _name_list(columns, "columns")
        excl = _name_list(exclude, "exclude") or ()
        if cols is not None and excl:
            raise invalid("give ?columns= (the features to keep) or ?exclude=, not both")
        w = weights.strip() if weights is not None else None
        if w is not None and cols is not None and w in cols:
            raise invalid(f"column {w!r} is the ?weights column: it cannot be a feature too")
        if w is not None and w in excl:
            raise invalid(f"column {w!r} is the ?weights column: do not ?exclude it too")
        h = (header or "auto").strip().lower()
        if h not in HEADER_CHOICES:
            raise invalid(f"?header={str(header)[:40]!r}: use auto, true or false")
        sep = None
        if delimiter is not None:
            sep = DELIMITERS.get(delimiter if delimiter in DELIMITERS else delimiter.lower())
            if sep is None:
                raise invalid(
                    f"?delimiter={delimiter[:20]!r} is not accepted: use one of , ; | or tab"
                )
        return cls(weights=w, columns=cols, exclude=excl, header=h, delimiter=sep)

    def check_for(self, fmt: str) -> None:
        """CSV-only options on another format are refused, not ignored."""
        if fmt == "csv":
            return
        if self.header != "auto":
            raise invalid(f"?header applies to CSV uploads only, not to {fmt}")
        if self.delimiter is not None:
            raise invalid(f"?delimiter applies to CSV uploads only, not to {fmt}")

    @property
    def selects(self) -> bool:
        """Whether these options pick or drop columns (else every column is a feature)."""
        return self.weights is not None or self.columns is not None or bool(self.exclude)


@dataclass(frozen=True)
class Selection:
    """The chosen columns of a file: feature positions (in output order) and their names, and
    the weight column's position (None: unweighted)."""

    features: list[int]
    names: list[str]
    weights: int | None


def select(names: list[str], options: Options, what: str) -> Selection:
    """Pick the feature and weight columns of a file whose columns are ``names``.

    Every refusal names the column and the flag; ``what`` names the file kind (``CSV``...).
    """
    shown = ", ".join(repr(n) for n in names[:20]) + (" ..." if len(names) > 20 else "")
    index = {n: i for i, n in enumerate(names)}

    def position(name: str, flag: str) -> int:
        if name not in index:
            raise invalid(
                f"?{flag} names column {name!r}, which the {what} does not have; its "
                f"columns are {shown}"
            )
        return index[name]

    w = position(options.weights, "weights") if options.weights is not None else None
    for name in options.exclude:
        position(name, "exclude")
    if options.columns is not None:
        features = [position(c, "columns") for c in options.columns]
    else:
        drop = set(options.exclude) | ({options.weights} if options.weights else set())
        features = [i for i, n in enumerate(names) if n not in drop]
    if not features:
        raise invalid(
            f"no feature column is left in the {what} (columns {shown}): select some with ?columns="
        )
    return Selection(features=features, names=[names[i] for i in features], weights=w)


def check_names(names: list[str], what: str, fix: str) -> None:
    """Column names: non-empty, unique, at most MAX_NAME_CHARS; ``fix`` says how to repair."""
    for j, n in enumerate(names):
        if not n:
            raise invalid(f"{what} column {j + 1} has no name. {fix}")
        if len(n) > MAX_NAME_CHARS:
            raise invalid(
                f"{what} column {j + 1}'s name is longer than {MAX_NAME_CHARS} characters"
            )
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise invalid(f"{what} column name {dup!r} appears twice: column names must be unique")


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
    columns: list[str] | None = None  # None: x0 … x{d-1}
    weights_name: str | None = None  # where the weights came from, for the refusals


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
    columns: list[str]


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


def finish_hash(
    h: hashlib._Hash, weights: np.ndarray | None, columns: list[str] | None = None
) -> str:
    """Close the hash: the normalised float64 weights count when given, the column names when
    they are not the default x0 … x{d-1} (the same numbers under other names are another
    dataset; unnamed data keeps the hash it always had)."""
    if weights is not None:
        h.update(b"\0weights\0")
        h.update(np.ascontiguousarray(weights, dtype="<f8").tobytes())
    if columns is not None and columns != default_columns(len(columns)):
        h.update(b"\0columns\0")
        h.update(json.dumps(list(columns), ensure_ascii=False).encode())
    return h.hexdigest()


def canonical_sha256(
    samples: np.ndarray, weights: np.ndarray | None = None, columns: list[str] | None = None
) -> str:
    """The dataset hash of an in-memory array (1-D is n x 1) with its column names (None:
    x0 … x{d-1}); the uploads compute the same."""
    a = np.asarray(samples)
    if a.ndim == 1:
        a = a.reshape(-1, 1)
    a = np.ascontiguousarray(a, dtype=canonical_dtype(a.dtype))
    h = canonical_hasher(a.dtype, a.shape[0], a.shape[1])
    h.update(a.data.cast("B"))
    w = None if weights is None else normalise_weights(np.asarray(weights), a.shape[0])
    return finish_hash(h, w, columns)


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


def _first_non_finite(chunk: np.ndarray, row0: int, columns: list[str]) -> str:
    """Where the first value that is not finite or beyond ±MAX_ABS is, and why it is refused."""
    with np.errstate(invalid="ignore"):
        bad = np.argwhere(~(np.abs(chunk) <= _BOUND))[0]
    value = chunk[bad[0], bad[1]]
    j = int(bad[1])
    where = f"at row {row0 + int(bad[0])}, column {j} ({columns[j]!r})"
    if np.isfinite(value):
        return f"value {value} {where} is too large: {BOUND_REASON}"
    return f"non-finite value {value} {where}"


def all_finite(chunk: np.ndarray) -> bool:
    """Whether every value of a float array is finite and within ±MAX_ABS (two reductions)."""
    if chunk.size == 0:
        return True
    # min and max propagate nan; a comparison with nan is False.
    return bool(chunk.min() >= -_BOUND) and bool(chunk.max() <= _BOUND)


class _HashWriter:
    """Hashes (and writes, when ``f`` is a file) C-order chunks on one thread beside the caller,
    so that reading the next chunk (decoding Parquet, parsing, gathering columns) overlaps the
    sha256 and the disk write: both release the GIL. At most ``depth`` chunks wait."""

    def __init__(self, h: Any, f: Any, depth: int = 2) -> None:
        self.h, self.f = h, f
        self.queue: queue.Queue[np.ndarray | None] = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="canonical-writer", daemon=True)

    def __enter__(self) -> _HashWriter:
        self.thread.start()
        return self

    def put(self, c: np.ndarray) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put(c)

    def _run(self) -> None:
        while (c := self.queue.get()) is not None:
            if self.error is not None:
                continue  # drain, so that put() never blocks on a dead writer
            try:
                view = c.data.cast("B")
                self.h.update(view)
                if self.f is not None:
                    self.f.write(view)
            except BaseException as e:  # noqa: BLE001 - raised again in the caller's thread
                self.error = e

    def __exit__(self, *exc: object) -> None:
        self.queue.put(None)
        self.thread.join()
        if self.error is not None and exc[0] is None:
            raise self.error


def canonicalize(parsed: Parsed, limits: Limits, out: Path, digest: Any = None) -> Ingested:
    """Validate ``parsed`` and write (or reuse) its canonical ``.npy``, hashing it on the way.

    The samples are read in chunks of about ``CHUNK_BYTES``: memory stays bounded whatever n is.
    ``out`` is a temporary file the caller owns; it is written unless ``parsed.reusable``.
    ``digest`` (an ``NpyDigest`` fed while the body arrived) saves that pass when it followed
    this very data and found it finite.
    """
    n, d = parsed.n, parsed.d
    check_shape(n, d, limits)
    columns = parsed.columns if parsed.columns is not None else default_columns(d)
    if len(columns) != d:
        raise invalid(f"{len(columns)} column names for d={d} columns")
    target = canonical_dtype(parsed.dtype)
    try:
        weights = None if parsed.weights is None else normalise_weights(parsed.weights, n)
    except IngestError as e:
        if parsed.weights_name is None:
            raise
        raise invalid(f"{parsed.weights_name}: {e.detail}") from None
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
            sha256=finish_hash(streamed, None, columns),
            bytes=n * d * target.itemsize,
            columns=columns,
        )
    seen = 0
    with open(out, "wb") if not reuse else contextlib.nullcontext() as f:
        if f is not None:
            f.write(npy_header(target, n, d))
        with _HashWriter(h, f) as sink:
            for chunk in parsed.chunks(rows):
                c = chunk if chunk.dtype == target else chunk.astype(target)
                if c.ndim != 2 or c.shape[1] != d:
                    raise invalid(f"inconsistent row length near row {seen}: expected {d} columns")
                if not all_finite(c):
                    raise invalid(
                        "samples must be finite and bounded: " + _first_non_finite(c, seen, columns)
                    )
                sink.put(np.ascontiguousarray(c))
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
        sha256=finish_hash(h, weights, columns),
        bytes=nbytes,
        columns=columns,
    )


def array_chunks(a: np.ndarray) -> Callable[[int], Iterator[np.ndarray]]:
    """``Parsed.chunks`` for an in-memory (n, d) array."""

    def chunks(rows: int) -> Iterator[np.ndarray]:
        for i in range(0, a.shape[0], rows):
            yield a[i : i + rows]

    return chunks


def from_array(
    samples: np.ndarray,
    weights: np.ndarray | None,
    limits: Limits,
    columns: list[str] | None = None,
    weights_name: str | None = None,
) -> Parsed:
    """A :class:`Parsed` for an in-memory array: 1-D becomes n x 1, other ranks are refused."""
    a = np.asarray(samples)
    if a.ndim == 1:
        a = a.reshape(-1, 1)
    if a.ndim != 2:
        raise invalid(f"samples must be 1-D or 2-D (n x d), got {a.ndim}-D shape {a.shape}")
    canonical_dtype(a.dtype)
    check_shape(a.shape[0], a.shape[1], limits)
    return Parsed(
        n=a.shape[0],
        d=a.shape[1],
        dtype=a.dtype,
        chunks=array_chunks(a),
        weights=weights,
        columns=columns,
        weights_name=weights_name,
    )
