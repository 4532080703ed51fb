"""LocalExecutor with real spawned children: a job succeeds, cancel stops a running one, a child
killed with SIGKILL is re-run (attempt 2, one result), and a restart resumes a running job."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from jobfixtures import (
    TINY,
    add_dataset,
    add_estimate,
    get_row,
    open_store,
    shifted_pair,
    steps_lasting,
    wait_for,
)

from service.blobs import BlobStore
from service.executors import spares
from service.executors.base import Executor
from service.executors.children import Child
from service.executors.local import LocalExecutor
from service.settings import Settings
from service.store import Database, EstimateRow, jobs

FINISHED = ("succeeded", "failed", "cancelled")
LONG = {**TINY, "steps": 5000, "patience": 0, "progress_every": 1}
MEDIUM = {**TINY, "patience": 0, "progress_every": 5}  # steps: sized to this machine (below)
MEDIUM_SECONDS = 5.0  # each attempt's training time: the test acts on it while it runs
PAIR = (60, 2, 1.0)  # the source and target of every job here (shifted_pair's arguments)


@pytest.fixture
def env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Settings, Database, BlobStore, str, str]]:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # tiny jobs on a shared 2-core machine
    settings = Settings(
        _env_file=None,
        data_dir=tmp_path / "data",
        progress_interval_s=0.1,
        lease_s=3.0,
        heartbeat_s=0.3,
        reaper_interval_s=0.3,
        cancel_grace_s=2.0,
        concurrency=2,
        device="cpu",
    )
    db, blobs = open_store(settings)
    x, y = shifted_pair(*PAIR)
    yield settings, db, blobs, add_dataset(db, blobs, x), add_dataset(db, blobs, y)
    db.dispose()


@pytest.fixture
def executors() -> Iterator[Callable[[Settings, Database], LocalExecutor]]:
    made: list[LocalExecutor] = []

    def make(settings: Settings, db: Database) -> LocalExecutor:
        ex = LocalExecutor(settings, db)
        made.append(ex)
        return ex

    yield make
    for ex in made:
        ex.stop()


def progressed(db: Database, est: str, step: int) -> Callable[[], bool]:
    def cond() -> bool:
        row = get_row(db, est)
        return row.progress is not None and row.progress["step"] >= step

    return cond


def finished(db: Database, est: str) -> Callable[[], EstimateRow | None]:
    def cond() -> EstimateRow | None:
        row = get_row(db, est)
        return row if row.status in FINISHED else None

    return cond


def test_runs_jobs_in_spawned_children_and_cancels(env, executors) -> None:
    settings, db, blobs, sx, sy = env
    ex = executors(settings, db)
    assert isinstance(ex, Executor)
    with pytest.raises(RuntimeError):
        ex.check()  # not started
    quick = add_estimate(db, sx, sy)
    ex.start()  # picks up the queued job by itself
    ex.check()
    long = add_estimate(db, sx, sy, config=LONG)
    ex.submit(long)
    ex.submit(long)  # a duplicate hand-over is harmless
    pids = wait_for(lambda: ex.running().get(long), what="the long job's child")
    assert pids != os.getpid()
    wait_for(progressed(db, long, 3), what="progress of the long job")
    assert jobs.request_cancel(db, long) == "running"
    ex.cancel(long)
    row = wait_for(finished(db, long), timeout=30, what="the cancel")
    assert row.status == "cancelled" and row.progress["step"] < 5000
    row = wait_for(finished(db, quick), what="the quick job")
    assert row.status == "succeeded" and row.attempt == 1, row.error
    assert row.result["steps"] == 30 and blobs.potential_path(quick).exists()
    wait_for(lambda: not ex.running(), timeout=15, what="children to end")
    ex.stop()
    with pytest.raises(RuntimeError):
        ex.check()


def test_warm_processes_take_jobs_and_are_replaced(env, executors, monkeypatch) -> None:
    settings, db, _, sx, sy = env
    monkeypatch.setattr(spares, "SPARE_RETRY_S", 1.0)
    ex = executors(settings.model_copy(update={"concurrency": 1}), db)
    ex.start()
    first = wait_for(lambda: ex.spares().get(0), what="a warm process")
    os.kill(first, signal.SIGKILL)  # a spare that dies while it waits is replaced, not at once
    t_kill = time.monotonic()
    spare = wait_for(lambda: ex.spares().get(0, first) != first and ex.spares().get(0))
    assert time.monotonic() - t_kill >= 0.9  # no spawn loop when spares keep dying
    long = add_estimate(db, sx, sy, config=LONG)
    ex.submit(long)
    assert wait_for(lambda: ex.running().get(long), what="the job's process") == spare
    wait_for(progressed(db, long, 3), what="progress of the long job")
    behind = wait_for(lambda: ex.spares().get(0), what="the next warm process")
    assert behind not in (spare, first)
    assert jobs.request_cancel(db, long) == "running"
    ex.cancel(long)
    assert wait_for(finished(db, long), timeout=30, what="the cancel").status == "cancelled"
    quick = add_estimate(db, sx, sy)
    ex.submit(quick)  # the next job starts in the process that waited behind
    row = wait_for(finished(db, quick), what="the quick job")
    assert row.status == "succeeded" and row.attempt == 1, row.error
    ex.stop()
    for pid in (spare, behind):
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # ended and reaped
    assert ex.spares() == {}


def test_without_warm_processes_jobs_start_cold(env, executors) -> None:
    settings, db, _, sx, sy = env
    ex = executors(settings.model_copy(update={"warm_processes": False}), db)
    ex.start()
    est = add_estimate(db, sx, sy)
    ex.submit(est)
    assert wait_for(finished(db, est), what="the job").status == "succeeded"
    assert ex.spares() == {}


def test_killed_child_is_rerun_and_restart_resumes(env, executors) -> None:
    settings, db, _, sx, sy = env
    ex = executors(settings, db)
    ex.start()
    medium = {**MEDIUM, "steps": steps_lasting(MEDIUM_SECONDS, MEDIUM, *shifted_pair(*PAIR))}
    est = add_estimate(db, sx, sy, config=medium)
    ex.submit(est)
    wait_for(progressed(db, est, 5), what="progress before the kill")
    assert get_row(db, est).attempt == 1
    os.kill(ex.running()[est], signal.SIGKILL)  # the child dies (OOM killer, say)
    # Its lease expires, the reaper re-queues the job and it runs again as attempt 2.
    wait_for(
        lambda: get_row(db, est).attempt == 2 and progressed(db, est, 5)(),
        timeout=60,
        what="attempt 2 running",
    )
    ex.stop()  # the server goes down with attempt 2 running
    row = get_row(db, est)
    assert row.status == "running" and row.result is None
    again = executors(settings, db)
    again.start()  # a restarted server resumes it: attempt 3 runs to the end
    row = wait_for(finished(db, est), timeout=90, what="the resumed job")
    assert row.status == "succeeded", row.error
    assert row.attempt == 3 and row.result["steps"] == medium["steps"]
    assert row.history[-1][0] == medium["steps"] and row.error is None


def test_kills_a_child_that_ignores_cancel_or_runs_too_long(env, executors) -> None:
    settings, db, _, sx, sy = env
    s = settings.model_copy(update={"cancel_grace_s": 0.5, "job_timeout_s": 5.0})
    ex = executors(s, db)  # not started: the test drives the dispatcher's ticks itself
    ctx = multiprocessing.get_context("spawn")

    def stuck_child(est: str, owner: str, started: float) -> Child:
        assert jobs.claim(db, est, owner, lease_s=60, max_attempts=3) is not None
        proc = ctx.Process(target=time.sleep, args=(120,), daemon=True)  # a child that hangs
        proc.start()
        ch = Child(est, proc, owner, 0, started)
        ex._runs.started(ch)
        return ch

    cancelled = add_estimate(db, sx, sy)
    a = stuck_child(cancelled, "owner-a", time.monotonic())
    assert jobs.request_cancel(db, cancelled) == "running"
    ex.cancel(cancelled)
    ex._tick()
    assert a.process.is_alive()  # within its grace period
    time.sleep(0.6)
    ex._tick()
    assert not a.process.is_alive() and a.process.exitcode == -signal.SIGKILL
    assert get_row(db, cancelled).status == "cancelled"

    overdue = add_estimate(db, sx, sy)
    b = stuck_child(overdue, "owner-b", time.monotonic() - 60)  # past job_timeout_s + grace
    ex._tick()
    assert not b.process.is_alive()
    row = get_row(db, overdue)
    assert row.status == "failed" and row.error["type"] == "timeout"
    assert ex.running() == {}
