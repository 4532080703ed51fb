"""JSON uploads: ``{"samples": [[...], ...], "weights": [...], "columns": [...]}``; float64.

``weights`` (one per sample) and ``columns`` (one name per column; default x0 … x{d-1}) are
optional. Only JSON numbers are numbers: booleans, strings (even ``"1.5"``), nulls and integers
beyond the float64 range are refused with the row and column. ``?columns=``, ``?exclude=`` and
``?weights=`` pick among the named columns as for every other format.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from service.ingest.base import (
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


def _no_constants(name: str) -> Any:
    raise invalid(f"JSON {name} is not a number: samples must be finite")


def _integer(text: str) -> float:
    """JSON integers become floats; one beyond the float64 range is refused (not a 500)."""
    value = float(text)
    if not math.isfinite(value):
        raise invalid(
            f"the integer {text[:20]}... ({len(text)} digits) is beyond the float64 "
            "range: samples and weights must be float64 numbers"
        )
    return value


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


def _rows(value: Any, limits: Limits) -> list[list[float]]:
    """Check that ``value`` is a rectangular array of JSON numbers: its rows (1-D: one column)."""
    if not isinstance(value, list):
        raise invalid('"samples" must be an array of rows, each an array of numbers')
    if not value:
        raise invalid("the dataset is empty (n=0): need at least one sample")
    if not isinstance(value[0], list):
        value = [[v] for v in value]  # a flat array: n samples of one column
    d = len(value[0])
    if d == 0:
        raise invalid("the dataset is empty (d=0): rows need at least one number")
    if d > limits.max_d:
        raise too_large(f"d={d} dimensions is more than the limit of {limits.max_d}")
    for i, row in enumerate(value):
        if type(row) is not list:
            raise invalid(f'"samples" row {i} is {_describe(row)}, not an array of numbers')
        if len(row) != d:
            raise invalid(
                f'"samples" row {i} has {len(row)} values where row 0 has {d}: '
                "every row needs the same columns"
            )
        if set(map(type, row)) - {float}:
            j = next(j for j, v in enumerate(row) if type(v) is not float)
            raise invalid(f'"samples" row {i}, column {j}: {_describe(row[j])} is not a number')
    return value


def _weights(value: Any) -> list[float]:
    if not isinstance(value, list):
        raise invalid('"weights" must be a flat array of numbers, one per sample')
    for i, v in enumerate(value):
        if type(v) is not float:
            what = "an array" if isinstance(v, list) else _describe(v)
            raise invalid(f'"weights" must be a flat array of numbers: weight {i} is {what}')
    return value


def parse(path: Path, limits: Limits, options: Options | None = None) -> Parsed:
    """Parse the JSON document into float64 samples and optional weights."""
    options = options or Options()
    try:
        with open(path, "rb") as f:
            doc = json.load(f, parse_constant=_no_constants, parse_int=_integer)
    except UnicodeDecodeError:
        raise invalid("the JSON body is not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise invalid(f"malformed JSON: {e}") from None
    except RecursionError:
        raise invalid("malformed JSON: nested too deeply") from None
    if not isinstance(doc, dict):
        raise invalid('the JSON body must be an object {"samples": [[...]], "weights": [...]}')
    extra = set(doc) - set(MEMBERS)
    if extra:
        raise invalid(f"unknown JSON keys {sorted(extra)}: only {', '.join(MEMBERS)} are read")
    if "samples" not in doc:
        raise invalid('the JSON body needs a "samples" array')
    rows = _rows(doc["samples"], limits)
    d = len(rows[0])
    names = default_columns(d)
    if doc.get("columns") is not None:
        cols = doc["columns"]
        if not isinstance(cols, list) or not all(isinstance(c, str) for c in cols):
            raise invalid('"columns" must be an array of column names (strings)')
        if len(cols) != d:
            raise invalid(f'"columns" has {len(cols)} names for rows of {d} values')
        names = [c.strip() for c in cols]
        check_names(names, "JSON", 'Give every entry of "columns" a name')
    sel = select(names, options, "JSON document")
    weights: np.ndarray | None = None
    wname = None
    if doc.get("weights") is not None:
        if sel.weights is not None:
            raise invalid('the weights are given twice: a "weights" member and ?weights=; keep one')
        weights = np.array(_weights(doc["weights"]), dtype=np.float64)
        wname = '"weights"'
    a = np.array(rows, dtype=np.float64).reshape(len(rows), d)
    if sel.weights is not None:
        weights = a[:, sel.weights].copy()
        wname = f"the ?weights column {names[sel.weights]!r}"
    if sel.features != list(range(d)):
        a = np.ascontiguousarray(a[:, sel.features])
    return from_array(a, weights, limits, sel.names, wname)
