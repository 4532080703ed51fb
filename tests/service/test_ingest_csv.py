"""The CSV reader: numeric columns, float64; header, delimiter, columns and weights explicit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ingestfixtures import ingest_body, refusal

from service import ingest
from service.ingest.base import MAX_ABS

LIMITS = ingest.Limits(max_n=1000, max_d=8)
CSV = ingest.format_for("text/csv; charset=utf-8")


def run(tmp: Path, text: str | bytes, limits: ingest.Limits = LIMITS, **options: str):
    return ingest_body(tmp, CSV, text, limits, **options)


def rejects(tmp: Path, text: str | bytes, *words: str, status: int = 422, **options: str) -> str:
    return refusal(tmp, CSV, text, LIMITS, status, *words, **options).detail


def test_a_column_named_weight_is_a_feature_unless_asked(tmp_path: Path) -> None:
    # The surprise: a body-weight column was silently taken as sample weights (d=2 for 3 columns).
    text = "height,weight,age\n1.8,80,30\n1.6,55,41\n"
    ds, stored = run(tmp_path, text)
    assert (ds.d, ds.columns, ds.weights) == (3, ["height", "weight", "age"], None)
    assert stored.tolist() == [[1.8, 80.0, 30.0], [1.6, 55.0, 41.0]]
    ds, stored = run(tmp_path, text, weights="weight")
    assert ds.columns == ["height", "age"] and ds.weights.tolist() == [80 / 135, 55 / 135]
    assert ds.sha256 == ingest.canonical_sha256(stored, [80, 55], ["height", "age"])


def test_a_headerless_csv_keeps_its_first_row(tmp_path: Path) -> None:
    a = np.random.default_rng(1).normal(size=(300, 3))
    text = "\n".join(",".join(repr(float(v)) for v in row) for row in a) + "\n"
    ds, stored = run(tmp_path, text)
    assert (ds.n, ds.columns) == (300, ["x0", "x1", "x2"])
    np.testing.assert_array_equal(stored, a)
    assert ds.sha256 == ingest.canonical_sha256(a)  # the same dataset as the .npy of a
    ds_false, _ = run(tmp_path, text, header="false")
    assert ds_false.sha256 == ds.sha256
    # header=true is obeyed: line 1 names the columns (numbers as names), 299 rows.
    ds_true, _ = run(tmp_path, text, header="true")
    assert ds_true.n == 299 and ds_true.columns == [repr(float(v)) for v in a[0]]


def test_float_text_round_trips_exactly(tmp_path: Path) -> None:
    a = np.random.default_rng(0).normal(size=(50, 3))
    text = "a,b,c\n" + "\n".join(",".join(repr(float(v)) for v in row) for row in a) + "\n"
    ds, stored = run(tmp_path, text)
    np.testing.assert_array_equal(stored, a)
    assert ds.sha256 == ingest.canonical_sha256(a, columns=["a", "b", "c"])


def test_a_mixed_first_line_is_refused_naming_the_header_flag(tmp_path: Path) -> None:
    detail = rejects(tmp_path, "id,1.5,2\n1,2,3\n", "line 1", "?header=true", "?header=false")
    assert "'id'" in detail


def test_a_pandas_index_column_says_how_to_fix_the_file(tmp_path: Path) -> None:
    text = ",a,b\n0,1.5,2\n1,3.5,4\n"
    rejects(tmp_path, text, "column 1", "no name", "index=False")
    ds, _ = run(tmp_path, "idx,a,b\n0,1.5,2\n1,3.5,4\n", exclude="idx")
    assert ds.columns == ["a", "b"]


def test_a_text_column_names_column_line_and_flag(tmp_path: Path) -> None:
    text = "a,label,b\n1,2,3\n4,cat,6\n"
    rejects(tmp_path, text, "'label'", "'cat'", "line 3", "?exclude=label", "?columns=")
    ds, stored = run(tmp_path, text, exclude="label")
    assert ds.columns == ["a", "b"] and stored.tolist() == [[1.0, 3.0], [4.0, 6.0]]
    ds, stored = run(tmp_path, text, columns="b,a")
    assert ds.columns == ["b", "a"] and stored.tolist() == [[3.0, 1.0], [6.0, 4.0]]


def test_a_text_weights_column_is_named(tmp_path: Path) -> None:
    rejects(tmp_path, "a,w\n1,2\n3,x\n", "'w'", "line 3", "?weights", weights="w")


@pytest.mark.parametrize("sep", [",", ";", "\t", "|"])
def test_delimiters_are_detected(tmp_path: Path, sep: str) -> None:
    text = sep.join(["a", "b", "c"]) + "\n" + sep.join(["1", "2.5", "-3"]) + "\n"
    ds, stored = run(tmp_path, text)
    assert ds.columns == ["a", "b", "c"] and stored.tolist() == [[1.0, 2.5, -3.0]]
    given_sep = {"\t": "tab"}.get(sep, sep)
    assert run(tmp_path, text, delimiter=given_sep)[0].sha256 == ds.sha256


def test_a_semicolon_file_with_decimal_commas_says_so(tmp_path: Path) -> None:
    rejects(tmp_path, "a;b\n1,5;2\n3;4\n", "'a'", "'1,5'", "line 2", "decimal comma")


def test_an_ambiguous_delimiter_is_refused_naming_the_flag(tmp_path: Path) -> None:
    rejects(tmp_path, "a,b;c|d\n1,2;3|4\n", "?delimiter=")  # never happens in real files


def test_a_given_delimiter_is_obeyed(tmp_path: Path) -> None:
    ds, stored = run(tmp_path, "a;b\n1.5;2\n", delimiter=";")
    assert stored.tolist() == [[1.5, 2.0]]
    rejects(tmp_path, "a;b\n1.5;2\n", "'a;b'", "'1.5;2'", delimiter=",")


@pytest.mark.parametrize(
    ("text", "options", "words"),
    [
        ("", {}, ("empty",)),
        ("x,y\n", {}, ("empty",)),
        ("x,y\n1,2\n3\n", {}, ("line 3", "1 field", "?delimiter=")),
        ("x,y\n1,abc\n", {}, ("'y'", "'abc'", "line 2", "?exclude=y")),
        ("x,y\n1,\n", {}, ("'y'", "empty", "line 2")),
        ("x,y\n1,nan\n", {}, ("non-finite", "'y'", "line 2")),
        ("x,y\n1,inf\n", {}, ("non-finite",)),
        ("x,x\n1,2\n", {}, ("'x'", "unique")),
        ("x,\n1,2\n", {}, ("column 2", "name")),
        ("x,w\n1,-1\n2,3\n", {"weights": "w"}, ("'w'", "negative")),
        ("x,w\n1,0\n2,0\n", {"weights": "w"}, ("'w'", "positive")),
        ("w\n1\n", {"weights": "w"}, ("no feature column", "?columns=")),
        ("x,y\n1,2\n", {"weights": "z"}, ("?weights", "'z'", "'x', 'y'")),
        ("x,y\n1,2\n", {"columns": "x,q"}, ("?columns", "'q'")),
        ("x,y\n1,2\n", {"exclude": "q"}, ("?exclude", "'q'")),
        ("x,y\n1,2\n", {"exclude": "x,y"}, ("no feature column",)),
        (b"x,y\n\xff\xfe,1\n", {}, ("csv",)),
        (b"\xff\xfe\n1\n", {}, ("utf-8",)),
    ],
)
def test_bad_csv_is_refused(
    tmp_path: Path, text: str | bytes, options: dict[str, str], words: tuple[str, ...]
) -> None:
    rejects(tmp_path, text, *words, **options)


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"columns": "a,b", "exclude": "c"}, ("not both",)),
        ({"columns": "a,a"}, ("twice",)),
        ({"columns": "a,,b"}, ("none empty",)),
        ({"weights": "a", "columns": "a,b"}, ("'a'", "?weights")),
        ({"weights": "a", "exclude": "a"}, ("'a'", "?exclude")),
        ({"header": "yes"}, ("?header", "auto, true or false")),
        ({"delimiter": ":"}, ("?delimiter", "tab")),
        ({"weights": " "}, ("?weights",)),
    ],
)
def test_bad_options_are_refused_naming_the_flag(
    tmp_path: Path, options: dict[str, str], words: tuple[str, ...]
) -> None:
    rejects(tmp_path, "a,b,c\n1,2,3\n", *words, **options)


def test_limits_are_413(tmp_path: Path) -> None:
    rejects(tmp_path, "a,b,c,d,e,f,g,h,i\n" + ",".join("1" * 9) + "\n", "d=9", status=413)
    rejects(tmp_path, "a\n" + "1\n" * 1001, "n=1001", status=413)
    # Only the picked columns count against max_d.
    wide = "a,b,c,d,e,f,g,h,i\n" + ",".join("1" * 9) + "\n"
    assert run(tmp_path, wide, columns="a,b")[0].d == 2


def test_a_byte_order_mark_is_not_part_of_the_first_name(tmp_path: Path) -> None:
    ds, stored = run(tmp_path, "\ufeffweight,x\n1,5\n3,6\n", weights="weight")
    assert stored.tolist() == [[5.0], [6.0]] and ds.weights.tolist() == [0.25, 0.75]
    ds, _ = run(tmp_path, "\ufeff1,5\n3,6\n")
    assert ds.n == 2


# -- fuzzing the options ----------------------------------------------------------------------
def _is_float(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


NAME = st.text(
    alphabet=st.characters(categories=["L", "N"], include_characters="_-."), min_size=1, max_size=8
).filter(lambda s: s[0].isalpha() and not _is_float(s))
VALUE = st.floats(
    allow_nan=False, allow_infinity=False, width=64, min_value=-MAX_ABS, max_value=MAX_ABS
)


@st.composite
def tables(draw: st.DrawFn) -> tuple[list[str], np.ndarray]:
    d = draw(st.integers(1, 5))
    names = draw(st.lists(NAME, min_size=d, max_size=d, unique=True))
    n = draw(st.integers(1, 6))
    rows = draw(st.lists(st.lists(VALUE, min_size=d, max_size=d), min_size=n, max_size=n))
    return names, np.array(rows, dtype=np.float64).reshape(n, d)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    table=tables(),
    sep=st.sampled_from([",", ";", "\t", "|"]),
    give_sep=st.booleans(),
    header=st.sampled_from(["auto", "true", "false"]),
    write_header=st.booleans(),
    pick=st.data(),
)
def test_fuzzed_options_give_the_picked_table_or_a_named_refusal(
    tmp_path: Path, table, sep, give_sep, header, write_header, pick
) -> None:
    names, a = table
    d = a.shape[1]
    lines = [sep.join(names)] if write_header else []
    lines += [sep.join(repr(float(v)) for v in row) for row in a]
    text = "\n".join(lines) + "\n"
    opts: dict[str, str] = {"header": header}
    if give_sep:
        opts["delimiter"] = {"\t": "tab"}.get(sep, sep)
    file_names = names if write_header else [f"x{j}" for j in range(d)]
    w = pick.draw(st.none() | st.sampled_from(file_names))
    rest = [c for c in file_names if c != w]
    picked = rest
    mode = pick.draw(st.sampled_from(["all", "columns", "exclude"]))
    if w is not None:
        opts["weights"] = w
    if mode == "columns" and rest:
        picked = pick.draw(st.permutations(rest))[: pick.draw(st.integers(1, len(rest)))]
        opts["columns"] = ",".join(picked)
    elif mode == "exclude" and rest:
        dropped = pick.draw(st.lists(st.sampled_from(rest), unique=True, max_size=len(rest)))
        if dropped:
            opts["exclude"] = ",".join(dropped)
            picked = [c for c in rest if c not in dropped]
    told_right = header == "auto" or (header == "true") == write_header
    try:
        ds, stored = run(tmp_path, text, **opts)
    except ingest.IngestError as e:
        assert 400 <= e.status < 500 and e.detail
        # Told the truth about the file, only its content may be refused: the weights (negative,
        # zero sum) or nothing left to read (every column excluded).
        if told_right:
            assert "weights" in e.detail or "no feature column" in e.detail, (opts, e.detail)
        return
    assert told_right or header == "true", (opts, ds.columns)  # header=true on data: obeyed
    if told_right:
        assert ds.columns == picked and ds.n == a.shape[0]
        np.testing.assert_array_equal(stored, a[:, [file_names.index(c) for c in picked]])
        if w is not None:
            col = a[:, file_names.index(w)]
            np.testing.assert_allclose(ds.weights, col / col.sum(), rtol=1e-12)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    text=st.text(alphabet=st.sampled_from(list('ab1.-e,;|\t\n "')), max_size=60),
    header=st.sampled_from(["auto", "true", "false"]),
    delimiter=st.none() | st.sampled_from([",", ";", "|", "tab"]),
    weights=st.none() | st.sampled_from(["a", "x0", "b"]),
    exclude=st.none() | st.sampled_from(["a", "x1", "a,b"]),
)
def test_any_text_with_any_options_is_read_or_refused_with_a_4xx(
    tmp_path: Path, text, header, delimiter, weights, exclude
) -> None:
    opts = {"header": header}
    if delimiter is not None:
        opts["delimiter"] = delimiter
    if weights is not None:
        opts["weights"] = weights
    if exclude is not None and exclude != weights:
        opts["exclude"] = exclude
    try:
        ds, stored = run(tmp_path, text, **opts)
    except ingest.IngestError as e:
        assert 400 <= e.status < 500 and e.detail
        return
    assert stored.shape == (ds.n, ds.d) and len(ds.columns) == ds.d
    assert np.isfinite(stored).all()


def test_leading_blank_lines_and_crlf(tmp_path: Path) -> None:
    ds, stored = run(tmp_path, "\n\na,b\r\n1,2\r\n")
    assert ds.columns == ["a", "b"] and stored.tolist() == [[1.0, 2.0]]
    rejects(tmp_path, "\n\na,b\n1,2\n3,x\n", "'b'", "line 5")
