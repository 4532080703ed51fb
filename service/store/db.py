"""Engine, sessions and migrations for one database URL (SQLite in WAL mode, or PostgreSQL)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

from alembic import command
from alembic.config import Config
from sqlalchemy import CursorResult, Engine, Result, create_engine, event, text
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS = Path(__file__).parent / "migrations"
MIGRATION_LOCK = 0x6C697077  # "lipw": the advisory lock key that serialises migrations
CONTENT_LOCKS = 0x6C697063  # "lipc": the advisory lock namespace of content_lock (two-key form)
_STRIPES = 64


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite gets WAL, a busy timeout and foreign keys."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


class Database:
    """One database: its engine, a session factory and its migrations."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        #: A local file (SQLite): reads are short enough to run on the event loop.
        self.local = self.engine.dialect.name == "sqlite"
        self._stripes = [threading.Lock() for _ in range(_STRIPES)]

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that commits on success and rolls back on error."""
        with self.sessions() as s:
            try:
                yield s
                s.commit()
            except BaseException:
                s.rollback()
                raise

    @contextmanager
    def content_lock(self, sha256: str) -> Iterator[None]:
        """Hold the lock of one content hash: who stores or deletes its row and files.

        In this process a lock striped by the hash (a collision only serialises two short
        sections); on PostgreSQL also a session advisory lock keyed by the hash, so that API
        replicas sharing the database and the blob volume serialise as well. SQLite means one
        API process (the embedded mode), so the process lock is all there is to take.
        """
        key = int(sha256[:16], 16)
        with self._stripes[key % _STRIPES]:
            if self.engine.dialect.name != "postgresql":
                yield
                return
            k = (key & 0x7FFFFFFF) - (key & 0x80000000)  # a signed int4
            args = {"ns": CONTENT_LOCKS, "k": k}
            with self.engine.connect() as conn:
                conn.execute(text("SELECT pg_advisory_lock(:ns, :k)"), args)
                conn.commit()
                try:
                    yield
                finally:
                    conn.execute(text("SELECT pg_advisory_unlock(:ns, :k)"), args)
                    conn.commit()

    def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision.

        On PostgreSQL under an advisory lock, so that API replicas and workers starting together
        do not race on the schema: the loser waits, then finds it done.
        """
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        cfg.attributes["connection_url"] = self.url
        if self.engine.dialect.name != "postgresql":
            with self.engine.begin() as conn:
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
            return
        with self.engine.connect() as lock_conn:
            lock_conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATION_LOCK})
            try:
                with self.engine.begin() as conn:
                    cfg.attributes["connection"] = conn
                    command.upgrade(cfg, "head")
            finally:
                lock_conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATION_LOCK})
                lock_conn.commit()

    def ping(self) -> None:
        """Raise if the database cannot be reached."""
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def dispose(self) -> None:
        self.engine.dispose()


def rowcount(result: Result[Any]) -> int:
    """Rows an UPDATE or DELETE matched (the typed view of ``CursorResult.rowcount``)."""
    return cast(CursorResult[Any], result).rowcount
