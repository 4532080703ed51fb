"""Uploads without silent surprises, over HTTP: explicit weights, header, delimiter and columns;
column names kept, returned and part of the identity; one dataset across all five formats."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from service.ingest import canonical_sha256
from service.ingest.base import MAX_ABS
from service.store import Database
from service.store.db import MIGRATIONS

CSV = {"content-type": "text/csv"}
NPY = {"content-type": "application/x-npy"}
ARROW = {"content-type": "application/vnd.apache.arrow.stream"}
PARQUET = {"content-type": "application/vnd.apache.parquet"}


def post(api: TestClient, body: bytes | str, headers: dict, **params: str):
    return api.post("/v1/datasets", content=body, headers=headers, params=params or None)


def refused(r, *words: str) -> str:
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    detail = r.json()["detail"]
    for w in words:
        assert w.lower() in detail.lower(), detail
    return detail


def npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def arrow(t: pa.Table) -> bytes:
    buf = io.BytesIO()
    with pa.ipc.new_stream(buf, t.schema) as w:
        w.write_table(t)
    return buf.getvalue()


def parquet(t: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(t, buf)
    return buf.getvalue()


def csv_text(names: list[str], a: np.ndarray, sep: str = ",", header: bool = True) -> str:
    lines = [sep.join(names)] if header else []
    lines += [sep.join(repr(float(v)) for v in row) for row in a]
    return "\n".join(lines) + "\n"


# -- each surprise of the issue, as a test ----------------------------------------------------
def test_a_weight_column_is_a_feature_and_weights_are_only_explicit(api: TestClient) -> None:
    rng = np.random.default_rng(0)
    a = np.column_stack([rng.normal(170, 10, 50), rng.normal(70, 12, 50), rng.normal(40, 9, 50)])
    text = csv_text(["height", "weight", "age"], a)
    ds = post(api, text, CSV).json()
    assert (ds["d"], ds["weighted"], ds["columns"]) == (3, False, ["height", "weight", "age"])
    picked = post(api, text, CSV, weights="weight").json()
    assert (picked["d"], picked["weighted"], picked["columns"]) == (2, True, ["height", "age"])
    assert picked["id"] != ds["id"]


def test_a_headerless_csv_keeps_every_row(api: TestClient) -> None:
    a = np.random.default_rng(1).normal(size=(300, 3))
    ds = post(api, csv_text([], a, header=False), CSV).json()
    assert (ds["n"], ds["columns"]) == (300, ["x0", "x1", "x2"])
    same = post(api, npy(a), NPY)  # the same numbers as .npy: the same dataset
    assert same.status_code == 200 and same.json()["id"] == ds["id"]


def test_refusals_name_the_column_the_line_and_the_flag(api: TestClient) -> None:
    refused(post(api, ",a,b\n0,1.5,2\n", CSV), "column 1", "index=False")
    refused(post(api, "a,kind\n1,cat\n", CSV), "'kind'", "'cat'", "line 2", "?exclude=kind")
    refused(post(api, "a;b\n1,5;2\n", CSV), "'a'", "decimal comma")
    refused(post(api, "id,1.5\n1,2\n", CSV), "?header=true", "?header=false")
    refused(post(api, "a,b\n1,2\n", CSV, weights="w"), "?weights", "'w'", "'a', 'b'")
    refused(post(api, npy(np.ones((2, 2))), NPY, header="true"), "?header", "csv")
    refused(post(api, "a,b\n1,2\n", CSV, header="maybe"), "header")  # FastAPI's own 422


def test_semicolon_and_tab_files_are_read(api: TestClient) -> None:
    a = np.array([[1.5, 2.0], [3.0, -4.0]])
    comma = post(api, csv_text(["a", "b"], a), CSV).json()
    for sep in (";", "\t", "|"):
        r = post(api, csv_text(["a", "b"], a, sep), CSV)
        assert r.status_code == 200 and r.json()["id"] == comma["id"], r.text


def test_json_booleans_strings_and_huge_integers_are_4xx(api: TestClient) -> None:
    for body in ('{"samples": [[1, true]]}', '{"samples": [[1, "2.5"]]}'):
        refused(
            api.post("/v1/datasets", content=body, headers={"content-type": "application/json"})
        )
    huge = '{"samples": [[' + "1" * 4300 + "]]}"
    r = api.post("/v1/datasets", content=huge, headers={"content-type": "application/json"})
    refused(r, "4300 digits", "float64")


# -- names: kept, returned, part of the identity ----------------------------------------------
def test_names_are_part_of_the_identity(api: TestClient) -> None:
    a = np.array([[1.0, 2.0], [3.0, 4.0]])
    ab = post(api, csv_text(["a", "b"], a), CSV)
    uv = post(api, csv_text(["u", "v"], a), CSV)
    assert ab.status_code == uv.status_code == 201 and ab.json()["id"] != uv.json()["id"]
    assert ab.json()["sha256"] == canonical_sha256(a, columns=["a", "b"])
    again = api.post("/v1/datasets", json={"samples": a.tolist(), "columns": ["a", "b"]})
    assert again.status_code == 200 and again.json()["id"] == ab.json()["id"]
    assert api.get(f"/v1/datasets/{uv.json()['id']}").json()["columns"] == ["u", "v"]
    # Reordered columns are other data too.
    ba = post(api, csv_text(["a", "b"], a), CSV, columns="b,a").json()
    assert ba["columns"] == ["b", "a"] and ba["id"] not in (ab.json()["id"], uv.json()["id"])


def test_parquet_upload(api: TestClient) -> None:
    t = pa.table({"idx": [0, 1, 2], "x": [1.0, 2.0, 3.0], "y": [0.5, 0.25, 0.0], "w": [1, 1, 2]})
    r = post(api, parquet(t), PARQUET, exclude="idx", weights="w")
    assert r.status_code == 201, r.text
    ds = r.json()
    assert (ds["n"], ds["d"], ds["weighted"], ds["columns"]) == (3, 2, True, ["x", "y"])
    nulls = pa.table({"x": pa.array([1.0, None])})
    refused(post(api, parquet(nulls), PARQUET), "'x'", "null", "row 1")


# -- one table, five formats, one dataset -----------------------------------------------------
NAME = st.from_regex(r"[a-z][a-z0-9_]{0,6}", fullmatch=True)


@st.composite
def tables(draw: st.DrawFn) -> tuple[list[str] | None, np.ndarray]:
    d = draw(st.integers(1, 4))
    n = draw(st.integers(1, 8))
    floats = st.floats(
        allow_nan=False, allow_infinity=False, width=64, min_value=-MAX_ABS, max_value=MAX_ABS
    )
    rows = draw(st.lists(st.lists(floats, min_size=d, max_size=d), min_size=n, max_size=n))
    named = draw(st.booleans())
    names = draw(st.lists(NAME, min_size=d, max_size=d, unique=True)) if named else None
    return names, np.array(rows, dtype=np.float64).reshape(n, d)


@hsettings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(table=tables())
def test_the_same_table_in_every_format_is_one_dataset(api: TestClient, table) -> None:
    names, a = table
    cols = names or [f"x{j}" for j in range(a.shape[1])]
    t = pa.table({cols[j]: a[:, j] for j in range(a.shape[1])})
    answers = [
        post(api, csv_text(cols, a), CSV),
        api.post("/v1/datasets", json={"samples": a.tolist(), "columns": cols}),
        post(api, arrow(t), ARROW),
        post(api, parquet(t), PARQUET),
    ]
    if names is None:  # .npy has no names: its columns are x0 … x{d-1}
        answers.append(post(api, npy(a), NPY))
        answers.append(post(api, csv_text(cols, a, header=False), CSV))
    for r in answers:
        assert r.status_code in (200, 201), r.text
    got = {(r.json()["id"], r.json()["sha256"], tuple(r.json()["columns"])) for r in answers}
    assert got == {(answers[0].json()["id"], canonical_sha256(a, columns=cols), tuple(cols))}


# -- the migration ----------------------------------------------------------------------------
def test_migration_0002_names_the_columns_of_older_rows(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    db = Database(url)
    with db.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
        conn.execute(
            sa.text(
                "INSERT INTO datasets (id, name, n, d, dtype, weighted, sha256, bytes, created_at)"
                " VALUES ('ds_old', NULL, 2, 3, 'float64', 0, :sha, 48, '2026-01-01 00:00:00')"
            ),
            {"sha": "0" * 64},
        )
    db.migrate()
    with db.engine.connect() as conn:
        (cols,) = conn.execute(sa.text("SELECT columns FROM datasets")).one()
    assert json.loads(cols) == ["x0", "x1", "x2"]
    with db.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0001")
    db.dispose()
