"""Structured (JSON lines) logging; a job id travels in ``extra={"job_id": ...}``."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

_FIELDS = ("job_id", "attempt", "dataset_id", "method", "status", "path", "seconds")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in _FIELDS:
            if hasattr(record, key):
                out[key] = getattr(record, key)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_logging(level: str = "INFO") -> None:
    """Send lipwass's logs to stderr as JSON lines (once per process)."""
    root = logging.getLogger("lipwass")
    root.setLevel(level.upper())
    if not any(getattr(h, "_lipwass", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        handler._lipwass = True  # type: ignore[attr-defined]
        root.addHandler(handler)
        root.propagate = False
