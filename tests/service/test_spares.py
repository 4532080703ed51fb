"""The warm-process pool (service/executors/spares.py) with real spawned children that stand in
for the job processes: each waits on its pipe and writes the job it was handed to a file."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnProcess
from pathlib import Path

import pytest
from jobfixtures import wait_for

from service.executors.spares import SparePool


def _stand_in(conn: Connection, out: str) -> None:
    """A spare's stand-in: wait for the job, write it to ``out``; EOF (pool closed): exit."""
    try:
        job = conn.recv()
    except EOFError:
        return
    Path(out).write_text(" ".join(job))


@pytest.fixture
def pools(tmp_path: Path) -> Iterator[Callable[..., SparePool]]:
    """Pools whose spares write their job to ``tmp_path / <slot>-<n>``; closed at the end."""
    made: list[SparePool] = []
    ctx = multiprocessing.get_context("spawn")
    count = iter(range(1000))

    def make(slot: int, conn: Connection) -> SpawnProcess:
        out = tmp_path / f"{slot}-{next(count)}"
        return ctx.Process(target=_stand_in, args=(conn, str(out)), daemon=True)

    def pool(slots: int, retry_s: float = 5.0) -> SparePool:
        p = SparePool(slots, make, retry_s=retry_s)
        made.append(p)
        return p

    yield pool
    for p in made:
        p.close()


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_hands_out_a_ready_spare_and_starts_one_behind_it(pools, tmp_path: Path) -> None:
    pool = pools(2)
    pool.fill()
    pids = wait_for(lambda: len(pool.pids()) == 2 and pool.pids(), what="two spares")
    proc = pool.take(0, ("est_1", "w:1"))
    assert proc is not None and proc.pid == pids[0]
    proc.join(30)
    assert proc.exitcode == 0
    (written,) = [p.read_text() for p in tmp_path.iterdir() if p.name.startswith("0-")]
    assert written == "est_1 w:1"
    assert pool.pids() == {1: pids[1]}  # slot 0 is empty until the next fill
    assert pool.take(0, ("est_2", "w:2")) is None  # no spare: the caller starts the job cold
    pool.fill()
    behind = wait_for(lambda: pool.pids().get(0), what="the spare behind")
    assert behind not in pids.values() and pool.pids()[1] == pids[1]


def test_a_dead_spare_is_replaced_after_the_retry_delay(pools) -> None:
    pool = pools(1, retry_s=1.0)
    pool.fill()
    first = wait_for(lambda: pool.pids().get(0), what="a spare")
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: not pool.pids(), what="the spare's death")
    t_dead = time.monotonic()
    pool.fill()  # notes the death: no new spare before retry_s
    assert pool.pids() == {} and gone(first)  # reaped
    pool.fill()
    assert pool.pids() == {}
    second = wait_for(lambda: (pool.fill(), pool.pids().get(0))[1], what="the replacement")
    assert second != first and time.monotonic() - t_dead >= 0.9


def test_a_spare_that_died_is_not_handed_out(pools) -> None:
    pool = pools(1)
    pool.fill()
    pid = wait_for(lambda: pool.pids().get(0), what="a spare")
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not pool.pids(), what="the spare's death")
    assert pool.take(0, ("est_1", "w:1")) is None
    assert gone(pid)


def test_close_ends_every_spare_and_starts_no_more(pools) -> None:
    pool = pools(2)
    pool.fill()
    pids = wait_for(lambda: len(pool.pids()) == 2 and pool.pids(), what="two spares")
    pool.close()
    assert pool.pids() == {} and all(gone(pid) for pid in pids.values())
    pool.fill()
    assert pool.pids() == {}
