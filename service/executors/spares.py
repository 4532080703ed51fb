"""Warm processes: one spawned, preloaded child per slot, waiting for its job.

A job's process spends seconds on imports (torch) before it computes anything. The pool keeps
one child per slot started ahead, its imports done, blocked on a pipe; a job goes to it instead
of a cold spawn, and the next :meth:`SparePool.fill` starts a new one behind it. Still one job
per process, so killing a job's process ends that job only.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing import Pipe
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnProcess

from service.executors.children import Job, terminate

log = logging.getLogger("lipwass.executor.local")

SPARE_RETRY_S = 5.0  # a spare that died waiting is replaced after this long (no spawn loop)


@dataclass
class _Spare:
    """A warm child waiting for its job."""

    process: SpawnProcess
    conn: Connection  # the pool's end of the pipe the job goes through


class SparePool:
    """Keeps one started spare per slot in ``range(slots)`` and hands them out.

    ``make(slot, conn)`` returns a new, not yet started child that waits for its job on ``conn``
    (:meth:`service.executors.children.Launcher.spare`). Thread-safe: the dispatcher fills and
    takes, other threads read :meth:`pids`.
    """

    def __init__(
        self,
        slots: int,
        make: Callable[[int, Connection], SpawnProcess],
        retry_s: float | None = None,
    ) -> None:
        self.slots = slots
        self.make = make
        self.retry_s = SPARE_RETRY_S if retry_s is None else retry_s
        self._spares: dict[int, _Spare] = {}
        self._retry_at: dict[int, float] = {}  # slot -> when a dead spare may be replaced
        self._lock = threading.Lock()
        self._closed = False

    def fill(self) -> None:
        """Start a spare for every slot that has none. One that died while waiting (killed, a
        broken import) is replaced ``retry_s`` later, so spares that keep dying do not loop."""
        now = time.monotonic()
        for slot in range(self.slots):
            with self._lock:
                if self._closed:
                    return
                spare = self._spares.get(slot)
            if spare is not None and spare.process.is_alive():
                continue
            if spare is not None:
                with self._lock:
                    self._spares.pop(slot, None)
                spare.conn.close()
                spare.process.join(timeout=1)
                log.warning(
                    "warm job process died while waiting (exit code %s); replaced in %g s",
                    spare.process.exitcode,
                    self.retry_s,
                )
                self._retry_at[slot] = now + self.retry_s
            if now < self._retry_at.get(slot, 0.0):
                continue
            if not self._start(slot):
                return

    def _start(self, slot: int) -> bool:
        """Start ``slot``'s spare; False (logged) if the process could not be started."""
        ours, theirs = Pipe()
        proc = self.make(slot, theirs)
        try:
            proc.start()
        except Exception:
            log.exception("could not start a warm job process")
            ours.close()
            return False
        finally:
            theirs.close()  # the child holds its own copy
        with self._lock:
            self._spares[slot] = _Spare(proc, ours)
        return True

    def take(self, slot: int, job: Job) -> SpawnProcess | None:
        """``slot``'s spare, handed ``job`` (it runs it now); None when there is no live one
        (the caller starts the job cold; the next :meth:`fill` replaces the spare)."""
        with self._lock:
            spare = self._spares.pop(slot, None)
        if spare is None:
            return None
        try:
            if not spare.process.is_alive():
                raise OSError("the spare exited")
            spare.conn.send(job)
        except OSError:  # dead or broken: start the job cold instead
            terminate(spare.process, wait_s=1.0)
            return None
        finally:
            spare.conn.close()
        return spare.process

    def pids(self) -> dict[int, int]:
        """Slot -> pid of its live spare."""
        with self._lock:
            spares = dict(self._spares)
        return {
            k: sp.process.pid
            for k, sp in spares.items()
            if sp.process.pid is not None and sp.process.is_alive()
        }

    def close(self, wait_s: float = 1.0) -> None:
        """End every spare: EOF on its pipe (it exits by itself), terminated if still alive
        after ``wait_s``. The pool starts none after this."""
        with self._lock:
            self._closed = True
            spares = list(self._spares.values())
            self._spares.clear()
        for spare in spares:
            spare.conn.close()
        deadline = time.monotonic() + wait_s
        for spare in spares:
            spare.process.join(max(0.0, deadline - time.monotonic()))
            terminate(spare.process)
