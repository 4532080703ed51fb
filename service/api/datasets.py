"""Routes: datasets. Uploads are streamed to the blob volume, validated, canonicalised, hashed.

``POST /v1/datasets`` never holds the body in memory: its chunks go to a temporary file next to
the blobs through an :class:`~service.ingest.stream.UploadSink` (a worker thread writes, flushes
and, for ``.npy``, hashes and checks the data as it arrives), with a 413 as soon as the count
passes the limit and a 4xx as soon as a ``.npy`` header is refused. The file is then parsed and
converted to the canonical ``.npy`` in bounded chunks (``service.ingest``) off the event loop; a
canonical ``.npy`` upload is moved into the store as it is. The same data sent twice, in any
format, is one dataset (200 with the existing one instead of 201).
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import os
import secrets
import time
from datetime import datetime
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from service import ingest
from service.api import errors
from service.api.deps import BlobsDep, DbDep, SettingsDep
from service.api.errors import ProblemError
from service.api.pagination import page
from service.blobs import BlobStore
from service.ingest.npy import NpyDigest
from service.ingest.stream import UploadSink
from service.settings import Settings
from service.store import Database, DatasetRow, EstimateRow, JobStatus

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])
log = logging.getLogger("lipwass.api.datasets")

ACTIVE = (JobStatus.queued.value, JobStatus.running.value)


class Dataset(BaseModel):
    """A stored dataset: n samples in d dimensions, optionally weighted (weights sum to 1)."""

    id: str = Field(description="Opaque id, prefixed ds_.")
    name: str | None = Field(description="The ?name= given at the first upload of this data.")
    n: int = Field(description="Number of samples (rows).")
    d: int = Field(description="Dimension (columns).")
    dtype: Literal["float32", "float64"] = Field(description="Stored float type.")
    weighted: bool = Field(description="Whether weights were uploaded (else uniform).")
    sha256: str = Field(description="Canonical hash of dtype, shape, samples and weights.")
    bytes: int = Field(description="Stored size: samples, plus 8 bytes per sample if weighted.")
    created_at: datetime


class DatasetList(BaseModel):
    """One page of datasets, newest first."""

    items: list[Dataset]
    total: int
    limit: int
    offset: int
    next_offset: int | None = Field(description="Offset of the next page; null on the last one.")


def to_model(row: DatasetRow) -> Dataset:
    return Dataset(
        id=row.id,
        name=row.name,
        n=row.n,
        d=row.d,
        dtype=row.dtype,  # type: ignore[arg-type]
        weighted=row.weighted,
        sha256=row.sha256,
        bytes=row.bytes,
        created_at=row.created_at,
    )


def _problem(e: ingest.IngestError) -> ProblemError:
    return ProblemError(e.status, e.title, e.detail, type=e.type)


def _not_found(dataset_id: str) -> ProblemError:
    return ProblemError(
        404,
        "Dataset not found",
        f"no dataset with id {dataset_id!r}",
        type="/problems/dataset-not-found",
    )


def _limits(settings: Settings) -> ingest.Limits:
    return ingest.Limits(
        max_n=settings.max_n,
        max_d=settings.max_d,
        max_npy_header_bytes=settings.max_npy_header_bytes,
    )


def _check_name(name: str | None, settings: Settings) -> None:
    if name is None:
        return
    if not name or len(name) > settings.max_dataset_name_chars:
        raise ProblemError(
            422,
            "Invalid request",
            f"name must be 1 to {settings.max_dataset_name_chars} characters, got {len(name)}",
            type="/problems/validation",
        )
    if not name.isprintable():
        raise ProblemError(
            422,
            "Invalid request",
            "name must not hold control characters",
            type="/problems/validation",
        )


def _body_limit(request: Request, fmt: ingest.Format, settings: Settings) -> int:
    """The byte limit of this body; 413 at once when Content-Length already says it is over."""
    limit = settings.max_body_bytes
    what = "upload"
    if fmt.text:
        limit = min(limit, settings.max_json_bytes)
        what = f"{fmt.name.upper()} upload"
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            length = int(declared)
        except ValueError:
            length = -1
        if length < 0:
            raise ProblemError(
                400,
                "Bad request",
                f"invalid Content-Length {declared[:40]!r}",
                type="/problems/invalid-upload",
            )
        if length > limit:
            raise _problem(
                ingest.too_large(f"the {what} is {length} bytes; the limit is {limit} bytes")
            )
    return limit


def _fail_early(sink: UploadSink, limit: int) -> None:
    """Stop a .npy upload whose header is already known to be refused (or too large)."""
    digest = sink.digest
    if digest is None:
        return
    if digest.failure is not None:
        raise _problem(digest.failure)
    if digest.announced is not None and digest.announced > limit:
        detail = f"the .npy header announces {digest.announced} bytes; the limit is {limit} bytes"
        raise _problem(ingest.too_large(detail))


async def _receive(request: Request, sink: UploadSink, limit: int, fmt: ingest.Format) -> int:
    """Stream the body into ``sink``, counting; 413 as soon as the count passes ``limit``."""
    try:
        async for chunk in request.stream():
            if sink.total + len(chunk) > limit:
                raise _problem(
                    ingest.too_large(
                        f"the {fmt.name} upload is more than the limit of {limit} bytes"
                    )
                )
            await sink.write(chunk)
            _fail_early(sink, limit)
        await sink.finish()
        _fail_early(sink, limit)
    except ClientDisconnect:
        raise ProblemError(
            400,
            "Bad request",
            "the client disconnected during the upload",
            type="/problems/invalid-upload",
        ) from None
    return sink.total


def _discard_later(path: Path) -> None:
    """Remove a left-over upload file off the event loop (unlinking GBs takes a while).

    Renamed first (instant), so that ``temp_path``'s own clean-up finds nothing to do; a crash
    before the removal leaves it to the start-up sweep of temporary files.
    """
    if not path.exists():  # moved into the store
        return
    doomed = path.with_name(path.name + ".discard")
    try:
        os.replace(path, doomed)
    except OSError:
        return
    asyncio.get_running_loop().run_in_executor(None, functools.partial(doomed.unlink, True))


def _by_sha(db: Database, sha256: str) -> DatasetRow | None:
    with db.session() as s:
        return s.execute(select(DatasetRow).where(DatasetRow.sha256 == sha256)).scalar_one_or_none()


def _ingest_and_store(
    body: Path,
    fmt: ingest.Format,
    settings: Settings,
    db: Database,
    blobs: BlobStore,
    name: str | None,
    digest: NpyDigest | None = None,
) -> tuple[DatasetRow, bool]:
    """Validate and canonicalise the body, store it unless known: (row, created)."""
    with blobs.temp_path(".npy") as out:
        try:
            ds = ingest.ingest(body, fmt, _limits(settings), out, digest)
        except ingest.IngestError as e:
            raise _problem(e) from None
        existing = _by_sha(db, ds.sha256)
        if existing is not None:
            if not blobs.has_dataset(ds.sha256):  # repair a blob lost outside the service
                blobs.put_dataset_file(ds.sha256, ds.samples_file, ds.weights)
            return existing, False
        blobs.put_dataset_file(ds.sha256, ds.samples_file, ds.weights)
        row = DatasetRow(
            id="ds_" + secrets.token_hex(12),
            name=name,
            n=ds.n,
            d=ds.d,
            dtype=ds.dtype,
            weighted=ds.weights is not None,
            sha256=ds.sha256,
            bytes=ds.bytes,
        )
        try:
            with db.session() as s:
                s.add(row)
        except IntegrityError:
            # The same data was uploaded concurrently and its row won the unique sha256.
            existing = _by_sha(db, ds.sha256)
            if existing is None:
                raise
            return existing, False
        return row, True


_BODY = {"type": "string", "format": "binary"}
_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "description": "The samples, in one of four formats chosen by Content-Type.",
        "content": {
            "application/octet-stream": {"schema": _BODY},
            "application/x-npy": {"schema": _BODY},
            "application/vnd.apache.arrow.stream": {"schema": _BODY},
            "text/csv": {"schema": {"type": "string"}},
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["samples"],
                    "properties": {
                        "samples": {
                            "type": "array",
                            "items": {"type": "array", "items": {"type": "number"}},
                        },
                        "weights": {"type": "array", "items": {"type": "number"}},
                    },
                    "additionalProperties": False,
                }
            },
        },
    }
}


@router.post(
    "",
    status_code=201,
    response_model=Dataset,
    summary="Upload a dataset (.npy, Arrow IPC stream, CSV or JSON)",
    description=(
        "`.npy` (`application/octet-stream` or `application/x-npy`; float16/32/64, C order, "
        "1-D or 2-D), Arrow IPC stream (`application/vnd.apache.arrow.stream`; float columns "
        "and an optional `weight` column), CSV (`text/csv`; header row; optional `weight` "
        'column) or JSON (`{"samples": [[...]], "weights": [...]}`). Weights must be '
        "non-negative with a positive sum and are normalised to sum 1. Answers 201 with "
        "`Location` for new data, 200 with the existing dataset when the same data (same "
        "dtype) was uploaded before, in any format."
    ),
    responses={
        201: {
            "description": "Created.",
            "headers": {"Location": {"schema": {"type": "string"}}},
        },
        200: {"model": Dataset, "description": "The same data was uploaded before."},
        **errors.responses(400, 413, 415, 422, 507),
    },
    openapi_extra=_UPLOAD_BODY,
)
async def create_dataset(
    request: Request,
    response: Response,
    settings: SettingsDep,
    db: DbDep,
    blobs: BlobsDep,
    name: Annotated[
        str | None, Query(description="A label for the dataset (kept from the first upload).")
    ] = None,
) -> Dataset:
    try:
        fmt = ingest.format_for(request.headers.get("content-type"))
    except ingest.IngestError as e:
        raise _problem(e) from None
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise _problem(
            ingest.unsupported(
                f"Content-Encoding {encoding[:40]!r} is not accepted: send the body uncompressed"
            )
        )
    _check_name(name, settings)
    limit = _body_limit(request, fmt, settings)
    limits = _limits(settings)
    t0 = time.perf_counter()
    try:
        with blobs.temp_path(f".{fmt.name}") as body:
            try:
                async with UploadSink(body, limits, digest=fmt.name == "npy") as sink:
                    total = await _receive(request, sink, limit, fmt)
                if total == 0:
                    raise _problem(ingest.invalid("the body is empty"))
                t1 = time.perf_counter()
                row, created = await run_in_threadpool(
                    _ingest_and_store, body, fmt, settings, db, blobs, name, sink.digest
                )
            finally:
                _discard_later(body)
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        log.error("dataset upload: the blob volume is full (%s)", e)
        raise ProblemError(
            507,
            "Insufficient storage",
            "the server's dataset storage is full; try again later or delete datasets",
            type="/problems/insufficient-storage",
        ) from None
    t2 = time.perf_counter()
    log.info(
        "dataset upload %s: %d bytes of %s, received in %.3f s, validated and stored in %.3f s",
        "created" if created else "known",
        total,
        fmt.name,
        t1 - t0,
        t2 - t1,
        extra={"dataset_id": row.id, "seconds": round(t2 - t0, 4)},
    )
    if created:
        response.headers["Location"] = f"/v1/datasets/{row.id}"
    else:
        response.status_code = 200
    return to_model(row)


@router.get(
    "",
    response_model=DatasetList,
    summary="List datasets, newest first",
    responses=errors.responses(422),
)
def list_datasets(
    db: DbDep,
    settings: SettingsDep,
    limit: Annotated[int, Query(ge=1, le=1000, description="Page size.")] = 100,
    offset: Annotated[int, Query(ge=0, le=2**62)] = 0,
    name: Annotated[
        str | None, Query(max_length=200, description="Only datasets with exactly this name.")
    ] = None,
    sha256: Annotated[
        str | None,
        Query(
            pattern="^[0-9a-f]{64}$",
            description="Only the dataset with this canonical hash: ask before uploading.",
        ),
    ] = None,
) -> DatasetList:
    if limit > settings.max_page_size:
        raise ProblemError(
            422,
            "Invalid request",
            f"limit {limit} is over this server's page size limit of {settings.max_page_size}",
            type="/problems/validation",
        )
    where = []
    if name is not None:
        where.append(DatasetRow.name == name)
    if sha256 is not None:
        where.append(DatasetRow.sha256 == sha256)
    rows, total, nxt = page(db, DatasetRow, where, limit, offset)
    return DatasetList(
        items=[to_model(r) for r in rows], total=total, limit=limit, offset=offset, next_offset=nxt
    )


@router.get(
    "/{dataset_id}",
    response_model=Dataset,
    summary="Get a dataset",
    responses=errors.responses(404, 422),
)
def get_dataset(dataset_id: str, db: DbDep) -> Dataset:
    with db.session() as s:
        row = s.get(DatasetRow, dataset_id)
    if row is None:
        raise _not_found(dataset_id)
    return to_model(row)


@router.delete(
    "/{dataset_id}",
    status_code=204,
    summary="Delete a dataset (409 while an estimate uses it)",
    description=(
        "Refused with 409 while a queued or running estimate uses the dataset, and while "
        "finished estimates still refer to it (delete those first). Removes the stored files."
    ),
    responses={204: {"description": "Deleted."}, **errors.responses(404, 409, 422)},
)
def delete_dataset(dataset_id: str, db: DbDep, blobs: BlobsDep) -> Response:
    uses = (EstimateRow.source_id == dataset_id) | (EstimateRow.target_id == dataset_id)
    try:
        with db.session() as s:
            row = s.get(DatasetRow, dataset_id)
            if row is None:
                raise _not_found(dataset_id)
            users = s.execute(select(EstimateRow.id, EstimateRow.status).where(uses)).all()
            active = [i for i, st in users if st in ACTIVE]
            if active:
                raise ProblemError(
                    409,
                    "Dataset in use",
                    f"dataset {dataset_id} is used by {len(active)} queued or running "
                    f"estimate(s): {', '.join(active[:10])}; cancel them or wait",
                    type="/problems/dataset-in-use",
                )
            if users:
                ids = [i for i, _ in users]
                raise ProblemError(
                    409,
                    "Dataset in use",
                    f"dataset {dataset_id} is referred to by {len(ids)} finished estimate(s): "
                    f"{', '.join(ids[:10])}; delete them first",
                    type="/problems/dataset-in-use",
                )
            sha = row.sha256
            s.delete(row)
    except IntegrityError:
        # An estimate referring to it was created between the check and the delete.
        raise ProblemError(
            409,
            "Dataset in use",
            f"dataset {dataset_id} was just taken by a new estimate",
            type="/problems/dataset-in-use",
        ) from None
    if _by_sha(db, sha) is None:  # sha256 is unique: no other row points at these blobs
        blobs.delete_dataset(sha)
    return Response(status_code=204)
