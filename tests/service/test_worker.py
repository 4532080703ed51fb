"""The worker's parts (service/worker.py); only the start/stop test needs Redis
(``LIPWASS_TEST_BROKER_URL``, else skipped)."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from service import worker
from service.executors.dramatiq import actor_time_limit_ms, make_broker
from service.settings import Settings
from service.store import Database, JobStatus, jobs

sys.path.insert(0, str(Path(__file__).parent))
from jobfixtures import add_dataset, add_estimate, open_store, wait_for


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


def _worker(tmp_path: Path, broker_url: str, **settings: float) -> worker.Worker:
    """A Worker on a fresh SQLite store and its own Redis namespace; ``stuck`` collects the ids
    its watch reports."""
    s = Settings(
        _env_file=None,
        data_dir=tmp_path / "data",
        broker_url=broker_url,
        broker_namespace=f"lipwass-test-{uuid.uuid4().hex[:8]}",
        worker_health_file=tmp_path / "w.health",
        **settings,
    )
    db, blobs = open_store(s)
    return worker.Worker(s, db, blobs, make_broker(s), on_stuck=lambda job_id: None)


def test_beat_finds_a_job_stuck_past_its_end_and_survives_a_broker_outage(
    tmp_path: Path, caplog
) -> None:
    import numpy as np

    w = _worker(tmp_path, "redis://127.0.0.1:1/0", cancel_grace_s=0.2, heartbeat_s=0.1)
    assert w.stuck_after_s == pytest.approx(0.4)
    x = add_dataset(w.db, w.blobs, np.zeros((4, 2)))
    job = add_estimate(w.db, x, x)
    claim = jobs.claim(w.db, job, "w:1", lease_s=30, max_attempts=3)
    assert claim is not None
    with caplog.at_level(logging.WARNING, logger="lipwass.worker"):
        assert w.beat() == worker.BeatSummary(broker_ok=False)  # no job, nothing listens on :1
        w._current.set(job, "w:1")
        assert w.beat() == worker.BeatSummary(broker_ok=False, job_id=job)  # still ours
        assert jobs.finish(w.db, claim, JobStatus.cancelled)  # ended; the thread computes on
        assert not w.beat().stuck  # first sight: the clock starts
        time.sleep(0.5)
        assert w.beat() == worker.BeatSummary(broker_ok=False, job_id=job, stuck=True)
    failures = [r for r in caplog.records if "broker heartbeat failed" in r.getMessage()]
    assert len(failures) == 1  # once per outage
    assert not w.health_file.exists()
    w.close()


def test_stop_is_clean(tmp_path: Path) -> None:
    url = os.environ.get("LIPWASS_TEST_BROKER_URL")
    if not url:
        pytest.skip("needs Redis at LIPWASS_TEST_BROKER_URL (redis://127.0.0.1:6379/0)")
    w = _worker(tmp_path, url, broker_heartbeat_timeout_s=0.6, worker_shutdown_grace_s=1)
    before = set(threading.enumerate())
    w.start()
    try:
        assert w.alive and w.health_file.exists()
        stamp = w.health_file.stat().st_mtime
        wait_for(lambda: w.health_file.stat().st_mtime > stamp, timeout=10, what="a beat")
    finally:
        left = w.stop()
    assert left is None and not w.alive and not w.health_file.exists()
    wait_for(lambda: set(threading.enumerate()) <= before, timeout=10, what="threads to end")
    w.close()


def test_a_second_signal_ends_at_once() -> None:
    ending = worker._Ending()
    ending.signal(signal.SIGTERM, None)
    ending.wait()  # returns: the first signal asks for a graceful stop
    with pytest.raises(worker._ExitNow) as exc:
        ending.signal(signal.SIGTERM, None)
    assert exc.value.code == 1
    stuck = worker._Ending()
    stuck.stuck("est_a")
    stuck.wait()
    assert stuck.stuck_job == "est_a"
