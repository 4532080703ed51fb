"""Deleting a dataset while the same bytes are uploaded again never loses data (issue 13)."""

from __future__ import annotations

import threading
import time
from collections import Counter

import numpy as np
from fastapi.testclient import TestClient
from httpx import Response

from service.store import datasets as rows

ROUNDS = 100
URL = "/v1/datasets"


def _call(start: threading.Barrier, got: dict[str, object], key: str, fn, *args) -> None:
    start.wait()
    try:
        got[key] = fn(*args) if key == "delete" else fn(args[0], json=args[1])
    except Exception as e:  # noqa: BLE001  a 500: TestClient re-raises the server's exception
        got[key] = e


def test_delete_racing_a_reupload_of_the_same_bytes(api: TestClient) -> None:
    body = {"samples": np.arange(64.0).reshape(32, 2).tolist()}
    db, blobs = api.app.state.db, api.app.state.blobs
    first = api.post("/v1/datasets", json=body)
    assert first.status_code == 201
    sha = first.json()["sha256"]
    current = first.json()["id"]
    outcomes: Counter[tuple[int, int]] = Counter()
    t0 = time.monotonic()
    for _ in range(ROUNDS):
        got: dict[str, object] = {}
        start = threading.Barrier(2)
        old = current
        threads = [
            threading.Thread(target=_call, args=(start, got, "delete", api.delete, f"{URL}/{old}")),
            threading.Thread(target=_call, args=(start, got, "upload", api.post, URL, body)),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        d, u = got["delete"], got["upload"]
        assert isinstance(d, Response) and isinstance(u, Response), (d, u)
        assert d.status_code < 500 and u.status_code < 500, (d.text, u.text)
        outcomes[(d.status_code, u.status_code)] += 1
        row = rows.by_sha(db, sha, "default")
        # A row always has its blob, and a blob always has its row (no orphan, no loss).
        assert (row is not None) == blobs.has_dataset(sha), (d.status_code, u.status_code)
        uid = u.json()["id"]
        if u.status_code == 201:
            # A new dataset: the delete ran first; the new row stays, with its blob.
            assert d.status_code == 204 and uid != current and row is not None
            assert row.id == uid
            current = uid
        else:
            # The upload found the old row, so it ran before the delete (serially): the id it
            # answered was then deleted and nothing of this content is left.
            assert u.status_code == 200 and uid == current
            assert d.status_code == 204 and row is None
            again = api.post("/v1/datasets", json=body)
            assert again.status_code == 201
            current = again.json()["id"]
        assert api.get(f"/v1/datasets/{current}").status_code == 200
        assert blobs.has_dataset(sha)
    print(f"{ROUNDS} rounds in {time.monotonic() - t0:.1f} s: {dict(outcomes)}")
