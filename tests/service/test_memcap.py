"""The memory cap of job processes: an allocation past it fails in that process alone, a job
that grows past it is failed out_of_memory, and the executor goes on with the next job."""

from __future__ import annotations

import multiprocessing
import resource
from pathlib import Path

import pytest
from jobfixtures import TINY, add_dataset, add_estimate, get_row, open_store, shifted_pair, wait_for

from service.executors.local import LocalExecutor
from service.memcap import HEADROOM_BYTES, cap_job_process
from service.settings import Settings

MiB = 1024**2


def _allocate_past_the_cap(settings_data: dict, q: multiprocessing.Queue) -> None:
    import numpy as np

    settings = Settings(_env_file=None, **settings_data)
    cap = cap_job_process(settings)
    try:
        a = np.ones(int(cap // 8) + 1)  # one array larger than the cap
        q.put(("allocated", cap, a.nbytes))
    except MemoryError:
        small = np.ones(1_000_000)  # the process itself still works
        q.put(("MemoryError", cap, small.nbytes))


def test_an_allocation_past_the_cap_fails_in_the_capped_process(tmp_path: Path) -> None:
    settings = Settings(
        _env_file=None, data_dir=tmp_path, device="cpu", max_job_memory_bytes=64 * MiB
    )
    ctx = multiprocessing.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_allocate_past_the_cap, args=(settings.model_dump(), q))
    p.start()
    what, cap, nbytes = q.get(timeout=60)
    p.join(30)
    assert (what, cap, nbytes) == ("MemoryError", 64 * MiB + HEADROOM_BYTES, 8_000_000)
    # This (the test's) process is not capped.
    assert resource.getrlimit(resource.RLIMIT_DATA)[0] != cap


def test_no_cap_for_cuda_jobs(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, data_dir=tmp_path, device="cuda:0")
    assert cap_job_process(settings) is None


def test_a_job_past_the_cap_fails_out_of_memory_and_the_next_job_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    settings = Settings(
        _env_file=None,
        data_dir=tmp_path / "data",
        device="cpu",
        concurrency=1,
        warm_processes=False,
        max_job_memory_bytes=1,  # cap = the headroom alone: a tiny job fits, a huge batch not
        progress_interval_s=0.1,
    )
    db, blobs = open_store(settings)
    x, y = shifted_pair(200_000, 2, 1.0)
    sx, sy = add_dataset(db, blobs, x), add_dataset(db, blobs, y)
    # Inserted directly (the API refuses it up front: see test_auth): 2^17 samples per set and
    # step through width 1024 need 0.5 GB per layer and set, forward and backward.
    huge = add_estimate(db, sx, sy, config={**TINY, "width": 1024, "batch_size": 1 << 17})
    ex = LocalExecutor(settings, db)
    ex.start()
    try:
        row = wait_for(
            lambda: (r := get_row(db, huge)).status in ("failed", "succeeded") and r,
            timeout=120,
            what="the huge job to end",
        )
        assert row.status == "failed", row.result
        assert row.error["type"] == "out_of_memory", row.error
        assert "max_job_memory_bytes" in row.error["detail"]
        small = shifted_pair(200, 2, 1.0)
        quick = add_estimate(db, add_dataset(db, blobs, small[0]), add_dataset(db, blobs, small[1]))
        ex.submit(quick)
        row = wait_for(
            lambda: (r := get_row(db, quick)).status in ("failed", "succeeded") and r,
            timeout=120,
            what="the next job",
        )
        assert row.status == "succeeded", row.error
    finally:
        ex.stop()
        db.dispose()
