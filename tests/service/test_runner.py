"""run_job end to end, in-process, on tiny data: results per the shared contract, failures with
clear errors, cancel, time-out, a lost lease, and the same result on every attempt."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from jobfixtures import TINY, add_dataset, add_estimate, get_row, open_store, shifted_pair
from sqlalchemy import update

import lipcore
from service.blobs import BlobStore
from service.runner import run_job
from service.settings import Settings
from service.store import Database, EstimateRow, jobs

RESULT_KEYS = {
    "method", "verdict", "distance", "features", "notes", "noise_floor", "w1", "lower_bound",
    "upper_bound", "bracket_width", "scale",
    "lipschitz_constant", "holdout", "exact", "relative_gap", "diagnostics",
    "potential_center", "device", "seconds", "steps", "config",
}  # fmt: skip
LONG = {**TINY, "steps": 5000, "patience": 0, "progress_every": 1}


def make_settings(tmp_path: Path, **kw: object) -> Settings:
    base: dict[str, object] = {"data_dir": tmp_path / "data", "progress_interval_s": 0.0}
    base.update(kw)
    return Settings(_env_file=None, **base)


@pytest.fixture
def env(tmp_path: Path) -> tuple[Settings, Database, BlobStore]:
    s = make_settings(tmp_path)
    db, blobs = open_store(s)
    yield s, db, blobs
    db.dispose()


@pytest.fixture
def pair2d(env: tuple[Settings, Database, BlobStore]) -> tuple[str, str, np.ndarray, np.ndarray]:
    _, db, blobs = env
    x, y = shifted_pair(80, 2, 1.0)
    return add_dataset(db, blobs, x), add_dataset(db, blobs, y), x, y


def below(lb: float, exact: float) -> bool:
    return lb <= exact * (1 + 1e-9) + 1e-12


def test_lipschitz_with_crosscheck_matches_contract(env, pair2d) -> None:
    settings, db, blobs = env
    sx, sy, x, y = pair2d
    est = add_estimate(db, sx, sy, crosscheck="auto", seed=3)
    run_job(est, settings)
    row = get_row(db, est)
    assert row.status == "succeeded" and row.attempt == 1 and row.error is None
    r = row.result
    assert set(r) == RESULT_KEYS
    assert r["method"] == "lipschitz" and r["w1"] == r["lower_bound"]
    assert r["exact"]["solver"] == "pot.emd2" and r["exact"]["seconds"] >= 0
    assert r["exact"]["value"] == pytest.approx(lipcore.exact_w1(x, y), rel=1e-12)
    assert r["lower_bound"] > 0 and below(r["lower_bound"], r["exact"]["value"])
    # The certified bracket holds around the exact value; the features carry their names.
    assert r["exact"]["value"] <= r["upper_bound"]
    assert r["bracket_width"] == pytest.approx(1 - r["lower_bound"] / r["upper_bound"])
    assert sorted(f["name"] for f in r["features"]) == ["x0", "x1"]
    gap = (r["exact"]["value"] - r["lower_bound"]) / r["exact"]["value"]
    assert r["relative_gap"] == pytest.approx(gap) and r["relative_gap"] >= -1e-9
    assert r["lipschitz_constant"] > 0 and r["steps"] == 30 and r["device"] == "cpu"
    assert r["config"] == lipcore.EstimatorConfig.from_dict(TINY).to_dict()
    assert set(r["holdout"]) == {"value", "ci95", "n_source", "n_target"}
    assert r["holdout"]["n_source"] == 16 and len(r["holdout"]["ci95"]) == 2
    assert set(r["diagnostics"]["grad_norm"]) == {"q05", "q50", "q95"}
    # Progress and history were persisted; history ends at the last step.
    assert row.progress["step"] == 30 and row.progress["total_steps"] == 30
    assert row.history[-1][0] == 30 and len(row.history) == 3
    # The potential file: loadable, certified constant in its metadata, centre as reported.
    path = blobs.potential_path(est)
    meta = lipcore.read_potential_metadata(path)
    assert meta["lipschitz_constant"] == pytest.approx(r["lipschitz_constant"])
    f = lipcore.load_potential(path).double()
    with torch.no_grad():
        fx = f(torch.from_numpy(x))[:, 0].numpy()
        fy = f(torch.from_numpy(y))[:, 0].numpy()
    assert r["potential_center"] == pytest.approx((fx.mean() + fy.mean()) / 2, abs=1e-9)
    assert (fx.mean() - fy.mean()) / r["lipschitz_constant"] == pytest.approx(r["lower_bound"])


def test_exact_and_auto(env, pair2d, tmp_path: Path) -> None:
    settings, db, blobs = env
    sx, sy, x, y = pair2d
    want = lipcore.exact_w1(x, y)
    est = add_estimate(db, sx, sy, method="exact")
    run_job(est, settings)
    row = get_row(db, est)
    assert row.status == "succeeded", row.error
    r = row.result
    assert r["method"] == "exact" and r["w1"] == pytest.approx(want, rel=1e-12)
    assert r["lower_bound"] is None and r["config"] is None and r["steps"] == 0
    assert r["distance"] is None and not blobs.potential_path(est).exists()
    # Small enough: the exact W1 is tested by relabelling; its median is the noise floor.
    assert r["verdict"]["test"] == "exact-w1-permutation" and r["verdict"]["permutations"] == 200
    assert r["noise_floor"]["value"] > 0 and r["noise_floor"]["permutations"] == 200
    # auto answers with the potential (test and distance), cross-checked by the exact solver.
    est = add_estimate(db, sx, sy, method="auto", crosscheck="auto")
    run_job(est, settings)
    row = get_row(db, est)
    assert row.status == "succeeded", row.error
    r = row.result
    assert r["method"] == "lipschitz" and r["exact"]["value"] == pytest.approx(want, rel=1e-12)
    assert r["verdict"]["test"] == "heldout-potential-permutation"
    assert r["distance"]["kind"] == "distribution" and r["noise_floor"]["permutations"] == 5
    assert r["verdict"]["summary"].startswith(("differ", "no detectable"))
    assert blobs.potential_path(est).exists()
    # auto above the pair limit: lipschitz, and crosscheck auto then skips the exact solve.
    small = make_settings(tmp_path, exact_max_pairs=100)
    est = add_estimate(db, sx, sy, method="auto", crosscheck="auto")
    run_job(est, small)
    r = get_row(db, est).result
    assert r["method"] == "lipschitz" and r["exact"] is None and r["relative_gap"] is None
    assert blobs.potential_path(est).exists()


def test_weighted_1d_uses_closed_form_and_stays_below(env) -> None:
    settings, db, blobs = env
    # Source: 90 % of the mass at 0 and 10 % at 1; target: all at 0 -> W1 = 0.1 exactly.
    sx = add_dataset(db, blobs, np.array([0.0, 1.0]), np.array([9.0, 1.0]))
    sy = add_dataset(db, blobs, np.array([0.0]))
    est = add_estimate(db, sx, sy, crosscheck="always", holdout=0.0)
    run_job(est, settings)
    row = get_row(db, est)
    assert row.status == "succeeded", row.error
    r = row.result
    assert r["exact"]["solver"] == "closed_form_1d"
    assert r["exact"]["value"] == pytest.approx(0.1, abs=1e-12)
    assert below(r["lower_bound"], 0.1) and r["holdout"] is None


def test_crosscheck_always_too_large_fails_before_training(env, pair2d, tmp_path: Path) -> None:
    _, db, _ = env
    sx, sy, _, _ = pair2d
    est = add_estimate(db, sx, sy, crosscheck="always")
    t0 = time.perf_counter()
    run_job(est, make_settings(tmp_path, exact_max_pairs=100))
    row = get_row(db, est)
    assert row.status == "failed" and row.error["type"] == "exact_too_large"
    assert "exact_max_pairs" in row.error["detail"] and row.progress is None
    assert time.perf_counter() - t0 < 10


@pytest.mark.parametrize(
    ("config", "needle"),
    [({"width": 3}, "config.width"), ({"nope": 1}, "unknown keys")],
)
def test_bad_config_fails_with_a_clear_error(env, pair2d, config: dict, needle: str) -> None:
    settings, db, _ = env
    sx, sy, _, _ = pair2d
    est = add_estimate(db, sx, sy, config=config)
    run_job(est, settings)
    row = get_row(db, est)
    assert row.status == "failed" and row.result is None
    assert row.error["type"] == "invalid_config" and needle in row.error["detail"]
    assert set(row.error) == {"type", "title", "detail"}


def test_missing_dataset_blob_fails_clearly(env, pair2d) -> None:
    settings, db, blobs = env
    sx, sy, _, _ = pair2d
    est = add_estimate(db, sx, sy)
    from service.store import DatasetRow

    with db.session() as s:
        blobs.delete_dataset(s.get(DatasetRow, sy).sha256)
    run_job(est, settings)
    row = get_row(db, est)
    assert row.status == "failed" and row.error["type"] == "dataset_missing"


def test_unexpected_exception_fails_with_its_message(env, pair2d, monkeypatch) -> None:
    settings, db, _ = env
    sx, sy, _, _ = pair2d

    def boom(*a: object, **k: object) -> float:
        raise RuntimeError("solver exploded")

    monkeypatch.setattr(lipcore, "exact_w1", boom)
    est = add_estimate(db, sx, sy, method="exact")
    run_job(est, settings)
    row = get_row(db, est)
    assert row.status == "failed" and row.error["type"] == "internal"
    assert "solver exploded" in row.error["detail"]


def test_non_finite_result_fails_instead_of_storing_nan(env, pair2d, monkeypatch) -> None:
    settings, db, _ = env
    sx, sy, _, _ = pair2d
    monkeypatch.setattr(lipcore, "exact_w1", lambda *a, **k: float("nan"))
    est = add_estimate(db, sx, sy, method="exact")
    run_job(est, settings)
    row = get_row(db, est)
    assert row.status == "failed" and row.error["type"] == "non_finite"
    assert "result.w1" in row.error["detail"] and row.result is None


def _when_running(db: Database, est: str, action, timeout: float = 60) -> threading.Thread:
    """Run ``action()`` in a thread once the job has reported progress."""

    def go() -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            row = get_row(db, est)
            if row.progress is not None:
                action()
                return
            time.sleep(0.05)

    t = threading.Thread(target=go, daemon=True)
    t.start()
    return t


def test_cancel_mid_run_ends_cancelled(env, pair2d) -> None:
    settings, db, _ = env
    sx, sy, _, _ = pair2d
    est = add_estimate(db, sx, sy, config=LONG)
    t = _when_running(db, est, lambda: jobs.request_cancel(db, est))
    t0 = time.perf_counter()
    run_job(est, settings)
    t.join(5)
    row = get_row(db, est)
    assert row.status == "cancelled" and row.result is None
    assert row.progress["step"] < 5000
    assert time.perf_counter() - t0 < 60


def test_cancel_in_a_non_interruptible_phase_is_written_by_the_heartbeat(
    env, pair2d, tmp_path: Path, monkeypatch
) -> None:
    _, db, _ = env
    sx, sy, x, y = pair2d
    settings = make_settings(tmp_path, heartbeat_s=0.1, cancel_grace_s=0.3)
    ended = threading.Event()
    real = lipcore.exact_w1

    def slow_exact(*a: object, **k: object) -> float:
        ended.wait(20)  # the exact solve 'hangs' until the row shows cancelled
        return real(*a, **k)

    monkeypatch.setattr(lipcore, "exact_w1", slow_exact)
    est = add_estimate(db, sx, sy, method="exact")

    def watch() -> None:
        while get_row(db, est).status == "queued":
            time.sleep(0.02)
        jobs.request_cancel(db, est)
        while get_row(db, est).status == "running":
            time.sleep(0.05)
        ended.set()

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    run_job(est, settings)
    t.join(5)
    assert ended.is_set()
    row = get_row(db, est)
    assert row.status == "cancelled" and row.result is None


def test_time_limit_fails_the_job(env, pair2d, tmp_path: Path) -> None:
    _, db, _ = env
    sx, sy, _, _ = pair2d
    est = add_estimate(db, sx, sy, config=LONG)
    run_job(est, make_settings(tmp_path, job_timeout_s=0.5))
    row = get_row(db, est)
    assert row.status == "failed" and row.error["type"] == "timeout"
    assert "job_timeout_s" in row.error["detail"]


def test_lost_lease_abandons_without_writing(env, pair2d) -> None:
    settings, db, _ = env
    sx, sy, _, _ = pair2d
    est = add_estimate(db, sx, sy, config=LONG)
    stolen: list[int] = []

    def steal() -> None:
        # Another worker took the job over (as after a lease expiry): attempt + 1, its lease.
        with db.session() as s:
            s.execute(
                update(EstimateRow)
                .where(EstimateRow.id == est)
                .values(attempt=EstimateRow.attempt + 1, lease_owner="thief")
            )
        stolen.append(get_row(db, est).attempt)

    t = _when_running(db, est, steal)
    run_job(est, settings)
    t.join(5)
    row = get_row(db, est)
    assert stolen == [2]
    assert row.status == "running" and row.attempt == 2 and row.lease_owner == "thief"
    assert row.result is None and row.error is None


def test_same_request_same_result_on_every_attempt(env, pair2d) -> None:
    settings, db, _ = env
    sx, sy, _, _ = pair2d
    est = add_estimate(db, sx, sy, seed=11)
    run_job(est, settings)
    first = get_row(db, est).result
    # The attempt 'died' after writing nothing we keep: re-queue it and run attempt 2.
    with db.session() as s:
        s.execute(
            update(EstimateRow)
            .where(EstimateRow.id == est)
            .values(status="queued", result=None, progress=None)
        )
    run_job(est, settings)
    row = get_row(db, est)
    assert row.attempt == 2 and row.status == "succeeded"
    for key in ("lower_bound", "lipschitz_constant", "holdout", "potential_center", "steps"):
        assert row.result[key] == first[key], key


def test_unclaimable_job_returns_quietly(env, pair2d) -> None:
    settings, db, _ = env
    sx, sy, _, _ = pair2d
    est = add_estimate(db, sx, sy)
    jobs.request_cancel(db, est)
    run_job(est, settings)
    run_job("est_missing", settings)
    row = get_row(db, est)
    assert row.status == "cancelled" and row.attempt == 0


def test_scale_standardize_records_factors_and_the_potential_takes_raw_points(env) -> None:
    settings, db, blobs = env
    rng = np.random.default_rng(3)
    x = rng.normal(size=(120, 2)) * [1.0, 1000.0]
    y = rng.normal(size=(100, 2)) * [1.0, 1000.0] + [1.0, 0.0]
    sx, sy = add_dataset(db, blobs, x), add_dataset(db, blobs, y)
    plain = add_estimate(db, sx, sy, method="lipschitz")
    run_job(plain, settings)
    r = get_row(db, plain).result
    assert r["scale"] == {"mode": "none", "factors": None}
    assert any("differ by" in n and "standardize" in n for n in r["notes"])
    est = add_estimate(db, sx, sy, method="lipschitz", scale="standardize")
    run_job(est, settings)
    row = get_row(db, est)
    assert row.status == "succeeded", row.error
    r = row.result
    factors = np.array(r["scale"]["factors"])
    assert r["scale"]["mode"] == "standardize" and factors[1] > 500 * factors[0]
    assert not any("differ by" in n for n in r["notes"])
    # The saved potential takes raw points: its centred values match the scaled data's.
    f = lipcore.load_potential(blobs.potential_path(est))
    raw = lipcore.evaluate(f, x, chunk=64)
    center = r["potential_center"]
    assert abs(float(np.mean(raw)) - center) < 5 * float(np.std(raw)) + 1.0
    g = (raw - center) / r["lipschitz_constant"]
    assert np.isfinite(g).all() and float(np.ptp(g)) < 20  # scaled units: ~ a few, not ~ 1000s
