"""The executor port: how the API hands a job to whatever runs it.

Like httpx's transports, the API only sees this interface; the embedded dispatcher
(:mod:`service.executors.local`) and the Dramatiq adapter (:mod:`service.executors.dramatiq`) are
interchangeable. Job state lives in the store, never in the executor: an executor that loses a job
is repaired by the reaper re-submitting it.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class Executor(Protocol):
    def start(self) -> None:
        """Begin dispatching (threads, connections). Called once at application start."""

    def stop(self) -> None:
        """Stop dispatching and release resources. Running jobs may be left to the reaper."""

    def submit(self, job_id: str) -> None:
        """Run the queued job ``job_id`` eventually (at least once)."""

    def cancel(self, job_id: str) -> None:
        """Best-effort nudge after the store's cancel flag is set (e.g. kill a stuck child)."""

    def check(self) -> None:
        """Raise if the executor cannot take jobs now (used by /readyz)."""
