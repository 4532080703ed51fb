"""Receiving an upload: the body goes to a file in blocks, on a worker thread.

The event loop only gathers the request's chunks (by reference, no copy) into blocks of about
``block_bytes`` and hands each to one worker thread, which writes it, flushes it to the disk as it
goes (so that the final fsync of the atomic store has little left to do) and, for ``.npy``
bodies, feeds the :class:`NpyDigest` that hashes and checks the data while it arrives. At most
``depth`` blocks wait: memory stays bounded, and a slow disk slows the upload down rather than
filling memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import threading
from pathlib import Path
from typing import BinaryIO

from service.ingest.base import Limits
from service.ingest.npy import NpyDigest

BLOCK_BYTES = 4 * 1024 * 1024
SYNC_EVERY = 32 * 1024 * 1024
_STOP = object()


class UploadSink:
    """Write a streamed body to ``path``; use as ``async with``, ``await write()``, ``finish()``.

    Leaving the block without :meth:`finish` (a 413, a disconnect) stops the thread and
    discards nothing but the work in flight; the caller removes the file.
    """

    def __init__(
        self,
        path: Path,
        limits: Limits,
        *,
        digest: bool = False,
        block_bytes: int = BLOCK_BYTES,
        depth: int = 4,
        sync_every: int = SYNC_EVERY,
    ) -> None:
        self.path = path
        self.digest = NpyDigest(limits) if digest else None
        self.block_bytes = block_bytes
        self.sync_every = sync_every
        self.total = 0
        self._buf: list[bytes] = []
        self._buffered = 0
        self._queue: queue.Queue = queue.Queue()
        self._slots = asyncio.Semaphore(depth)
        self._error: BaseException | None = None
        self._file: BinaryIO | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def __aenter__(self) -> UploadSink:
        self._loop = asyncio.get_running_loop()
        self._file = open(self.path, "wb", buffering=0)  # noqa: SIM115 - closed by the thread
        self._thread = threading.Thread(target=self._run, name="upload-sink", daemon=True)
        self._thread.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(_STOP)
            await asyncio.to_thread(self._thread.join)

    async def write(self, chunk: bytes) -> None:
        """Add ``chunk``; hands a full block to the thread (waits when ``depth`` are queued)."""
        self.total += len(chunk)
        self._buf.append(chunk)
        self._buffered += len(chunk)
        if self._buffered >= self.block_bytes:
            await self._hand_off()

    async def finish(self) -> None:
        """Write what is left, wait for the thread, raise what it raised."""
        if self._buf:
            await self._hand_off()
        self._queue.put(_STOP)
        await asyncio.to_thread(self._thread.join)  # type: ignore[union-attr]
        if self._error is not None:
            raise self._error

    async def _hand_off(self) -> None:
        if self._error is not None:
            raise self._error
        await self._slots.acquire()
        block, self._buf, self._buffered = self._buf, [], 0
        self._queue.put(block)

    def _run(self) -> None:
        f = self._file
        assert f is not None and self._loop is not None
        unsynced = 0
        try:
            while (block := self._queue.get()) is not _STOP:
                try:
                    if self._error is None:
                        for chunk in block:  # the request's own chunks: no copy into a block
                            view = memoryview(chunk)
                            while view:
                                view = view[f.write(view) :]
                            if self.digest is not None:
                                self.digest.feed(chunk)
                            unsynced += len(chunk)
                        if unsynced >= self.sync_every:
                            os.fdatasync(f.fileno())
                            unsynced = 0
                except BaseException as e:  # noqa: BLE001 - reported by finish() or next write()
                    self._error = e
                finally:
                    # RuntimeError: the loop is gone (shutdown) and nobody waits.
                    with contextlib.suppress(RuntimeError):
                        self._loop.call_soon_threadsafe(self._slots.release)
        finally:
            f.close()
