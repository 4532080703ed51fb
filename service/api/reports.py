"""Routes: the estimate's report picture (``GET /v1/estimates/{id}/report.png``).

The route gathers the job row, both datasets and the potential file; :mod:`service.report` draws.
A finished job never changes, so its PNG is cached (a few per process) under (id, finished_at).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from typing import Any

import numpy as np
from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

import lipcore
from service import report
from service.api import errors
from service.api.deps import Reader
from service.blobs import BlobStore
from service.problems import ProblemError
from service.settings import Settings
from service.store import Database, DatasetRow, EstimateRow, JobStatus

router = APIRouter(tags=["estimates"])
PNG = "image/png"
CACHE_SIZE = 16
REPORT_BYTES = 64 * 1024**2  # float64 bytes per set the report evaluates at most
log = logging.getLogger("lipwass.report")


class _PngCache:
    def __init__(self, size: int = CACHE_SIZE) -> None:
        self.size = size
        self.items: OrderedDict[tuple[str, str], bytes] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, key: tuple[str, str]) -> bytes | None:
        with self.lock:
            png = self.items.get(key)
            if png is not None:
                self.items.move_to_end(key)
            return png

    def put(self, key: tuple[str, str], png: bytes) -> None:
        with self.lock:
            self.items[key] = png
            self.items.move_to_end(key)
            while len(self.items) > self.size:
                self.items.popitem(last=False)


def _cache(request: Request) -> _PngCache:
    state = request.app.state
    cache = getattr(state, "report_cache", None)
    if cache is None:
        cache = state.report_cache = _PngCache()
    return cache


def _load_row(
    db: Database, estimate_id: str, tenant: str
) -> tuple[EstimateRow, DatasetRow | None, DatasetRow | None]:
    with db.session() as s:
        row = s.get(EstimateRow, estimate_id)
        if row is None or row.tenant != tenant:
            raise ProblemError("estimate-not-found", f"No estimate with id {estimate_id!r}.")
        src = s.get(DatasetRow, row.source_id)
        tgt = s.get(DatasetRow, row.target_id)
        s.expunge_all()
    return row, src, tgt


def build_png(
    settings: Settings,
    blobs: BlobStore,
    row: EstimateRow,
    src: DatasetRow | None,
    tgt: DatasetRow | None,
) -> bytes:
    """Gather the inputs of one finished job and draw its report (blocking; run off the loop)."""
    result: dict[str, Any] | None = row.result if isinstance(row.result, dict) else None
    inp = report.ReportInputs(
        title=report.headline(
            row.status, result, f"{row.id}: {row.source_id} -> {row.target_id} ({row.status})"
        ),
        numbers=report.summary_numbers(row.status, result, row.error),
        notes=list((result or {}).get("notes") or []),
        features=list((result or {}).get("features") or []),
    )
    if row.history:
        hist = np.asarray(row.history, dtype=float)
        if hist.ndim == 2 and hist.shape[1] >= 2 and len(hist):
            inp.history = hist[:, :2]
    ppath = blobs.potential_path(row.id)
    usable = (
        result is not None
        and result.get("lipschitz_constant") is not None
        and ppath.exists()
        and src is not None
        and tgt is not None
        and blobs.has_dataset(src.sha256)
        and blobs.has_dataset(tgt.sha256)
    )
    if usable:
        assert src is not None and tgt is not None and result is not None  # usable says so
        try:
            model = lipcore.load_potential(ppath)
            x, a = blobs.load_dataset(src.sha256, mmap=True)
            y, b = blobs.load_dataset(tgt.sha256, mmap=True)
            # At most ~REPORT_BYTES of samples per set, whatever d is.
            rows = max(100, REPORT_BYTES // (8 * max(1, x.shape[1])))
            report.potential_views(
                inp,
                model,
                float(result.get("potential_center") or 0.0),
                float(result["lipschitz_constant"]),
                x,
                a,
                y,
                b,
                max_points=min(settings.report_max_points, rows),
                grid=settings.report_grid,
                seed=int(row.seed),
            )
        except Exception:
            log.warning("report: potential unreadable", extra={"job_id": row.id}, exc_info=True)
            inp.g_source = inp.g_target = inp.grid_g = None
            inp.notes.append("the stored potential could not be read: no histograms")
    elif result is not None and result.get("method") == "lipschitz":
        inp.notes.append("potential or datasets no longer stored: no histograms")
    return report.render_png(inp)


@router.get(
    "/v1/estimates/{estimate_id}/report.png",
    summary="A picture of a finished estimate",
    response_class=Response,
    responses={
        200: {"content": {PNG: {}}, "description": "The report as a PNG image."},
        **errors.responses(404, 409, 422),
    },
)
async def get_report(estimate_id: str, request: Request, who: Reader) -> Response:
    """Training objective, histograms of g = (f - c)/L on both sets, for d = 2 a heat map of g
    under the two samples, and the numbers. An exact-only job gets the numbers alone."""
    settings: Settings = request.app.state.settings
    blobs: BlobStore = request.app.state.blobs
    db = request.app.state.db
    row, src, tgt = await run_in_threadpool(_load_row, db, estimate_id, who.tenant)
    if not JobStatus(row.status).finished:
        raise ProblemError(
            "estimate-not-finished",
            f"estimate {estimate_id} is {row.status}; the report exists once it has finished",
            headers={"Retry-After": "2"},
        )
    key = (row.id, str(row.finished_at))
    cache = _cache(request)
    png = cache.get(key)
    if png is None:
        png = await run_in_threadpool(build_png, settings, blobs, row, src, tgt)
        cache.put(key, png)
    return Response(png, media_type=PNG, headers={"Cache-Control": "private, max-age=3600"})
