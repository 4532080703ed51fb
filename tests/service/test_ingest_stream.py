"""Receiving uploads: the sink writes blocks on a thread; the .npy digest hashes on the way."""

from __future__ import annotations

import asyncio
import io
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service import ingest
from service.ingest.npy import NpyDigest
from service.ingest.stream import UploadSink

LIMITS = ingest.Limits(max_n=10_000, max_d=64)
NPY = ingest.format_for("application/x-npy")
FIXTURE_OK = [HealthCheck.function_scoped_fixture]


def npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def pieces(body: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(body), *(c % (len(body) + 1) for c in cuts)})
    return [body[a:b] for a, b in zip(points, points[1:], strict=False)]


def digest_of(body: bytes, cuts: list[int]) -> NpyDigest:
    dg = NpyDigest(LIMITS)
    for p in pieces(body, cuts):
        dg.feed(p)
    return dg


@settings(max_examples=40, deadline=None, suppress_health_check=FIXTURE_OK)
@given(
    dtype=st.sampled_from([np.float32, np.float64]),
    n=st.integers(1, 40),
    d=st.integers(1, 5),
    cuts=st.lists(st.integers(0, 10_000), max_size=12),
    bad=st.one_of(st.none(), st.integers(0, 10_000)),
)
def test_digest_matches_the_file_pass_whatever_the_block_splits(
    tmp_path: Path, dtype, n: int, d: int, cuts: list[int], bad: int | None
) -> None:
    a = np.random.default_rng(n * d).normal(size=(n, d)).astype(dtype)
    if bad is not None:
        a.flat[bad % a.size] = np.nan
    body = npy(a)
    dg = digest_of(body, cuts)
    src = tmp_path / "b.npy"
    src.write_bytes(body)
    parsed = NPY.parse(src, LIMITS)
    assert dg.result_for(parsed) is not None
    assert dg.finite is (bad is None)
    if bad is None:
        ds = ingest.ingest(src, NPY, LIMITS, tmp_path / "o.npy", dg)
        assert ds.sha256 == ingest.canonical_sha256(a)
    else:  # the digest saw the NaN; the file pass names where it is
        with pytest.raises(ingest.IngestError, match="non-finite value nan at row"):
            ingest.ingest(src, NPY, LIMITS, tmp_path / "o.npy", dg)


@pytest.mark.parametrize(
    "body",
    [
        npy(np.ones((3, 2), dtype=">f4")),
        npy(np.ones(3, dtype=np.float32)),
        npy(np.ones((3, 2), dtype=np.float16)),
        npy(np.asfortranarray(np.ones((3, 2)))),
        npy(np.ones((3, 2), dtype=np.int64)),
        b"\x93NUMPY\x02\x00\xff\xff\xff\xff",
        b"garbage that is long enough",
    ],
)
def test_digest_steps_aside_for_non_canonical_bodies(body: bytes) -> None:
    dg = digest_of(body, [5, 11, 40])
    assert dg.active is False


def test_digest_is_not_used_for_other_data(tmp_path: Path) -> None:
    dg = digest_of(npy(np.zeros((4, 2), np.float32)), [])
    src = tmp_path / "b.npy"
    src.write_bytes(npy(np.zeros((2, 4), np.float32)))
    assert dg.result_for(NPY.parse(src, LIMITS)) is None


async def _upload(path: Path, chunks: list[bytes], finish: bool = True, **kw) -> UploadSink:
    async with UploadSink(path, LIMITS, **kw) as sink:
        for c in chunks:
            await sink.write(c)
        if finish:
            await sink.finish()
    return sink


def test_sink_writes_every_byte_in_order(tmp_path: Path) -> None:
    body = np.random.default_rng(0).bytes(300_000)
    chunks = pieces(body, list(range(0, 300_000, 7_777)))
    sink = asyncio.run(
        _upload(tmp_path / "f", chunks, block_bytes=10_000, depth=2, sync_every=50_000, digest=True)
    )
    assert (tmp_path / "f").read_bytes() == body
    assert sink.total == len(body)
    assert sink.digest is not None and sink.digest.active is False  # not a .npy


def test_sink_stops_its_thread_when_abandoned(tmp_path: Path) -> None:
    before = threading.active_count()
    asyncio.run(_upload(tmp_path / "f", [b"x" * 5000] * 10, finish=False, block_bytes=1000))
    assert threading.active_count() == before


def test_sink_reports_a_write_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(_: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("service.ingest.stream.os.fdatasync", broken)
    with pytest.raises(OSError, match="No space"):
        asyncio.run(_upload(tmp_path / "f", [b"x" * 4000] * 4, block_bytes=1000, sync_every=1))
