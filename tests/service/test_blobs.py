"""The blob store: content-addressed paths, atomic writes, temporary files, deletes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.blobs import BlobStore
from service.ingest import canonical_sha256

SHA = "ab" + "0" * 62


@pytest.fixture
def blobs(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "blobs")


def test_dataset_round_trip_with_and_without_weights(blobs: BlobStore) -> None:
    a = np.arange(12, dtype=np.float32).reshape(4, 3)
    w = np.full(4, 0.25)
    blobs.put_dataset(SHA, a, w)
    assert blobs.has_dataset(SHA)
    assert blobs.samples_path(SHA).parent == blobs.root / "datasets" / "ab" / SHA
    samples, weights = blobs.load_dataset(SHA)
    assert isinstance(samples, np.memmap) and not samples.flags.writeable
    np.testing.assert_array_equal(samples, a)
    np.testing.assert_array_equal(weights, w)
    other = "cd" + "1" * 62
    blobs.put_dataset(other, a, None)
    assert blobs.load_dataset(other, mmap=False)[1] is None


def test_put_dataset_file_moves_the_file_into_place(blobs: BlobStore) -> None:
    a = np.ones((3, 2))
    with blobs.temp_path(".npy") as tmp:
        np.save(tmp, a)
        blobs.put_dataset_file(SHA, tmp, np.array([0.5, 0.25, 0.25]))
        assert not tmp.exists()
    samples, weights = blobs.load_dataset(SHA, mmap=False)
    np.testing.assert_array_equal(samples, a)
    assert weights.tolist() == [0.5, 0.25, 0.25]
    assert list(blobs.tmp.iterdir()) == []


def test_temp_files_are_removed_even_on_error(blobs: BlobStore) -> None:
    with pytest.raises(RuntimeError), blobs.temp_path(".x") as tmp:
        tmp.write_bytes(b"half")
        assert tmp.parent == blobs.tmp
        raise RuntimeError
    assert list(blobs.tmp.iterdir()) == []


def test_rewrite_is_atomic_replace(blobs: BlobStore) -> None:
    blobs.put_array(blobs.samples_path(SHA), np.zeros((2, 2)))
    before = blobs.samples_path(SHA).stat().st_ino
    blobs.put_array(blobs.samples_path(SHA), np.ones((2, 2)))
    assert blobs.samples_path(SHA).stat().st_ino != before  # a new file renamed over the old
    assert blobs.load_dataset(SHA, mmap=False)[0].tolist() == [[1, 1], [1, 1]]


def test_delete_dataset_and_potential(blobs: BlobStore) -> None:
    blobs.put_dataset(SHA, np.ones((1, 1)), np.ones(1))
    blobs.delete_dataset(SHA)
    assert not blobs.has_dataset(SHA) and not blobs.dataset_dir(SHA).exists()
    blobs.delete_dataset(SHA)  # idempotent
    src = blobs.root / "p.bin"
    src.write_bytes(b"weights")
    blobs.put_file(src, blobs.potential_path("est_1"))
    assert blobs.potential_path("est_1").read_bytes() == b"weights"
    blobs.delete_potential("est_1")
    assert not blobs.potential_path("est_1").exists()


@pytest.mark.parametrize("bad", ["", "ab", "../" + "0" * 61, "G" * 64, "0" * 63 + "/"])
def test_dataset_paths_accept_only_hex_digests(blobs: BlobStore, bad: str) -> None:
    with pytest.raises(ValueError):
        blobs.dataset_dir(bad)


@pytest.mark.parametrize("bad", ["../x", "a/b", "est 1", ""])
def test_potential_paths_refuse_traversal(blobs: BlobStore, bad: str) -> None:
    with pytest.raises(ValueError):
        blobs.potential_path(bad)


def test_ping_writes_and_cleans_up(blobs: BlobStore) -> None:
    blobs.ping()
    assert list(blobs.tmp.iterdir()) == []


def test_canonical_hash_is_stable() -> None:
    # Pinned: changing the canonical form would split every stored dataset in two.
    a = np.arange(6, dtype=np.float32).reshape(3, 2)
    assert canonical_sha256(a) == canonical_sha256(a.astype(">f4"))
    assert canonical_sha256(a) == canonical_sha256(np.asfortranarray(a))
    assert canonical_sha256(a)[:16] == PINNED


PINNED = "42e003b25fe7a1ef"


def test_sweep_removes_only_old_temporary_files(blobs: BlobStore) -> None:
    import os
    import time

    old, fresh = blobs.tmp / "old.npy", blobs.tmp / "fresh.npy"
    old.write_bytes(b"left by a crash")
    fresh.write_bytes(b"an upload in progress")
    past = time.time() - 7200
    os.utime(old, (past, past))
    assert blobs.sweep_tmp(3600) == 1
    assert not old.exists() and fresh.exists()
