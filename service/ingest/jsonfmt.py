"""JSON uploads: ``{"samples": [[...], ...], "weights": [...], "columns": [...]}``; float64.

``weights`` (one per sample) and ``columns`` (one name per column; default x0 … x{d-1}) are
optional. Only JSON numbers are numbers: booleans, strings (even ``"1.5"``), nulls and integers
beyond the float64 range are refused with the row and column. ``?columns=``, ``?exclude=`` and
``?weights=`` pick among the named columns as for every other format.
"""

from __future__ import annotations

import codecs
import json
import re
from array import array
from pathlib import Path
from typing import Any

import ijson
import numpy as np

from service.ingest.base import (
    IngestError,
    Limits,
    Options,
    Parsed,
    check_names,
    default_columns,
    from_array,
    invalid,
    select,
    too_large,
)

MEMBERS = ("samples", "weights", "columns")


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return f"{json.dumps(value)} (a boolean: send 0 or 1 as a number)"
    if isinstance(value, str):
        hint = " (a string: send the number unquoted)" if _numeric_text(value) else " (a string)"
        return json.dumps(value[:40]) + hint
    if value is None:
        return "null (a missing value: every row needs a number in every column)"
    return f"{type(value).__name__} {json.dumps(value)[:40]}"


def _numeric_text(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def parse(path: Path, limits: Limits, options: Options | None = None) -> Parsed:
    """Parse the JSON document into float64 samples and optional weights.

    A streaming parse (ijson's C backend): the samples go straight into a float64 buffer, 8
    bytes a number, so a document costs about its own size in memory (``json.load`` built
    Python lists at ~25x), and the parse gives up the GIL between blocks, so the event loop
    keeps serving while a large upload is read. n and d are checked as rows arrive.
    """
    options = options or Options()
    _check_utf8(path)
    try:
        doc = _read(path, limits, FAST)
    except ijson.IncompleteJSONError as e:
        if "integer overflow" not in str(e):
            raise _malformed(str(e)) from None
        # An integer beyond int64 (valid JSON, and maybe within float64): the slow reader,
        # which has Python's integers.
        try:
            doc = _read(path, limits, EXACT)
        except ijson.JSONError as e2:
            # Beyond Python's 4300 digits of int(str), the reader calls it a symbol.
            big = re.match(r"Unexpected symbol '-?(\d{4000,})", str(e2))
            raise (
                _beyond_float64(str(len(big.group(1)))) if big else _malformed(str(e2))
            ) from None
    if doc.top is None:
        raise invalid("malformed JSON: the body is empty")
    if "samples" not in doc.seen:
        raise invalid('the JSON body needs a "samples" array')
    n, d = doc.n, doc.d or 0
    if n == 0:
        raise invalid("the dataset is empty (n=0): need at least one sample")
    names = default_columns(d)
    if doc.columns is not None:
        cols = doc.columns
        if len(cols) != d:
            raise invalid(f'"columns" has {len(cols)} names for rows of {d} values')
        names = [c.strip() for c in cols]
        check_names(names, "JSON", 'Give every entry of "columns" a name')
    sel = select(names, options, "JSON document")
    weights: np.ndarray | None = None
    wname = None
    if doc.weights is not None:
        if sel.weights is not None:
            raise invalid('the weights are given twice: a "weights" member and ?weights=; keep one')
        weights = np.frombuffer(doc.weights, dtype=np.float64).copy()
        wname = '"weights"'
    a = np.frombuffer(doc.values, dtype=np.float64).reshape(n, d)
    if sel.weights is not None:
        weights = a[:, sel.weights].copy()
        wname = f"the ?weights column {names[sel.weights]!r}"
    if sel.features != list(range(d)):
        a = np.ascontiguousarray(a[:, sel.features])
    return from_array(a, weights, limits, sel.names, wname)


FAST = ijson.get_backend("yajl2_c") if "yajl2_c" in ijson.ALL_BACKENDS else ijson
EXACT = ijson.get_backend("python")


#: The deepest a valid document goes: {"samples": [[number]]}.
MAX_DEPTH = 3


def _read(path: Path, limits: Limits, backend: Any) -> _Document:
    """Feed the document's events to a :class:`_Document`, with ijson's prefixes rebuilt from a
    stack bounded at MAX_DEPTH (ijson's own prefixes grow with the depth: a body of 100 000 "["
    cost minutes and gigabytes of prefix strings)."""
    doc = _Document(limits)
    feed, max_d = doc.feed, limits.max_d
    # Each open container: [its own prefix, the prefix of its children].
    open_: list[list[str]] = []
    with open(path, "rb") as f:
        for event, value in backend.basic_parse(f, use_float=True):
            if event == "map_key":
                own = open_[-1][0]
                feed(own, event, value)
                open_[-1][1] = f"{own}.{value}" if own else value
                continue
            prefix = open_[-1][1] if open_ else ""
            if event in ("start_map", "start_array"):
                feed(prefix, event, value)
                if len(open_) >= MAX_DEPTH:
                    raise invalid('malformed JSON: nested deeper than {"samples": [[...]]}')
                child = (f"{prefix}.item" if prefix else "item") if event == "start_array" else ""
                open_.append([prefix, child])
            elif event in ("end_map", "end_array"):
                feed(open_.pop()[0], event, value)
            elif prefix == "samples.item.item" and type(value) is float:
                # The hot path, inlined: one float of a row.
                row = doc.row
                row.append(value)
                if len(row) > max_d:
                    raise too_large(f"d={len(row)} dimensions is more than the limit of {max_d}")
            else:
                feed(prefix, event, value)
    return doc


def _beyond_float64(digits: str) -> IngestError:
    return invalid(
        f"an integer of {digits} digits is beyond the float64 range: samples and weights must "
        "be float64 numbers"
    )


def _check_utf8(path: Path, block: int = 1 << 20) -> None:
    """Refuse a body that is not UTF-8 before reading it (block by block, in bounded memory)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(block):
                decoder.decode(chunk)
            decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise invalid("the JSON body is not UTF-8 text") from None


def _malformed(message: str) -> IngestError:
    """The C parser's error as a reason a person can act on."""
    first = message.strip().splitlines()[0][:200] if message.strip() else "malformed"
    token = re.search(r"\b(NaN|-?Infinity)\b", message)
    if "invalid char" in first and token:
        return invalid(f"JSON {token.group(1)} is not a number: samples must be finite")
    if "integer overflow" in first:
        return invalid(
            "an integer is beyond the float64 range: samples and weights must be float64 numbers"
        )
    if "floating point) overflow" in first:
        return invalid("a number is beyond the float64 range (non-finite): samples must be finite")
    return invalid(f"malformed JSON: {first}")


def _number(value: Any) -> float | None:
    """A JSON number as a float (integers included), or None for anything else."""
    if type(value) is float:
        return value
    if type(value) is int:
        try:
            return float(value)
        except OverflowError:
            raise _beyond_float64(str(len(str(abs(value))))) from None
    return None


class _Document:
    """The state of one streaming parse: the members read so far and where the parser is."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.top: str | None = None
        self.seen: set[str] = set()
        self.values = array("d")
        self.row: list[float] = []
        self.n = 0
        self.d: int | None = None
        self.flat: bool | None = None
        self.weights: array[float] | None = None
        self.columns: list[str] | None = None

    def feed(self, prefix: str, event: str, value: Any) -> None:
        if prefix == "":
            self._top(event, value)
        elif prefix == "samples" or prefix.startswith("samples."):
            self._samples(prefix, event, value)
        elif prefix == "weights" or prefix.startswith("weights."):
            self._weights(prefix, event, value)
        else:
            self._columns(prefix, event, value)

    def _top(self, event: str, value: Any) -> None:
        if self.top is None:
            if event != "start_map":
                raise invalid(
                    'the JSON body must be an object {"samples": [[...]], "weights": [...]}'
                )
            self.top = "open"
        elif event == "map_key":
            if value not in MEMBERS:
                raise invalid(
                    f"unknown JSON keys [{value[:40]!r}]: only {', '.join(MEMBERS)} are read"
                )
            if value in self.seen:
                raise invalid(f'the JSON key "{value}" is given twice')
            self.seen.add(value)
        elif event == "end_map":
            self.top = "closed"

    def _samples(self, prefix: str, event: str, value: Any) -> None:
        if prefix == "samples":
            if event not in ("start_array", "end_array"):
                raise invalid('"samples" must be an array of rows, each an array of numbers')
            return
        i = self.n
        if prefix == "samples.item":
            if event == "start_array" and self.flat is not True:
                self.flat = False
                self.row = []
            elif event == "end_array" and self.flat is False:
                self._end_row()
            elif event == "number" and self.flat is not False:
                self.flat = True
                self.d = 1
                self.values.append(_number(value))  # type: ignore[arg-type]
                self._count_row()
            elif event in ("start_map", "start_array"):
                raise invalid(f'"samples" row {i} is an {event[6:]}, not an array of numbers')
            else:
                raise invalid(f'"samples" row {i} is {_describe(value)}, not an array of numbers')
            return
        # samples.item.item: one value of a row
        j = len(self.row)
        number = _number(value) if event == "number" else None
        if number is None:
            what = f"an {event[6:]}" if event.startswith("start_") else _describe(value)
            raise invalid(f'"samples" row {i}, column {j}: {what} is not a number')
        self.row.append(number)
        if j + 1 > self.limits.max_d:
            raise too_large(f"d={j + 1} dimensions is more than the limit of {self.limits.max_d}")

    def _end_row(self) -> None:
        i, d = self.n, len(self.row)
        if self.d is None:
            if d == 0:
                raise invalid("the dataset is empty (d=0): rows need at least one number")
            self.d = d
        elif d != self.d:
            raise invalid(
                f'"samples" row {i} has {d} values where row 0 has {self.d}: '
                "every row needs the same columns"
            )
        self.values.extend(self.row)
        self._count_row()

    def _count_row(self) -> None:
        self.n += 1
        if self.n > self.limits.max_n:
            raise too_large(f"n={self.n} samples is more than the limit of {self.limits.max_n}")

    def _weights(self, prefix: str, event: str, value: Any) -> None:
        if prefix == "weights":
            if event == "null":
                return
            if event == "start_array":
                self.weights = array("d")
            elif event != "end_array":
                raise invalid('"weights" must be a flat array of numbers, one per sample')
            return
        if prefix != "weights.item":
            return  # inside a nested array: refused at its start below
        number = _number(value) if event == "number" else None
        if number is None or self.weights is None:
            what = "an array" if event.startswith("start_") else _describe(value)
            i = len(self.weights or ())
            raise invalid(f'"weights" must be a flat array of numbers: weight {i} is {what}')
        self.weights.append(number)

    def _columns(self, prefix: str, event: str, value: Any) -> None:
        if prefix == "columns":
            if event == "null":
                return
            if event == "start_array":
                self.columns = []
            elif event != "end_array":
                raise invalid('"columns" must be an array of column names (strings)')
            return
        if prefix != "columns.item" or event != "string" or self.columns is None:
            raise invalid('"columns" must be an array of column names (strings)')
        if len(self.columns) >= self.limits.max_d:
            raise too_large(f'"columns" names more than the limit of {self.limits.max_d}')
        self.columns.append(value)
