"""The dataset service: what the routes ask of datasets (store an upload once per content,
read, delete when unused), between the HTTP layer and the store. Raises ProblemError."""

from __future__ import annotations

import logging
import secrets
from pathlib import Path

from service import ingest
from service.blobs import BlobStore
from service.ingest.npy import NpyDigest
from service.problems import ProblemError
from service.settings import Settings
from service.store import DEFAULT_TENANT, Database, DatasetRow
from service.store import datasets as rows

log = logging.getLogger("lipwass.datasets")


def problem(e: ingest.IngestError) -> ProblemError:
    """An upload reader's refusal as the catalogue's problem."""
    return ProblemError(e.code, e.detail)


def columns(row: DatasetRow) -> list[str]:
    """The dataset's feature column names (rows stored before names were kept: x0 … x{d-1})."""
    return list(row.columns) if row.columns else ingest.default_columns(row.d)


def get(db: Database, dataset_id: str, tenant: str) -> DatasetRow:
    """The tenant's dataset row, or a 404 problem (another tenant's id is unknown here)."""
    row = rows.get(db, dataset_id)
    if row is None or row.tenant != tenant:
        raise ProblemError("dataset-not-found", f"no dataset with id {dataset_id!r}")
    return row


def limits(settings: Settings) -> ingest.Limits:
    return ingest.Limits(
        max_n=settings.max_n,
        max_d=settings.max_d,
        max_npy_header_bytes=settings.max_npy_header_bytes,
    )


def check_name(name: str | None, settings: Settings) -> None:
    """A dataset name is 1 to max_dataset_name_chars printable characters."""
    if name is None:
        return
    if not name or len(name) > settings.max_dataset_name_chars:
        raise ProblemError(
            "validation",
            f"name must be 1 to {settings.max_dataset_name_chars} characters, got {len(name)}",
        )
    if not name.isprintable():
        raise ProblemError("validation", "name must not hold control characters")


def ingest_and_store(
    body: Path,
    fmt: ingest.Format,
    settings: Settings,
    db: Database,
    blobs: BlobStore,
    name: str | None,
    digest: NpyDigest | None = None,
    options: ingest.Options | None = None,
    tenant: str = DEFAULT_TENANT,
) -> tuple[DatasetRow, bool]:
    """Validate and canonicalise an uploaded file, store it unless known: (row, created).

    Known means the same sha256 in the same tenant: the same numbers, weights and column names
    (``options`` pick the columns and the weights; see :mod:`service.ingest`). Tenants share
    the files of the same content, never the rows."""
    with blobs.temp_path(".npy") as out:
        try:
            ds = ingest.ingest(body, fmt, limits(settings), out, digest, options)
        except ingest.IngestError as e:
            raise problem(e) from None
        # Under the content lock, so that a delete of the same content cannot remove the files
        # between the look-up and the insert (nor this upload re-create them under a deletion).
        with db.content_lock(ds.sha256):
            existing = rows.by_sha(db, ds.sha256, tenant)
            if existing is not None:
                if not blobs.has_dataset(ds.sha256):  # repair a blob lost outside the service
                    blobs.put_dataset_file(ds.sha256, ds.samples_file, ds.weights)
                return existing, False
            blobs.put_dataset_file(ds.sha256, ds.samples_file, ds.weights)
            row = DatasetRow(
                id="ds_" + secrets.token_hex(12),
                tenant=tenant,
                name=name,
                n=ds.n,
                d=ds.d,
                dtype=ds.dtype,
                weighted=ds.weights is not None,
                sha256=ds.sha256,
                bytes=ds.bytes,
                columns=ds.columns,
            )
            return rows.insert_once(db, row)


def delete(db: Database, blobs: BlobStore, dataset_id: str, tenant: str) -> None:
    """Delete a dataset, and its files unless another tenant's row shares them; 404 if unknown,
    409 while an estimate refers to it."""
    known = get(db, dataset_id, tenant)
    with db.content_lock(known.sha256):  # the same lock as an upload of the same content
        done = rows.delete_unused(db, dataset_id)
        if done.raced:
            raise ProblemError(
                "dataset-in-use", f"dataset {dataset_id} was just taken by an estimate"
            )
        if done.active:
            raise ProblemError(
                "dataset-in-use",
                f"dataset {dataset_id} is used by {len(done.active)} queued or running "
                f"estimate(s): {', '.join(done.active[:10])}; cancel them or wait",
            )
        if done.finished:
            raise ProblemError(
                "dataset-in-use",
                f"dataset {dataset_id} is referred to by {len(done.finished)} finished "
                f"estimate(s): {', '.join(done.finished[:10])}; delete them first",
            )
        if done.sha256 is None:
            raise ProblemError("dataset-not-found", f"no dataset with id {dataset_id!r}")
        # The lock keeps out an upload of the same content until the files are gone: it then
        # finds no row and stores them afresh. Another tenant's row of it keeps the files.
        if not rows.content_used(db, done.sha256):
            blobs.delete_dataset(done.sha256)
    log.info("dataset deleted", extra={"dataset_id": dataset_id})
