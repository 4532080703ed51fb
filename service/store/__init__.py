"""Persistence of datasets and estimate jobs (SQLAlchemy 2; SQLite or PostgreSQL)."""

from service.store.db import Database
from service.store.models import Base, DatasetRow, EstimateRow, JobStatus

__all__ = ["Base", "Database", "DatasetRow", "EstimateRow", "JobStatus"]
