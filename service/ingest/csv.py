"""CSV uploads: numeric columns, float64 values; header, delimiter, columns and weights explicit.

- ``header=auto`` (default) looks at line 1: all numbers -> data (columns named x0 … x{d-1});
  no number at all -> the header; a mix -> refused, naming ``?header=true|false``. A row that
  parses as numbers is never dropped.
- The delimiter is ``?delimiter=`` or, when not given, the one of ``,`` ``;`` tab ``|`` that
  splits the first lines into the same number (> 1) of fields; refused when two do equally well.
- Columns are picked by :func:`service.ingest.base.select` (``?columns=``, ``?exclude=``,
  ``?weights=``); a column that is not picked is never converted (a text label can stay).
- Every refusal names the column, the line and the flag that fixes it.
"""

from __future__ import annotations

import csv as pycsv
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from service.ingest.base import (
    Limits,
    Options,
    Parsed,
    all_finite,
    check_names,
    check_shape,
    default_columns,
    from_array,
    invalid,
    select,
)

CANDIDATES = (",", ";", "\t", "|")
SNIFF_BYTES = 64 * 1024
SNIFF_LINES = 50
_SHOWN = {"\t": "tab", ",": ",", ";": ";", "|": "|"}


def _first_lines(path: Path) -> tuple[list[str], int]:
    """Up to SNIFF_LINES non-blank lines from the start of the file (a cut last line dropped),
    and how many blank lines come before the first of them."""
    with open(path, "rb") as f:
        raw = f.read(SNIFF_BYTES + 1)
    cut = len(raw) > SNIFF_BYTES
    try:
        text = raw[:SNIFF_BYTES].decode("utf-8-sig", errors="strict" if not cut else "ignore")
    except UnicodeDecodeError:
        raise invalid("the CSV is not UTF-8 text: save it as UTF-8") from None
    lines = text.splitlines()
    if cut and len(lines) > 1:
        lines = lines[:-1]
    blanks = next((i for i, ln in enumerate(lines) if ln.strip()), len(lines))
    return [ln for ln in lines if ln.strip()][:SNIFF_LINES], blanks


def _fields(line: str, sep: str) -> list[str]:
    return next(pycsv.reader([line], delimiter=sep), [])


def detect_delimiter(lines: list[str]) -> str:
    """The candidate that splits every sniffed line into the same number (> 1) of fields."""
    counts = {sep: {len(_fields(ln, sep)) for ln in lines} for sep in CANDIDATES}
    steady = {sep: next(iter(c)) for sep, c in counts.items() if len(c) == 1 and min(c) > 1}
    if steady:
        best = max(steady.values())
        winners = [sep for sep, k in steady.items() if k == best]
        if len(winners) > 1:
            shown = " and ".join(repr(_SHOWN[s]) for s in winners)
            raise invalid(
                f"cannot tell the CSV delimiter: {shown} both split every line into "
                f"{best} fields; pass ?delimiter= (one of , ; | tab)"
            )
        return winners[0]
    # No candidate is steady: a ragged file (its reader names the line) or a single column.
    present = [(lines[0].count(sep), sep) for sep in CANDIDATES if sep in lines[0]]
    return max(present)[1] if present else ","


def _is_number(text: str) -> bool:
    t = text.strip()
    if not t or "_" in t:
        return False
    try:
        float(t)
    except ValueError:
        return False
    return True


def has_header(first: list[str], header: str) -> bool:
    """Whether line 1 (its fields ``first``) is a header, by ``?header=`` (auto: see module)."""
    if header != "auto":
        return header == "true"
    filled = [f for f in first if f.strip()]
    numbers = [f for f in filled if _is_number(f)]
    if not filled:
        raise invalid("line 1 of the CSV has only empty fields: remove it, or pass ?header=true")
    if len(numbers) == len(filled):
        return False  # a row of numbers is data, never a header
    if not numbers:
        return True
    text = next(f for f in filled if not _is_number(f))
    raise invalid(
        f"cannot tell whether line 1 of the CSV is a header or data: {numbers[0]!r} is a number "
        f"and {text!r} is not. Pass ?header=true (line 1 names the columns) or ?header=false "
        "(line 1 is data; columns are named x0, x1, ...)"
    )


def _first_unparsable(col: pa.ChunkedArray) -> int | None:
    """Index of the first non-null value of a string column that is not a float, by bisection
    with Arrow's own cast (the conversion the reader does); None when all parse."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col

    def ok(a: pa.Array) -> bool:
        try:
            pc.cast(a, pa.float64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return False
        return True

    if ok(arr):
        return None
    lo, hi = 0, len(arr)  # the first bad index lies in [lo, hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ok(arr.slice(lo, mid - lo)):
            lo = mid
        else:
            hi = mid
    return lo


def _line(row: int, start: int) -> int:
    """The file line of data row ``row`` (0-based) when the data starts at line ``start``
    (no blank line inside it, no quoted field spanning lines)."""
    return start + row


def _not_numeric(
    path: Path,
    read: pacsv.ReadOptions,
    parse: pacsv.ParseOptions,
    wanted: list[str],
    start: int,
    sep: str,
    cause: Exception,
    weights: str | None,
) -> Exception:
    """The refusal for a picked column holding text: which column, which line, how to fix."""
    try:
        table = pacsv.read_csv(
            path,
            read_options=read,
            parse_options=parse,
            convert_options=pacsv.ConvertOptions(
                include_columns=wanted,
                column_types={n: pa.string() for n in wanted},
                null_values=[""],
                strings_can_be_null=True,
            ),
        )
    except (pa.ArrowException, OSError):
        return invalid(f"unreadable CSV: {cause}")
    for name in wanted:
        col = table.column(name)
        bad = _first_unparsable(col)
        if bad is None:
            continue
        value = col[bad].as_py()
        hint = ""
        if sep == ";" and "," in value and _is_number(value.replace(",", ".")):
            hint = " (a decimal comma: write 1.5, not 1,5)"
        if name == weights:
            fix = "the ?weights column must hold numbers"
        else:
            fix = (
                f"only numeric columns are read: drop this one with ?exclude={name} or pick "
                "the features with ?columns="
            )
        return invalid(
            f"CSV column {name!r} holds {value[:60]!r} at line "
            f"{_line(bad, start)}, which is not a number{hint}; {fix}"
        )
    return invalid(f"unreadable CSV: {cause}")


def _ragged(path: Path, sep: str, width: int, cause: Exception) -> Exception:
    """The refusal for a line with another number of fields than line 1."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        for i, row in enumerate(pycsv.reader(f, delimiter=sep)):
            if row and len(row) != width:
                return invalid(
                    f"CSV line {i + 1} has {len(row)} field(s) where line 1 has {width} (read "
                    f"with delimiter {_SHOWN[sep]!r}; pass ?delimiter= if that is not the "
                    "file's): every line needs the same columns"
                )
    return invalid(f"unreadable CSV: {cause}")


def parse(path: Path, limits: Limits, options: Options | None = None) -> Parsed:
    """Parse a CSV into float64 samples (the picked columns) and optional weights."""
    options = options or Options()
    lines, blanks = _first_lines(path)
    if not lines:
        raise invalid("the CSV is empty: it needs at least one row of numbers")
    sep = options.delimiter or detect_delimiter(lines)
    first = [f.strip() for f in _fields(lines[0], sep)]
    header = has_header(first, options.header)
    if header:
        names = first
        check_names(
            names,
            "CSV",
            "Name it in line 1, or, if it is an index column (pandas writes its index without "
            "a name), write the file with to_csv(index=False)",
        )
    else:
        names = default_columns(len(first))
    sel = select(names, options, "CSV")
    check_shape(1, len(sel.features), limits)
    wanted = sel.names + ([names[sel.weights]] if sel.weights is not None else [])
    start = blanks + (2 if header else 1)  # the file line of the first data row
    read = pacsv.ReadOptions(column_names=names, skip_rows=blanks + 1 if header else 0)
    parse_opts = pacsv.ParseOptions(delimiter=sep)
    try:
        table = pacsv.read_csv(
            path,
            read_options=read,
            parse_options=parse_opts,
            convert_options=pacsv.ConvertOptions(
                include_columns=wanted,
                column_types={n: pa.float64() for n in wanted},
                null_values=[""],
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
    except pa.ArrowInvalid as e:
        text = str(e)
        if "Expected" in text and "columns" in text:
            raise _ragged(path, sep, len(names), e) from None
        if "conversion error" in text:
            raise _not_numeric(
                path, read, parse_opts, wanted, start, sep, e, options.weights
            ) from None
        raise invalid(f"unreadable CSV: {e}") from None
    except (pa.ArrowException, OSError) as e:
        raise invalid(f"unreadable CSV: {e}") from None
    check_shape(table.num_rows, len(sel.features), limits)
    for name in wanted:
        col = table.column(name)
        if col.null_count:
            row = int(pc.index(pc.is_null(col), True).as_py())
            raise invalid(
                f"CSV column {name!r} is empty at line {_line(row, start)} "
                f"({col.null_count} empty values in all): every picked column needs a number "
                "in every row"
            )
    samples = np.empty((table.num_rows, len(sel.features)), dtype=np.float64)
    for j, name in enumerate(sel.names):
        samples[:, j] = table.column(name).to_numpy()
    weights = None
    if sel.weights is not None:
        weights = table.column(names[sel.weights]).to_numpy()
        if not np.isfinite(weights).all():
            row = int(np.argmin(np.isfinite(weights)))
            raise invalid(
                f"the ?weights column {names[sel.weights]!r} is not finite at line "
                f"{_line(row, start)}"
            )
    if not all_finite(samples):
        bad = np.argwhere(~np.isfinite(samples))
        if len(bad):
            r, c = int(bad[0][0]), int(bad[0][1])
            raise invalid(
                f"samples must be finite: CSV column {sel.names[c]!r} holds the non-finite "
                f"{samples[r, c]} at line {_line(r, start)}"
            )
    wname = None if sel.weights is None else f"the ?weights column {names[sel.weights]!r}"
    return from_array(samples, weights, limits, sel.names, wname)
