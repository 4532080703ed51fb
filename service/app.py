"""create_app(settings): wires settings, store, blobs, executor and routes into one FastAPI app."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from service.api import datasets, errors, estimates, ops, reports
from service.api.limits import BodyLimitMiddleware
from service.api.pages import declare_page_limit
from service.auth import Authenticator, parse_env_keys
from service.blobs import BlobStore
from service.executors import make_executor
from service.executors.base import Executor
from service.logs import setup_logging
from service.metrics import Metrics, MetricsMiddleware
from service.quotas import UploadRate
from service.settings import Settings
from service.store import Database
from service.watch import Watcher
from service.web import install as install_web


def create_app(settings: Settings | None = None, executor: Executor | None = None) -> FastAPI:
    """The application. ``executor`` replaces the one the settings select (a seam for tests)."""
    settings = settings or Settings()
    setup_logging(settings.log_level)
    settings.ensure_dirs()
    db = Database(settings.resolved_database_url)
    if settings.migrate_on_start:
        db.migrate()
    blobs = BlobStore(settings.data_dir / "blobs")
    # Temporary files whose writer is gone (uploads cut short by a crash): in the embedded mode
    # all but those of running processes of this host; with replicas sharing the volume, also
    # other hosts' files only past the grace.
    blobs.sweep_tmp(settings.blob_tmp_max_age_s, only_writer=settings.is_embedded)
    executor = executor or make_executor(settings, db, blobs)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        executor.start()
        try:
            yield
        finally:
            executor.stop()
            db.dispose()

    app = FastAPI(
        title="lipwass",
        version="1",
        summary="Certified Wasserstein-1 distances from 1-Lipschitz neural potentials.",
        lifespan=lifespan,
        docs_url=None,  # /docs and /redoc: service.web, from local assets (no CDN)
        redoc_url=None,
        generate_unique_id_function=lambda route: route.name,  # operationId: the function
    )
    app.state.settings = settings
    app.state.db = db
    app.state.auth = Authenticator(db, parse_env_keys(settings.api_keys), settings.auth_cache_s)
    app.state.upload_rate = UploadRate(settings.max_uploads_per_minute)
    app.state.watcher = Watcher(db, settings.events_poll_s)
    app.state.blobs = blobs
    app.state.executor = executor
    app.state.metrics = Metrics(db)
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_request_bytes)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    errors.install(app)
    app.include_router(ops.router)
    app.include_router(datasets.router)
    app.include_router(estimates.router)
    app.include_router(reports.router)
    install_web(app)  # the web page (/), /docs and /redoc, /static/...
    declare_page_limit(app, settings.max_page_size)
    return app
