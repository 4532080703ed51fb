"""``.npy`` uploads: the header is parsed here, bounded, and nothing is ever unpickled.

numpy's own reader would read a declared header length before checking it and would unpickle
object arrays when asked; this module reads the fixed prefix, refuses a header longer than the
limit before reading it, parses the header dictionary as a literal, accepts only float16/32/64 in
C order with one or two dimensions, and checks that the data is exactly n * d * itemsize bytes.
"""

from __future__ import annotations

import ast
import io
import os
import re
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from service.ingest.base import (
    NUMPY_HEADER_LIMIT,
    IngestError,
    Limits,
    Options,
    Parsed,
    all_finite,
    canonical_dtype,
    canonical_hasher,
    check_shape,
    default_columns,
    invalid,
    select,
)

MAGIC = b"\x93NUMPY"
_FLOAT_DESCR = re.compile(r"[<>=|]?f[248]")  # fullmatch: "$" would let "<f4\n" pass


def read_header(f, limits: Limits) -> tuple[np.dtype, tuple[int, ...], int]:
    """Parse the header at the start of binary file ``f``: (dtype, shape, data offset)."""
    prefix = f.read(8)
    if len(prefix) < 8 or prefix[:6] != MAGIC:
        raise invalid("not a .npy file: it does not start with the \\x93NUMPY magic")
    major, minor = prefix[6], prefix[7]
    if major == 1:
        raw = f.read(2)
        fmt = "<H"
    elif major in (2, 3):
        raw = f.read(4)
        fmt = "<I"
    else:
        raise invalid(f"unknown .npy format version {major}.{minor}")
    if len(raw) != struct.calcsize(fmt):
        raise invalid("truncated .npy header")
    (hlen,) = struct.unpack(fmt, raw)
    if hlen > limits.max_npy_header_bytes:
        raise invalid(
            f".npy header length {hlen} is more than the limit of "
            f"{limits.max_npy_header_bytes} bytes"
        )
    header = f.read(hlen)
    if len(header) != hlen:
        raise invalid(f"truncated .npy header: {len(header)} of {hlen} bytes")
    offset = 8 + len(raw) + hlen
    try:
        text = header.decode("utf-8" if major == 3 else "latin1")
        meta = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError) as e:
        raise invalid(f"unreadable .npy header: {type(e).__name__}") from None
    if not isinstance(meta, dict) or set(meta) != {"descr", "fortran_order", "shape"}:
        raise invalid("the .npy header must be a dict with keys descr, fortran_order and shape")
    descr, fortran, shape = meta["descr"], meta["fortran_order"], meta["shape"]
    if not isinstance(descr, str):
        raise invalid("structured .npy dtypes are not accepted: send a plain float array")
    if not _FLOAT_DESCR.fullmatch(descr):
        try:
            name = np.dtype(descr).name
        except Exception:  # noqa: BLE001 - any descr numpy cannot read is just unknown
            name = "unknown"
        hint = " (object arrays would need unpickling, which is never done)" if "O" in descr else ""
        raise invalid(
            f".npy dtype {descr!r} ({name}) is not supported{hint}: "
            "send float16, float32 or float64"
        )
    dtype = np.dtype(descr)
    if fortran is not False:
        raise invalid(
            "Fortran-order .npy arrays are not accepted: save a C-order array "
            "(np.ascontiguousarray) instead"
        )
    if (
        not isinstance(shape, tuple)
        or not all(isinstance(s, int) and not isinstance(s, bool) for s in shape)
        or any(s < 0 for s in shape)
    ):
        raise invalid(f"bad .npy shape {shape!r}: need a tuple of non-negative integers")
    return dtype, shape, offset


def check_header(dtype: np.dtype, shape: tuple[int, ...], limits: Limits) -> tuple[int, int]:
    """(n, d) of a parsed header: 1-D or 2-D, within the limits, a float dtype."""
    if len(shape) == 1:
        n, d = shape[0], 1
    elif len(shape) == 2:
        n, d = shape
    else:
        raise invalid(f"samples must be 1-D or 2-D (n x d), got {len(shape)}-D shape {shape}")
    check_shape(n, d, limits)
    canonical_dtype(dtype)
    return n, d


def parse(path: Path, limits: Limits, options: Options | None = None) -> Parsed:
    """Read and check a ``.npy`` upload; the samples are then read from the file in chunks.

    Its columns are x0 … x{d-1}; ``?columns=``, ``?exclude=`` and ``?weights=`` pick among
    them by those names (then the file is rewritten, never reused as it is).
    """
    options = options or Options()
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        dtype, shape, offset = read_header(f, limits)
    n, d = check_header(dtype, shape, limits)
    expected = n * d * dtype.itemsize
    actual = size - offset
    if actual != expected:
        what = "truncated" if actual < expected else "longer than its header says"
        raise invalid(
            f"the .npy data is {what}: shape {tuple(shape)} of {dtype.name} needs "
            f"{expected} bytes, the file holds {actual}"
        )

    def chunks(rows: int) -> Iterator[np.ndarray]:
        step = rows * d * dtype.itemsize
        buf = bytearray(min(step, expected))
        with open(path, "rb") as f:
            f.seek(offset)
            remaining = expected
            while remaining:
                k = min(step, remaining)
                view = memoryview(buf)[:k]
                got = f.readinto(view)
                if got != k:
                    raise invalid("the .npy data ended early")
                remaining -= k
                yield np.frombuffer(view, dtype=dtype).reshape(-1, d)

    if options.selects:
        return _selected(n, d, dtype, chunks, options, limits)
    canonical = len(shape) == 2 and dtype.str in ("<f4", "<f8") and offset <= NUMPY_HEADER_LIMIT
    reusable = path if canonical and _numpy_agrees(path, dtype, (n, d)) else None
    return Parsed(n=n, d=d, dtype=dtype, chunks=chunks, reusable=reusable)


def _selected(n: int, d: int, dtype: np.dtype, chunks, options: Options, limits: Limits) -> Parsed:
    """The picked columns of a ``.npy`` (named x0 … x{d-1}), and its ?weights column."""
    names = default_columns(d)
    sel = select(names, options, ".npy array")
    check_shape(n, len(sel.features), limits)
    weights = None
    if sel.weights is not None:
        weights = np.empty(n, dtype=np.float64)
        at = 0
        for c in chunks(max(1, (8 << 20) // (d * dtype.itemsize))):
            weights[at : at + c.shape[0]] = c[:, sel.weights]
            at += c.shape[0]

    def picked(rows: int) -> Iterator[np.ndarray]:
        for c in chunks(rows):
            yield c[:, sel.features]

    wname = None if sel.weights is None else f"the ?weights column {names[sel.weights]!r}"
    return Parsed(
        n=n,
        d=len(sel.features),
        dtype=dtype,
        chunks=picked,
        weights=weights,
        columns=sel.names,
        weights_name=wname,
    )


def _numpy_agrees(path: Path, dtype: np.dtype, shape: tuple[int, int]) -> bool:
    """Whether numpy's own loader (used by the workers) reads this header the same way."""
    try:
        a = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception:  # noqa: BLE001 - any refusal means: rewrite the header ourselves
        return False
    ok = isinstance(a, np.ndarray) and a.dtype == dtype and a.shape == shape
    ok = ok and a.flags.c_contiguous
    del a
    return bool(ok)


class NpyDigest:
    """Hashes and checks a ``.npy`` body block by block while it is being received.

    Only a body whose data already is canonical (2-D, ``<f4`` or ``<f8``) is followed; for any
    other the digest goes inactive and the file is read again after the upload, as for every
    other format. A header that can already be refused (malformed, wrong dtype, over the limits)
    sets ``failure``, so that the upload can stop at once instead of receiving the rest.
    Feeding happens on one worker thread, in order.
    """

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.active = True
        self.failure: IngestError | None = None
        self.announced: int | None = None
        self.head = bytearray()
        self.hasher: Any = None  # a hashlib object once the header is known
        self.key: tuple[np.dtype, int, int] | None = None
        self.finite = True
        self.data_bytes = 0
        self._carry = b""

    def feed(self, block: bytes | bytearray | memoryview) -> None:
        """Take the next bytes of the body."""
        if not self.active:
            return
        if self.hasher is None:
            self.head += block
            self._start()
            return
        self._data(memoryview(block))

    def _start(self) -> None:
        head = self.head
        if len(head) < 12:
            return
        fmt, pre = ("<H", 10) if head[6] == 1 else ("<I", 12)
        (hlen,) = struct.unpack_from(fmt, head, 8)
        complete = len(head) >= pre + hlen
        bad_prefix = head[:6] != MAGIC or head[6] not in (1, 2, 3)
        if not (complete or bad_prefix or hlen > self.limits.max_npy_header_bytes):
            return
        self.active = False  # until the header proves canonical
        try:
            dtype, shape, offset = read_header(io.BytesIO(head), self.limits)
            n, d = check_header(dtype, shape, self.limits)
        except IngestError as e:
            self.failure = e
            return
        self.announced = offset + n * d * dtype.itemsize
        if len(shape) != 2 or dtype.str not in ("<f4", "<f8"):
            self.active = False
            return
        self.active = True
        self.key = (dtype, shape[0], shape[1])
        self.hasher = canonical_hasher(dtype, shape[0], shape[1])
        self.head = bytearray()
        self._data(memoryview(head)[offset:])

    def _data(self, view: memoryview) -> None:
        self.hasher.update(view)
        self.data_bytes += len(view)
        if not self.finite:
            return
        itemsize = self.key[0].itemsize  # type: ignore[index]
        if self._carry:
            need = itemsize - len(self._carry)
            self._carry += bytes(view[:need])
            view = view[need:]
            if len(self._carry) == itemsize:
                one = np.frombuffer(self._carry, dtype=self.key[0])  # type: ignore[index]
                self.finite = all_finite(one)
                self._carry = b""
        cut = len(view) - len(view) % itemsize
        if cut:
            values = np.frombuffer(view[:cut], dtype=self.key[0])  # type: ignore[index]
            self.finite = self.finite and all_finite(values)
        self._carry += bytes(view[cut:])

    def result_for(self, parsed: Parsed):
        """The hasher (data fed) when this digest followed exactly ``parsed``'s data, else None."""
        if not self.active or self.hasher is None:
            return None
        if self.key != (parsed.dtype, parsed.n, parsed.d):
            return None
        if self.data_bytes != parsed.n * parsed.d * parsed.dtype.itemsize:
            return None
        return self.hasher
