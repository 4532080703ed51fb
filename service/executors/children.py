"""The embedded executor's job processes: how one is made, what it runs, how it is ended.

Every child is created with ``multiprocessing.get_context("spawn")`` (never fork: CUDA must not
be initialised in a forked child) and runs :func:`child_main`. This module imports nothing heavy:
a spawned child imports it before it knows its job.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnProcess
from typing import Any, Literal

from service.settings import Settings

log = logging.getLogger("lipwass.executor.local")

Job = tuple[str, str]  # (job id, lease owner): what a child runs
KillReason = Literal["cancel", "timeout"]


def child_main(
    job: Job | None,
    settings_data: dict[str, Any],
    cuda: str | None,
    threads: int | None = None,
    conn: Connection | None = None,
) -> None:
    """The spawned child's entry point: rebuild the settings and run one attempt of one job.

    ``job`` is (job id, lease owner); None makes a warm spare, which pays the job's start costs
    first (:func:`service.runner.preload`: imports, first calls) and then waits on ``conn`` for
    its job, or for None or the parent's end (EOF: exit). ``cuda`` pins the child to one GPU;
    ``threads`` bounds its CPU threads when several CPU jobs share the machine (set before torch
    is imported; a user's OMP_NUM_THREADS wins).
    """
    if cuda is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = cuda
    if threads is not None and "OMP_NUM_THREADS" not in os.environ:
        os.environ["OMP_NUM_THREADS"] = str(threads)
    from service.logs import setup_logging
    from service.memcap import cap_job_process
    from service.runner import preload, run_job

    settings = Settings(_env_file=None, **settings_data)
    setup_logging(settings.log_level)
    cap_job_process(settings)  # one job cannot take the machine (CPU jobs: RLIMIT_DATA)
    if job is None and conn is not None:
        preload()
        try:
            job = conn.recv()
        except (EOFError, OSError):  # the executor stopped or died: nothing to run
            return
        finally:
            conn.close()
    if job is not None:
        run_job(job[0], settings, job[1])


@dataclass
class Child:
    """A job process of the executor's, and when it is to be killed (see ``KillPolicy``)."""

    job_id: str
    process: SpawnProcess
    owner: str
    slot: int
    started: float  # time.monotonic() when the job was handed to the process
    kill_at: float | None = None
    kill_reason: KillReason | None = None


def resources(settings: Settings) -> tuple[int, list[str]]:
    """(concurrency, GPU ids for the children); torch.cuda.device_count() does not init CUDA."""
    try:
        import torch

        count = torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - no usable torch/CUDA: CPU
        count = 0
    gpus: list[str] = []
    if count > 1 and not settings.device:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        ids = [v.strip() for v in visible.split(",") if v.strip()] if visible else []
        gpus = ids[:count] if len(ids) >= count else [str(i) for i in range(count)]
    return settings.concurrency or (count or 1), gpus


class Launcher:
    """Makes (does not start) the spawned children of one executor: the settings pickled to
    them, each pinned to its slot's GPU, CPU threads bounded when CPU jobs run side by side."""

    def __init__(self, settings: Settings, gpus: list[str], threads: int | None) -> None:
        self.settings = settings
        self.gpus = gpus
        self.threads = threads
        self._ctx = multiprocessing.get_context("spawn")

    def job(self, slot: int, job: Job) -> SpawnProcess:
        """A child that runs ``job`` (a cold start: it imports everything first)."""
        return self._process(slot, job, None, f"lipwass-job-{job[0]}")

    def spare(self, slot: int, conn: Connection) -> SpawnProcess:
        """A warm spare for ``slot``: it preloads, then waits for its job on ``conn``."""
        return self._process(slot, None, conn, f"lipwass-spare-{slot}")

    def _process(
        self, slot: int, job: Job | None, conn: Connection | None, name: str
    ) -> SpawnProcess:
        cuda = self.gpus[slot % len(self.gpus)] if self.gpus else None
        data = self.settings.model_dump()  # pickled to the child (Paths, secrets intact)
        return self._ctx.Process(
            target=child_main,
            args=(job, data, cuda, self.threads, conn),
            name=name,
            daemon=True,
        )


def terminate(proc: SpawnProcess, wait_s: float = 5.0) -> None:
    """End ``proc``: SIGTERM, then SIGKILL if it is still alive after ``wait_s``; reaped."""
    if proc.is_alive():
        proc.terminate()
        proc.join(wait_s)
    if proc.is_alive():
        proc.kill()
        proc.join(wait_s)
