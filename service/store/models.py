"""Table definitions: datasets, estimate jobs and API keys."""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    pass


class JobStatus(enum.StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled)


#: The tenant of rows stored before tenants existed, and of every request when no key is set.
DEFAULT_TENANT = "default"


class DatasetRow(Base):
    __tablename__ = "datasets"
    # One row per content per tenant; two tenants' rows of the same bytes share the files.
    __table_args__ = (Index("ix_datasets_tenant_sha256", "tenant", "sha256", unique=True),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant: Mapped[str] = mapped_column(
        String(100), default=DEFAULT_TENANT, server_default=DEFAULT_TENANT
    )
    name: Mapped[str | None] = mapped_column(String(200))
    n: Mapped[int] = mapped_column(BigInteger)
    d: Mapped[int] = mapped_column(Integer)
    dtype: Mapped[str] = mapped_column(String(16))
    weighted: Mapped[bool] = mapped_column(Boolean)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # The feature column names, in order (None on rows from before revision 0002: x0 … x{d-1}).
    columns: Mapped[list | None] = mapped_column(JSON)


class EstimateRow(Base):
    __tablename__ = "estimates"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant: Mapped[str] = mapped_column(
        String(100), index=True, default=DEFAULT_TENANT, server_default=DEFAULT_TENANT
    )
    status: Mapped[str] = mapped_column(String(16), index=True, default=JobStatus.queued.value)
    source_id: Mapped[str] = mapped_column(ForeignKey("datasets.id"), index=True)
    target_id: Mapped[str] = mapped_column(ForeignKey("datasets.id"), index=True)
    method: Mapped[str] = mapped_column(String(16))
    crosscheck: Mapped[str] = mapped_column(String(16))
    holdout: Mapped[float] = mapped_column(Float)
    alpha: Mapped[float] = mapped_column(Float, default=0.05, server_default="0.05")
    scale: Mapped[str] = mapped_column(String(16), default="none", server_default="none")
    seed: Mapped[int] = mapped_column(BigInteger)
    config: Mapped[dict] = mapped_column(JSON, default=dict)
    request_hash: Mapped[str] = mapped_column(String(64))
    # "<tenant>\x1f<key>": one tenant's key never meets another's.
    idempotency_key: Mapped[str | None] = mapped_column(String(320), unique=True)
    progress: Mapped[dict | None] = mapped_column(JSON)
    history: Mapped[list | None] = mapped_column(JSON)
    result: Mapped[dict | None] = mapped_column(JSON)
    error: Mapped[dict | None] = mapped_column(JSON)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class ApiKeyRow(Base):
    """An API key: only the SHA-256 of its secret is kept (the secret is shown once)."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(100), index=True)
    scopes: Mapped[str] = mapped_column(String(100))  # comma-separated: read,write,admin
    name: Mapped[str | None] = mapped_column(String(200))
    secret_sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
