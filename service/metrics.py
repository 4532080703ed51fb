"""Prometheus metrics: one registry per application, filled by an ASGI middleware and the store.

Request counts and latencies are observed in this process by :class:`MetricsMiddleware`. Job and
dataset figures are read from the store at scrape time (:class:`StoreCollector`), so every API
replica reports the same numbers and nothing is lost when a process restarts. Bytes uploaded are
counted twice on purpose: ``lipwass_upload_bytes_total`` counts the request bodies this process
received on ``POST /v1/datasets`` (duplicates included; the middleware counts them, so no route
has to call anything), ``lipwass_datasets_bytes`` sums what the store holds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.store import Database, DatasetRow, EstimateRow, JobStatus

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
UNMATCHED = "<unmatched>"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
JOB_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200)
FINISHED = tuple(s.value for s in JobStatus if s.finished)
log = logging.getLogger("lipwass.metrics")


class JobSecondsCache:
    """Bucket counts of finished jobs' durations, read incrementally from the store.

    Finished rows never change, so each scrape only reads rows finished since the last one (with
    a slack window for rows committed late); ids seen inside that window are remembered so no job
    is counted twice. Deleting a job does not uncount it: the histogram only grows.
    """

    SLACK = timedelta(seconds=120)

    def __init__(self, buckets: tuple[float, ...] = JOB_BUCKETS) -> None:
        self.buckets = buckets
        self.counts: dict[str, list[int]] = {}
        self.sums: dict[str, float] = {}
        self.watermark: datetime | None = None
        self.recent: dict[str, datetime] = {}
        self.lock = threading.Lock()

    @staticmethod
    def seconds(row: Any) -> float | None:
        """result.seconds for a job that has one, else its wall time (started -> finished)."""
        result = row.result if isinstance(row.result, dict) else None
        if result is not None and isinstance(result.get("seconds"), int | float):
            return max(float(result["seconds"]), 0.0)
        if row.started_at is not None and row.finished_at is not None:
            return max((row.finished_at - row.started_at).total_seconds(), 0.0)
        return None

    def observe(self, status: str, value: float) -> None:
        counts = self.counts.setdefault(status, [0] * len(self.buckets))
        for i, upper in enumerate(self.buckets):
            if value <= upper:
                counts[i] += 1
        self.sums[status] = self.sums.get(status, 0.0) + value
        self.counts.setdefault(status + "#total", [0])[0] += 1

    def refresh(self, db: Database) -> None:
        with self.lock:
            q = select(
                EstimateRow.id,
                EstimateRow.status,
                EstimateRow.result,
                EstimateRow.started_at,
                EstimateRow.finished_at,
            ).where(EstimateRow.status.in_(FINISHED), EstimateRow.finished_at.is_not(None))
            if self.watermark is not None:
                q = q.where(EstimateRow.finished_at >= self.watermark - self.SLACK)
            with db.session() as s:
                rows = s.execute(q).all()
            for row in rows:
                if row.id in self.recent:
                    continue
                value = self.seconds(row)
                self.recent[row.id] = row.finished_at
                if value is not None:
                    self.observe(row.status, value)
                if self.watermark is None or row.finished_at > self.watermark:
                    self.watermark = row.finished_at
            if self.watermark is not None:
                cutoff = self.watermark - self.SLACK
                self.recent = {k: v for k, v in self.recent.items() if v >= cutoff}

    def family(self) -> HistogramMetricFamily:
        fam = HistogramMetricFamily(
            "lipwass_job_seconds",
            "Duration of finished jobs (result.seconds, else started -> finished), by status.",
            labels=["status"],
        )
        with self.lock:
            for status in FINISHED:
                counts = self.counts.get(status)
                if counts is None:
                    continue
                total = self.counts[status + "#total"][0]
                buckets = [(_fmt(b), float(c)) for b, c in zip(self.buckets, counts, strict=True)]
                buckets.append(("+Inf", float(total)))
                fam.add_metric([status], buckets, sum_value=self.sums[status])
        return fam


def _fmt(bound: float) -> str:
    return str(float(bound))


class StoreCollector(Collector):
    """Figures read from the store at scrape time: jobs by status, job seconds, datasets."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.job_seconds = JobSecondsCache()

    def collect(self) -> Iterable[Metric]:
        try:
            yield from self._collect()
        except Exception:
            log.warning("metrics: the store could not be read", exc_info=True)
            ok = 0.0
        else:
            ok = 1.0
        yield GaugeMetricFamily(
            "lipwass_store_scrape_ok", "1 if the store figures of this scrape are fresh.", value=ok
        )

    def _collect(self) -> Iterator[Metric]:
        with self.db.session() as s:
            by_status = dict(
                s.execute(
                    select(EstimateRow.status, func.count()).group_by(EstimateRow.status)
                ).all()
            )
            n_datasets, n_bytes = s.execute(
                select(func.count(), func.coalesce(func.sum(DatasetRow.bytes), 0))
            ).one()
        jobs = GaugeMetricFamily(
            "lipwass_jobs", "Estimate jobs in the store, by status.", labels=["status"]
        )
        for status in JobStatus:
            jobs.add_metric([status.value], float(by_status.get(status.value, 0)))
        yield jobs
        yield GaugeMetricFamily(
            "lipwass_datasets", "Datasets in the store.", value=float(n_datasets)
        )
        yield GaugeMetricFamily(
            "lipwass_datasets_bytes", "Bytes of the datasets in the store.", value=float(n_bytes)
        )
        self.job_seconds.refresh(self.db)
        yield self.job_seconds.family()


class Metrics:
    """The metrics of one application (its own registry, so tests can build many apps)."""

    def __init__(self, db: Database | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.requests = Counter(
            "lipwass_http_requests",
            "HTTP requests by method, route template and status code.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "lipwass_http_request_seconds",
            "HTTP request latency (until the response body ended), by method and route template.",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.uploaded = Counter(
            "lipwass_upload_bytes",
            "Request body bytes received by POST /v1/datasets (this process, duplicates included).",
            registry=self.registry,
        )
        if db is not None:
            self.registry.register(StoreCollector(db))

    def render(self) -> bytes:
        """The registry in Prometheus' text format."""
        return generate_latest(self.registry)


def route_template(scope: Scope) -> str:
    """The matched route's path template (bounded label values), or ``<unmatched>``."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED


class MetricsMiddleware:
    """Counts requests and observes their latency by route template; counts upload bytes."""

    def __init__(self, app: ASGIApp, metrics: Metrics, upload_path: str = "/v1/datasets") -> None:
        self.app = app
        self.metrics = metrics
        self.upload_path = upload_path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        received = 0
        counting = scope.get("method") == "POST" and scope.get("path") == self.upload_path

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
            return message

        async def observed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, counted_receive if counting else receive, observed_send)
        finally:
            method = scope.get("method", "")
            route = route_template(scope)
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.latency.labels(method, route).observe(time.perf_counter() - start)
            if received:
                self.metrics.uploaded.inc(received)


def iter_samples(text: str, name: str) -> Iterator[tuple[dict[str, str], float]]:
    """(labels, value) of the samples called ``name`` in a text exposition (tests, bench)."""
    from prometheus_client.parser import text_string_to_metric_families

    for fam in text_string_to_metric_families(text):
        for sample in fam.samples:
            if sample.name == name:
                yield dict(sample.labels), float(sample.value)
