"""The Python client against the in-process app: uploads in every form, errors, waiting."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy import update

from service.client import (
    Client,
    EstimateCancelled,
    EstimateFailed,
    LipwassError,
    parse_sse,
)
from service.store import EstimateRow


@pytest.fixture
def client(api):
    return Client("http://testserver", http=api)


def test_upload_array_streams_npy_and_dedups(client):
    x = np.random.default_rng(0).normal(size=(20, 3))
    first = client.upload(x, name="x")
    assert (first["n"], first["d"], first["weighted"], first["name"]) == (20, 3, False, "x")
    again = client.upload(x.astype(np.float64))
    assert again["id"] == first["id"]


def test_upload_files_in_each_format_is_one_dataset(client, tmp_path):
    x = np.arange(12, dtype=np.float64).reshape(4, 3) / 7
    np.save(tmp_path / "x.npy", x)
    np.savetxt(tmp_path / "x.csv", x, delimiter=",", header="x0,x1,x2", comments="", fmt="%.17g")
    (tmp_path / "x.json").write_text(json.dumps({"samples": x.tolist()}))
    pq.write_table(pa.table({f"x{j}": x[:, j] for j in range(3)}), tmp_path / "x.parquet")
    exts = ("npy", "csv", "json", "parquet")
    ids = {client.upload(tmp_path / f"x.{ext}")["id"] for ext in exts}
    assert len(ids) == 1


@pytest.mark.parametrize("kind", ["pandas", "polars", "pyarrow"])
def test_upload_a_frame_keeps_its_names(client, tmp_path, kind):
    import pandas as pd
    import polars as pl

    x = np.random.default_rng(4).normal(size=(30, 3))
    data = {"height": x[:, 0], "weight": x[:, 1], "w": np.arange(1.0, 31.0)}
    frame = {"pandas": pd.DataFrame, "polars": pl.DataFrame, "pyarrow": pa.table}[kind](data)
    ds = client.upload(frame)
    assert ds["columns"] == ["height", "weight", "w"] and ds["weighted"] is False
    picked = client.upload(frame, weights="w")
    assert picked["columns"] == ["height", "weight"] and picked["weighted"] is True
    # The same table as a CSV file with the same names and options: the same dataset.
    csv = tmp_path / "t.csv"
    rows = "\n".join(
        ",".join(repr(float(v)) for v in r) for r in np.column_stack(list(data.values()))
    )
    csv.write_text("height,weight,w\n" + rows + "\n")
    assert client.upload(csv, weights="w")["id"] == picked["id"]
    only = client.upload(frame, columns=["weight"])
    assert only["columns"] == ["weight"]


def test_upload_a_frame_with_a_weights_array(client):
    t = pa.table({"weight": [1.0, 2.0, 3.0]})  # a feature named weight; the weights beside it
    ds = client.upload(t, weights=[1, 1, 2])
    assert ds["columns"] == ["weight"] and ds["weighted"] is True


def test_upload_options_reach_the_server(client, tmp_path):
    f = tmp_path / "t.csv"
    f.write_text("1;2\n3;4\n")
    ds = client.upload(f, header="false", delimiter=";")
    assert (ds["n"], ds["columns"]) == (2, ["x0", "x1"])
    with pytest.raises(LipwassError) as e:
        client.upload(f, header="true", columns="q")
    assert e.value.status == 422 and "'q'" in e.value.detail
    with pytest.raises(TypeError):
        client.upload(f, sep=";")


def test_estimate_refuses_sets_with_other_named_columns(client, recording):
    x = pa.table({"a": [1.0, 2.0], "b": [0.0, 1.0]})
    y = pa.table({"b": [1.0, 2.0], "a": [0.0, 1.0]})
    with pytest.raises(ValueError, match="different columns"):
        client.estimate(x, y, wait=False)
    assert client.estimate(x, np.ones((3, 2)), wait=False)["status"] == "queued"


def test_upload_with_weights_goes_as_arrow(client):
    x = np.random.default_rng(1).normal(size=(6, 2))
    ds = client.upload(x, weights=[1, 2, 3, 0, 1, 1])
    assert ds["weighted"] is True and ds["n"] == 6


def test_upload_refuses_unknown_suffix_and_missing_file(client, tmp_path):
    (tmp_path / "x.txt").write_text("1,2")
    with pytest.raises(ValueError, match="unknown file type"):
        client.upload(tmp_path / "x.txt")
    with pytest.raises(FileNotFoundError):
        client.upload(tmp_path / "nope.npy")


def test_problem_json_becomes_lipwass_error(client):
    with pytest.raises(LipwassError) as info:
        client.upload(np.array([[1.0, np.nan]]))
    assert info.value.status == 422 and "finite" in (info.value.detail or "")
    with pytest.raises(LipwassError) as info:
        client.get("est_nope")
    assert info.value.status == 404 and info.value.title


def test_transport_error_is_a_lipwass_error():
    with Client("http://127.0.0.1:9", timeout=2) as c, pytest.raises(LipwassError) as info:
        c.get("est_x")
    assert info.value.status == 0


def _finish(api, est_id: str, **values) -> None:
    with api.app.state.db.session() as s:
        s.execute(update(EstimateRow).where(EstimateRow.id == est_id).values(**values))


def test_estimate_submits_and_waits(client, api, recording):
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(10, 2)), rng.normal(size=(12, 2))
    est = client.estimate(x, y, method="lipschitz", wait=False, seed=3, config={"steps": 5})
    assert est["status"] == "queued" and recording.submitted == [est["id"]]
    assert est["method"] == "lipschitz"
    result = {"method": "lipschitz", "w1": 1.25, "device": "cpu", "seconds": 0.1, "steps": 5}
    _finish(api, est["id"], status="succeeded", result=result)
    done = client.wait(est["id"])
    assert done["status"] == "succeeded" and done["result"]["w1"] == 1.25


def test_estimate_accepts_dataset_ids(client, recording):
    x = client.upload(np.ones((3, 2)))["id"]
    est = client.estimate(x, x, wait=False)
    assert est["source"] == x and est["target"] == x


def test_wait_raises_on_cancelled_and_failed(client, api):
    a = client.upload(np.zeros((3, 1)))["id"]
    b = client.upload(np.ones((3, 1)))["id"]
    est = client.submit(a, b)
    assert client.cancel(est["id"])["status"] == "cancelled"
    with pytest.raises(EstimateCancelled):
        client.wait(est["id"])
    est = client.submit(a, b, seed=1)
    _finish(
        api,
        est["id"],
        status="failed",
        error={"type": "diverged", "title": "Training diverged", "detail": "nan"},
    )
    with pytest.raises(EstimateFailed) as info:
        client.wait(est["id"])
    assert info.value.title == "Training diverged" and info.value.estimate["id"] == est["id"]


def test_wait_times_out_on_a_queued_job(client):
    a = client.upload(np.zeros((3, 1)))["id"]
    est = client.submit(a, a)
    with pytest.raises(TimeoutError):
        client.wait(est["id"], timeout=0.3, poll_s=0.05, follow=False)


def test_parse_sse():
    lines = [": hi", "event: progress", 'data: {"step": 1}', "", "data: plain", "", ""]
    assert list(parse_sse(iter(lines))) == [("progress", {"step": 1}), ("message", "plain")]
