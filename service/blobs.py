"""Content-addressed files under one folder, written atomically (temp file + rename).

A reader never sees half a file: every write goes to a temporary name in the same folder and is
renamed into place, which POSIX makes atomic on one file system (a shared volume included).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import numpy as np


def _host() -> str:
    """This machine's name as a file-name part (no dots: the name's fields are split on them)."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:64] or "host"


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # another user's process (or a pid we cannot ask about): leave it be
    return True


class BlobStore:
    """Datasets by content hash, potentials by estimate id."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.tmp = self.root / "tmp"
        for sub in ("datasets", "potentials", "tmp"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    # -- paths ---------------------------------------------------------------------------------
    def dataset_dir(self, sha256: str) -> Path:
        if len(sha256) != 64 or not all(c in "0123456789abcdef" for c in sha256):
            raise ValueError("not a sha256 hex digest")
        return self.root / "datasets" / sha256[:2] / sha256

    def samples_path(self, sha256: str) -> Path:
        return self.dataset_dir(sha256) / "samples.npy"

    def weights_path(self, sha256: str) -> Path:
        return self.dataset_dir(sha256) / "weights.npy"

    def potential_path(self, estimate_id: str) -> Path:
        if not estimate_id.replace("_", "").isalnum():
            raise ValueError("bad estimate id")
        return self.root / "potentials" / f"{estimate_id}.safetensors"

    # -- writes --------------------------------------------------------------------------------
    @contextmanager
    def temp_path(self, suffix: str = "") -> Iterator[Path]:
        """A temporary file on the blob volume (so a later rename is atomic); removed on exit.

        Named ``<host>.<pid>.<random><suffix>``: the start-up sweep knows whose it is.
        """
        fd, name = tempfile.mkstemp(dir=self.tmp, prefix=f"{_host()}.{os.getpid()}.", suffix=suffix)
        os.close(fd)
        path = Path(name)
        try:
            yield path
        finally:
            path.unlink(missing_ok=True)

    def _place(self, tmp: Path, final: Path) -> None:
        final.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)

    def put_array(self, final: Path, array: np.ndarray) -> None:
        """Save ``array`` as .npy at ``final`` atomically."""
        with self.temp_path(".npy") as tmp:
            with open(tmp, "wb") as f:
                np.save(f, np.ascontiguousarray(array), allow_pickle=False)
            self._place(tmp, final)

    def put_dataset(self, sha256: str, samples: np.ndarray, weights: np.ndarray | None) -> None:
        """Store a validated dataset under its hash (weights first: samples mark completeness)."""
        if weights is not None:
            self.put_array(self.weights_path(sha256), weights)
        self.put_array(self.samples_path(sha256), samples)

    def put_dataset_file(self, sha256: str, samples_npy: Path, weights: np.ndarray | None) -> None:
        """Store a dataset whose samples already are a finished .npy file: moved, not copied.

        ``samples_npy`` must live on the blob volume (e.g. from :meth:`temp_path`); it is gone
        afterwards. Weights are written first, as in :meth:`put_dataset`.
        """
        if weights is not None:
            self.put_array(self.weights_path(sha256), weights)
        self._place(samples_npy, self.samples_path(sha256))

    def put_file(self, src: Path, final: Path) -> None:
        """Copy a finished file into place atomically."""
        with self.temp_path(final.suffix) as tmp:
            shutil.copyfile(src, tmp)
            self._place(tmp, final)

    # -- reads ---------------------------------------------------------------------------------
    def has_dataset(self, sha256: str) -> bool:
        return self.samples_path(sha256).exists()

    def load_dataset(self, sha256: str, mmap: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        """The samples (memory-mapped by default) and the weights, or None when uniform."""
        mode: Literal["r"] | None = "r" if mmap else None
        samples = np.load(self.samples_path(sha256), mmap_mode=mode, allow_pickle=False)
        wp = self.weights_path(sha256)
        weights = np.load(wp, allow_pickle=False) if wp.exists() else None
        return samples, weights

    def delete_dataset(self, sha256: str) -> None:
        shutil.rmtree(self.dataset_dir(sha256), ignore_errors=True)

    def delete_potential(self, estimate_id: str) -> None:
        self.potential_path(estimate_id).unlink(missing_ok=True)

    def sweep_tmp(self, max_age_s: float, *, only_writer: bool = False) -> int:
        """Remove temporary files whose writer is gone (left by a crash); returns the count.

        A file is kept while its writer may still be at it: named by this host and a process
        that is running (its pid, checked with signal 0), or by another host and touched within
        ``max_age_s`` (API replicas sharing the volume: their pids are not ours to check). With
        ``only_writer`` (the embedded mode: this process is the only API, and at start-up no
        upload is in flight) only the first test applies: every other file goes at once.
        """
        cutoff = time.time() - max_age_s
        host = _host()
        removed = 0
        for path in self.tmp.iterdir():
            parts = path.name.split(".")
            mine = len(parts) > 2 and parts[0] == host and parts[1].isdigit()
            try:
                if not path.is_file():
                    continue
                if mine:
                    stale = not _pid_alive(int(parts[1]))
                else:
                    stale = only_writer or path.stat().st_mtime < cutoff
                if stale:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
        return removed

    def ping(self) -> None:
        """Raise if the blob folder is not writable."""
        with self.temp_path() as tmp:
            tmp.write_bytes(b"ok")
