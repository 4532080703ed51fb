"""Persistence of datasets and estimate jobs (SQLAlchemy 2; SQLite or PostgreSQL)."""

from service.store.db import Database
from service.store.models import (
    DEFAULT_TENANT,
    ApiKeyRow,
    Base,
    DatasetRow,
    EstimateRow,
    JobStatus,
)

__all__ = [
    "DEFAULT_TENANT",
    "ApiKeyRow",
    "Base",
    "Database",
    "DatasetRow",
    "EstimateRow",
    "JobStatus",
]
