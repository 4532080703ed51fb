"""The `lipwass` CLI in-process: file loading (every upload format), estimate, exact, migrate."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from service import cli, ingest

TINY = ["--steps", "30", "--width", "16", "--depth", "2", "--batch-size", "64"]


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    monkeypatch.setenv("LIPWASS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("LIPWASS_SERVER", raising=False)
    monkeypatch.chdir(tmp_path)


def _files(tmp_path: Path, x: np.ndarray, w: np.ndarray | None = None) -> dict[str, Path]:
    out = {"npy": tmp_path / "x.npy", "csv": tmp_path / "x.csv", "json": tmp_path / "x.json"}
    np.save(out["npy"], x)
    cols = [f"c{j}" for j in range(x.shape[1])]
    table = np.column_stack([x, w]) if w is not None else x
    header = ",".join(cols + (["weight"] if w is not None else []))
    np.savetxt(out["csv"], table, delimiter=",", header=header, comments="", fmt="%.17g")
    doc = {"samples": x.tolist(), **({"weights": w.tolist()} if w is not None else {})}
    out["json"].write_text(json.dumps(doc))
    arrays = {c: x[:, j] for j, c in enumerate(cols)}
    if w is not None:
        arrays["weight"] = w
    out["arrow"] = tmp_path / "x.arrow"
    t = pa.table(arrays)
    with pa.OSFile(str(out["arrow"]), "wb") as f, pa.ipc.new_stream(f, t.schema) as wr:
        wr.write_table(t)
    return out


def test_load_dataset_reads_every_upload_format_alike(tmp_path):
    x = np.random.default_rng(0).normal(size=(7, 3))
    w = np.arange(1.0, 8.0)
    files = _files(tmp_path, x, w)
    by_column = ingest.Options(weights="weight")
    for fmt, options in (("csv", by_column), ("json", None), ("arrow", by_column)):
        s, weights = cli.load_dataset(files[fmt], options=options)
        np.testing.assert_array_equal(s, x)
        np.testing.assert_allclose(weights, w / w.sum())
    s, weights = cli.load_dataset(files["csv"])  # without --weights: a feature like any other
    assert s.shape == (7, 4) and weights is None
    s, weights = cli.load_dataset(files["npy"])
    np.testing.assert_array_equal(s, x)
    assert weights is None


def test_load_dataset_refuses_like_the_upload(tmp_path):
    np.save(tmp_path / "bad.npy", np.array([[1.0, np.inf]]))
    with pytest.raises(ValueError, match="finite"):
        cli.load_dataset(tmp_path / "bad.npy")
    np.save(tmp_path / "ints.npy", np.array([[1, 2]]))
    with pytest.raises(ValueError, match="dtype"):
        cli.load_dataset(tmp_path / "ints.npy")
    with pytest.raises(ValueError, match="unknown file type"):
        cli.load_dataset(tmp_path / "x.txt")


def test_estimate_in_process_json_with_crosscheck(tmp_path, capsys):
    rng = np.random.default_rng(1)
    np.save(tmp_path / "a.npy", rng.normal(size=(60, 2)))
    np.save(tmp_path / "b.npy", rng.normal(size=(50, 2)) + [1.5, 0.0])
    argv = ["estimate", "a.npy", "b.npy", "--method", "lipschitz", "--json", "-q", *TINY]
    argv += ["--report", "r.png", "--potential", "f.safetensors"]
    assert cli.main(argv) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["method"] == "lipschitz" and res["w1"] == res["lower_bound"]
    assert res["exact"]["solver"] == "pot.emd2"
    assert res["lower_bound"] <= res["exact"]["value"] * (1 + 1e-9)
    assert res["relative_gap"] >= -1e-9
    assert res["holdout"]["n_source"] == 12 and res["steps"] <= 30
    assert res["config"]["width"] == 16
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"
    import lipcore

    model = lipcore.load_potential(tmp_path / "f.safetensors")
    x = np.load(tmp_path / "a.npy")
    y = np.load(tmp_path / "b.npy")
    fx, fy = lipcore.evaluate(model, x, chunk=64), lipcore.evaluate(model, y, chunk=64)
    c = (fx.mean() + fy.mean()) / 2  # the centre, recomputed
    assert abs(c - res["potential_center"]) < 1e-9


def test_estimate_exact_small_is_tested_and_prints_the_answer_first(tmp_path, capsys):
    np.save(tmp_path / "a.npy", np.array([[0.0], [1.0]]))
    np.save(tmp_path / "b.npy", np.array([[2.0], [3.0]]))
    assert cli.main(["estimate", "a.npy", "b.npy", "--method", "exact", "-q"]) == 0
    out = capsys.readouterr().out
    # 4 points: the exact W1 under relabelling cannot reach p <= 0.05 (2 of 6 splits tie).
    assert out.splitlines()[0].startswith("no detectable difference (p = ")
    assert "method" in out and "exact" in out and "closed_form_1d" in out
    line = next(ln for ln in out.splitlines() if ln.startswith("w1"))
    assert float(line.split()[1]) == pytest.approx(2.0)


def test_exact_json_and_bad_input_exit_codes(tmp_path, capsys):
    np.save(tmp_path / "a.npy", np.zeros((4, 2)))
    np.save(tmp_path / "b.npy", np.ones((3, 2)))
    np.save(tmp_path / "c.npy", np.ones((3, 3)))
    assert cli.main(["exact", "a.npy", "b.npy", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["w1"] == pytest.approx(np.sqrt(2)) and doc["solver"] == "pot.emd2"
    assert cli.main(["exact", "a.npy", "c.npy"]) == 2
    assert "d=2 columns ['x0', 'x1']" in capsys.readouterr().err
    assert cli.main(["exact", "a.npy", "b.npy", "--max-pairs", "5"]) == 2
    assert cli.main(["estimate", "a.npy", "missing.npy"]) == 2
    assert "no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["estimate", "a.npy", "b.npy", "--method", "bogus"])


def test_estimate_with_unreachable_server_fails_cleanly(tmp_path, capsys):
    np.save(tmp_path / "a.npy", np.zeros((4, 2)))
    argv = ["estimate", "a.npy", "a.npy", "--server", "http://127.0.0.1:9", "--timeout", "2"]
    assert cli.main(argv) == 1
    assert "Transport error" in capsys.readouterr().err


def test_migrate_creates_the_database(tmp_path):
    assert cli.main(["migrate", "--data-dir", str(tmp_path / "d2")]) == 0
    assert (tmp_path / "d2" / "lipwass.db").exists()


def test_progress_bar_terminal_and_log_modes():
    log = io.StringIO()
    bar = cli.ProgressBar(log)
    for step in range(0, 101, 5):
        bar({"step": step, "total_steps": 100, "objective": 0.5, "elapsed_s": 1.0})
    lines = log.getvalue().splitlines()
    assert len(lines) == 11 and lines[-1].startswith("100%")

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty = Tty()
    bar = cli.ProgressBar(tty, width=10)
    bar({"step": 5, "total_steps": 10, "objective": None, "elapsed_s": 0.0})
    bar.close()
    assert tty.getvalue().startswith("\r[#####-----]  50%") and tty.getvalue().endswith("\n")


def test_format_result_names_the_guarantees():
    text = cli.format_result(
        {"method": "lipschitz", "w1": 1.0, "lower_bound": 1.0, "lipschitz_constant": 0.9,
         "holdout": {"value": 1.1, "ci95": [0.9, 1.3], "n_source": 5, "n_target": 6},
         "exact": {"value": 1.05, "solver": "pot.emd2", "seconds": 0.01}, "relative_gap": 0.0476,
         "device": "cpu", "seconds": 1.0, "steps": 30},
        "est_1",
    )  # fmt: skip
    assert "est_1" in text and "certified" in text and "95% CI [0.9, 1.3]" in text
    assert "4.76 %" in text
    assert text.splitlines()[0].startswith("no two-sample test: empirical W1")


def test_format_result_answers_first_and_notes_last():
    text = cli.format_result(
        {"method": "lipschitz", "w1": 3.5, "lower_bound": 3.5, "lipschitz_constant": 1.0,
         "verdict": {"differ": True, "alpha": 0.05, "p_value": 0.000999, "permutations": 1000,
                     "test": "heldout-potential-permutation",
                     "summary": "differ (p < 0.001): distance 0.47, 95 % CI [0.39, 0.55]"},
         "distance": {"value": 0.47, "ci95": [0.39, 0.55], "kind": "distribution"},
         "noise_floor": {"value": 3.4, "of": "exact", "permutations": 5},
         "notes": ["the empirical W1 (3.5) is dominated by sampling noise"],
         "device": "cpu", "seconds": 1.0, "steps": 30},
    )  # fmt: skip
    lines = text.splitlines()
    assert lines[0] == "differ (p < 0.001): distance 0.47, 95 % CI [0.39, 0.55]"
    assert lines[1].startswith("distance") and "held-out" in lines[1]
    assert any(ln.startswith("noise_floor  ") or ln.startswith("noise_floor ") for ln in lines)
    assert lines[-1] == "note: the empirical W1 (3.5) is dominated by sampling noise"


def _csv(path: Path, names: list[str] | None, a: np.ndarray, sep: str = ",") -> None:
    lines = [sep.join(names)] if names else []
    lines += [sep.join(repr(float(v)) for v in row) for row in a]
    path.write_text("\n".join(lines) + "\n")


def test_column_and_weight_flags_nothing_implicit(tmp_path, capsys):
    rng = np.random.default_rng(5)
    people = np.column_stack(
        [rng.normal(170, 9, 40), rng.normal(70, 10, 40), rng.normal(40, 8, 40)]
    )
    others = people + [5.0, 0.0, 0.0]
    _csv(tmp_path / "p.csv", ["height", "weight", "age"], people)
    _csv(tmp_path / "q.csv", ["height", "weight", "age"], others)
    # A weight column is a feature: the exact W1 over the 3 columns, not 2 columns reweighted.
    assert cli.main(["exact", "p.csv", "q.csv", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["d"] == 3 and doc["w1"] == pytest.approx(5.0)
    assert cli.main(["exact", "p.csv", "q.csv", "--json", "--weights", "weight"]) == 0
    assert json.loads(capsys.readouterr().out)["d"] == 2
    assert cli.main(["exact", "p.csv", "q.csv", "--json", "--columns", "age,height"]) == 0
    assert json.loads(capsys.readouterr().out)["d"] == 2
    # Headerless, semicolons: every row kept.
    _csv(tmp_path / "r.csv", None, people, sep=";")
    _csv(tmp_path / "s.csv", None, others, sep=";")
    assert cli.main(["exact", "r.csv", "s.csv", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["n"], doc["d"]) == (40, 3) and doc["w1"] == pytest.approx(5.0)
    assert (
        cli.main(["exact", "r.csv", "s.csv", "--json", "--header", "false", "--delimiter", ";"])
        == 0
    )
    capsys.readouterr()


def test_column_flag_errors_name_the_flag_and_the_columns(tmp_path, capsys):
    _csv(tmp_path / "p.csv", ["a", "b"], np.ones((3, 2)))
    _csv(tmp_path / "q.csv", ["b", "a"], np.zeros((3, 2)))
    assert cli.main(["exact", "p.csv", "q.csv"]) == 2
    err = capsys.readouterr().err
    assert "['a', 'b']" in err and "['b', 'a']" in err and "--columns" in err
    assert cli.main(["exact", "p.csv", "q.csv", "--columns", "a,b"]) == 0
    capsys.readouterr()
    assert cli.main(["exact", "p.csv", "q.csv", "--weights", "w"]) == 2
    assert "'w'" in capsys.readouterr().err
    assert cli.main(["exact", "p.csv", "q.csv", "--columns", "a", "--exclude", "b"]) == 2
    assert "not both" in capsys.readouterr().err
    assert cli.main(["exact", "p.csv", "q.csv", "--delimiter", ":"]) == 2
    assert "--delimiter" in capsys.readouterr().err


def test_parquet_files(tmp_path, capsys):
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"u": [0.0, 1.0], "v": [0.0, 0.0]}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"u": [0.0, 1.0], "v": [3.0, 3.0]}), tmp_path / "b.parquet")
    assert cli.main(["exact", "a.parquet", "b.parquet", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["w1"] == pytest.approx(3.0)


def test_format_result_says_which_potential_was_kept():
    base = {"method": "lipschitz", "w1": 1.0, "lower_bound": 1.0, "lipschitz_constant": 1.0,
            "device": "cpu", "seconds": 1.0, "steps": 30}  # fmt: skip
    envelope = {"side": "source", "anchors": 512, "validation": {"network": 0.9, "source:512": 1}}
    text = cli.format_result({**base, "diagnostics": {"envelope": envelope}})
    (line,) = [ln for ln in text.splitlines() if ln.startswith("potential ")]
    assert line.split(None, 1)[1].startswith("source envelope over 512 anchors")
    network = {"side": None, "anchors": 0, "validation": {"network": 1.0}}
    text = cli.format_result({**base, "diagnostics": {"envelope": network}})
    assert any(ln.startswith("potential") and "network" in ln for ln in text.splitlines())
