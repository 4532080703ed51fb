"""Executors: the port (base) and its adapters (local, dramatiq)."""

from __future__ import annotations

from service.blobs import BlobStore
from service.executors.base import Executor
from service.settings import Settings
from service.store import Database


def make_executor(settings: Settings, db: Database, blobs: BlobStore) -> Executor:
    """The adapter the settings select: Dramatiq when a broker URL is set, else the local one."""
    if settings.broker_url:
        from service.executors.dramatiq import DramatiqExecutor

        return DramatiqExecutor(settings, db)
    from service.executors.local import LocalExecutor

    return LocalExecutor(settings, db)


__all__ = ["Executor", "make_executor"]
