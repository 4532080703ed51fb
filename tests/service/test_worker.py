"""Unit tests of the worker's parts that need neither Redis nor PostgreSQL (service/worker.py)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from service import worker
from service.executors.dramatiq import actor_time_limit_ms, make_broker
from service.settings import Settings
from service.store import Database, JobStatus, jobs

sys.path.insert(0, str(Path(__file__).parent))
from jobfixtures import add_dataset, add_estimate, open_store


def test_health_check_reads_the_heartbeat_file(tmp_path: Path, capsys) -> None:
    health = tmp_path / "w.health"
    s = Settings(_env_file=None, worker_health_file=health, broker_heartbeat_timeout_s=3)
    assert worker.check(s) == 1  # no file: the worker never started
    health.touch()
    assert worker.check(s) == 0
    old = time.time() - 60
    os.utime(health, (old, old))
    assert worker.check(s) == 1
    assert "last heartbeat 60 s ago" in capsys.readouterr().err


def test_main_check_only_never_imports_torch(tmp_path: Path) -> None:
    code = (
        "import sys; from service import worker; from service.settings import Settings; "
        f"rc = worker.main(Settings(_env_file=None, worker_health_file={str(tmp_path)!r} + '/h'),"
        " check_only=True); assert 'torch' not in sys.modules; sys.exit(rc)"
    )
    import subprocess

    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, r.stderr
    assert "does not exist" in r.stderr


def test_main_without_a_broker_url_is_a_clear_error(tmp_path: Path, caplog) -> None:
    s = Settings(_env_file=None, data_dir=tmp_path, broker_url=None)
    assert worker.main(s) == 2


def test_bind_gpu_sets_cuda_visible_devices(monkeypatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setitem(sys.modules, "torch", None)  # as if torch were imported already
    with pytest.raises(RuntimeError, match="before torch"):
        worker.bind_gpu("1")
    monkeypatch.delitem(sys.modules, "torch")
    worker.bind_gpu("1")
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "1"


def test_stuck_watch_fires_only_after_the_grace_and_only_for_the_running_job() -> None:
    cur = worker._Current()
    cur.set("est_a", "w:1")
    assert not cur.stuck("est_a", ours=True, now=0.0, after_s=3)
    assert not cur.stuck("est_a", ours=False, now=1.0, after_s=3)  # first sight: start the clock
    assert not cur.stuck("est_a", ours=False, now=3.5, after_s=3)
    assert not cur.stuck("est_b", ours=False, now=10.0, after_s=3)  # another job: ignored
    assert cur.stuck("est_a", ours=False, now=4.5, after_s=3)
    cur.set("est_c", "w:2")  # a new job resets the clock
    assert not cur.stuck("est_c", ours=False, now=5.0, after_s=3)


def test_still_ours_follows_the_store(tmp_path: Path) -> None:
    import numpy as np

    s = Settings(_env_file=None, data_dir=tmp_path / "data")
    db, blobs = open_store(s)
    x = add_dataset(db, blobs, np.zeros((4, 2)))
    job = add_estimate(db, x, x)
    claim = jobs.claim(db, job, "w:1", lease_s=30, max_attempts=3)
    assert claim is not None
    assert worker._still_ours(db, job, "w:1")
    assert not worker._still_ours(db, job, "w:2")
    assert jobs.finish(db, claim, JobStatus.cancelled)
    assert not worker._still_ours(db, job, "w:1")
    assert not worker._still_ours(db, "est_missing", "w:1")
    db.dispose()


def test_migrate_on_sqlite(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'x.db'}")
    db.migrate()
    db.migrate()  # idempotent
    db.dispose()


def test_broker_overrides_dramatiq_defaults() -> None:
    s = Settings(
        _env_file=None,
        broker_url="redis://127.0.0.1:6379/0",
        broker_heartbeat_timeout_s=7,
        job_timeout_s=100,
    )
    broker = make_broker(s)  # no connection is made here
    assert broker.heartbeat_timeout == 7000
    assert broker.maintenance_chance == 1_000_000  # maintenance on every command
    names = {type(m).__name__: m for m in broker.middleware}
    assert names["Retries"].max_retries == 0
    assert names["TimeLimit"].time_limit == actor_time_limit_ms(s) > 100_000
    assert "AgeLimit" not in names
    with pytest.raises(ValueError, match="LIPWASS_BROKER_URL"):
        make_broker(Settings(_env_file=None))
