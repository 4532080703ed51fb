"""The job lifecycle's conditional updates (service.store.jobs) and the reaper, on SQLite and,
when ``LIPWASS_TEST_DATABASE_URL`` is set, on PostgreSQL (a fresh schema per test session)."""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from urllib.parse import quote

import pytest
from sqlalchemy import create_engine, text, update

from service.reaper import Reaper
from service.settings import Settings
from service.store import Database, DatasetRow, EstimateRow, JobStatus, jobs
from service.store.models import utcnow

PG_ENV = "LIPWASS_TEST_DATABASE_URL"
REQUIRED = os.environ.get("LIPWASS_REQUIRE_DISTRIBUTED") == "1"


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A PostgreSQL URL whose search_path is a fresh schema, dropped at the end of the session."""
    base = os.environ.get(PG_ENV)
    if not base:
        if REQUIRED:
            pytest.fail(f"{PG_ENV} is not set but LIPWASS_REQUIRE_DISTRIBUTED=1")
        pytest.skip(f"PostgreSQL tests need {PG_ENV} (e.g. postgresql+psycopg://.../test)")
    schema = f"lipwass_jobs_{uuid.uuid4().hex[:10]}"
    engine = create_engine(base)
    try:
        with engine.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    except Exception as exc:  # noqa: BLE001 - unreachable server: skip or fail with the reason
        engine.dispose()
        msg = f"PostgreSQL at {PG_ENV} unreachable: {type(exc).__name__}: {exc}"
        if REQUIRED:
            pytest.fail(msg)
        pytest.skip(msg)
    sep = "&" if "?" in base else "?"
    yield f"{base}{sep}options={quote(f'-csearch_path={schema}')}"
    with engine.begin() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A migrated, empty database on each backend."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'jobs.db'}"
    else:
        url = request.getfixturevalue("pg_url")
    database = Database(url)
    database.migrate()
    with database.session() as s:
        s.execute(text("DELETE FROM estimates"))
        s.execute(text("DELETE FROM datasets"))
    yield database
    database.dispose()


def new_job(db: Database) -> str:
    """A queued job between two (blob-less) dataset rows."""
    ds = f"ds_{uuid.uuid4().hex[:12]}"
    est = f"est_{uuid.uuid4().hex[:12]}"
    with db.session() as s:
        s.add(
            DatasetRow(
                id=ds, name=None, n=3, d=1, dtype="float64", weighted=False,
                sha256=uuid.uuid4().hex + uuid.uuid4().hex, bytes=24,
            )
        )  # fmt: skip
        s.flush()
        s.add(
            EstimateRow(
                id=est, source_id=ds, target_id=ds, method="exact", crosscheck="never",
                holdout=0.2, seed=0, config={}, request_hash="h",
            )
        )  # fmt: skip
    return est


def expire(db: Database, job_id: str) -> None:
    """Move a running job's lease into the past (its worker 'died')."""
    with db.session() as s:
        s.execute(
            update(EstimateRow)
            .where(EstimateRow.id == job_id)
            .values(lease_expires_at=utcnow() - timedelta(seconds=5))
        )


def row(db: Database, job_id: str) -> EstimateRow:
    with db.session() as s:
        r = s.get(EstimateRow, job_id)
        assert r is not None
        return r


def test_claim_is_exclusive(db: Database) -> None:
    job = new_job(db)
    c = jobs.claim(db, job, "w1", lease_s=30, max_attempts=3)
    assert c is not None and c.attempt == 1
    assert jobs.claim(db, job, "w2", lease_s=30, max_attempts=3) is None
    r = row(db, job)
    assert (r.status, r.attempt, r.lease_owner) == ("running", 1, "w1")
    assert r.started_at is not None and r.lease_expires_at > utcnow()


def test_concurrent_claims_have_one_winner(db: Database) -> None:
    job = new_job(db)
    wins: list[jobs.Claim] = []
    barrier = threading.Barrier(6)

    def go(i: int) -> None:
        barrier.wait()
        c = jobs.claim(db, job, f"w{i}", lease_s=30, max_attempts=3)
        if c is not None:
            wins.append(c)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1 and wins[0].attempt == 1


def test_expired_lease_is_claimable_and_stale_attempt_cannot_write(db: Database) -> None:
    job = new_job(db)
    first = jobs.claim(db, job, "w1", lease_s=30, max_attempts=3)
    assert first is not None
    expire(db, job)
    second = jobs.claim(db, job, "w2", lease_s=30, max_attempts=3)
    assert second is not None and second.attempt == 2
    assert jobs.heartbeat(db, first, 30) == (False, False)
    assert not jobs.finish(db, first, JobStatus.succeeded, result={"w1": 1.0})
    assert jobs.heartbeat(db, second, 30, progress={"step": 3}) == (True, False)
    assert jobs.finish(db, second, JobStatus.succeeded, result={"w1": 2.0}, history=[[1, 0.5]])
    assert not jobs.finish(db, second, JobStatus.failed, error={"type": "x"})
    r = row(db, job)
    assert (r.status, r.attempt, r.result, r.error) == ("succeeded", 2, {"w1": 2.0}, None)
    assert r.history == [[1, 0.5]] and r.progress == {"step": 3}
    assert r.finished_at is not None and r.lease_expires_at is None


def test_claim_respects_max_attempts(db: Database) -> None:
    job = new_job(db)
    c = jobs.claim(db, job, "w1", lease_s=30, max_attempts=1)
    assert c is not None
    expire(db, job)
    assert jobs.claim(db, job, "w2", lease_s=30, max_attempts=1) is None


def test_cancel_queued_ends_it_now(db: Database) -> None:
    job = new_job(db)
    assert jobs.request_cancel(db, job) == "cancelled"
    assert jobs.claim(db, job, "w1", lease_s=30, max_attempts=3) is None
    assert row(db, job).finished_at is not None
    assert jobs.request_cancel(db, "est_nope") is None


def test_cancel_running_flags_the_worker(db: Database) -> None:
    job = new_job(db)
    c = jobs.claim(db, job, "w1", lease_s=30, max_attempts=3)
    assert c is not None
    assert jobs.request_cancel(db, job) == "running"
    assert jobs.heartbeat(db, c, 30) == (True, True)
    assert jobs.finish(db, c, JobStatus.cancelled)
    assert row(db, job).status == "cancelled"
    # Cancelling a finished job changes nothing.
    assert jobs.request_cancel(db, job) == "cancelled"


def test_reap_requeues_fails_and_cancels(db: Database) -> None:
    requeue, exhaust, cancelled, alive = (new_job(db) for _ in range(4))
    for job in (requeue, exhaust, cancelled, alive):
        assert jobs.claim(db, job, "w", lease_s=3600, max_attempts=3) is not None
    for _ in range(2):  # exhaust reaches attempt 3 == max_attempts
        expire(db, exhaust)
        assert jobs.claim(db, exhaust, "w", lease_s=30, max_attempts=3) is not None
    jobs.request_cancel(db, cancelled)
    for job in (requeue, exhaust, cancelled):
        expire(db, job)
    report = jobs.reap(db, max_attempts=3)
    assert report.requeued == [requeue]
    assert report.failed == [exhaust]
    assert report.cancelled == [cancelled]
    assert row(db, requeue).status == "queued" and row(db, requeue).attempt == 1
    assert row(db, exhaust).status == "failed"
    assert row(db, exhaust).error["type"] == "attempts_exhausted"
    assert row(db, cancelled).status == "cancelled"
    assert row(db, alive).status == "running"
    # The re-queued job runs again as attempt 2.
    c = jobs.claim(db, requeue, "w2", lease_s=30, max_attempts=3)
    assert c is not None and c.attempt == 2
    assert jobs.reap(db, max_attempts=3).requeued == []


def test_queued_ids_oldest_first_and_age_filter(db: Database) -> None:
    a, b = new_job(db), new_job(db)
    assert set(jobs.queued_ids(db)) == {a, b}
    assert jobs.queued_ids(db, older_than_s=3600) == []


def test_reaper_resubmits_requeued_and_stale_jobs_once_per_period(
    db: Database, tmp_path: Path
) -> None:
    settings = Settings(_env_file=None, data_dir=tmp_path, requeue_after_s=3600, max_attempts=3)
    submitted: list[str] = []
    reaper = Reaper(settings, db, submitted.append)
    dead, waiting = new_job(db), new_job(db)
    assert jobs.claim(db, dead, "w", lease_s=30, max_attempts=3) is not None
    expire(db, dead)
    out = reaper.reap_once()
    assert out.requeued == [dead] and submitted == [dead]
    assert out.resubmitted == []  # `waiting` is younger than requeue_after_s
    # Make both queued jobs look old: each is re-submitted once, then not again this period.
    with db.session() as s:
        s.execute(update(EstimateRow).values(updated_at=utcnow() - timedelta(hours=2)))
    submitted.clear()
    out = reaper.reap_once()
    # `dead` was just handed over by the requeue above: not again within the period.
    assert out.resubmitted == [waiting] and submitted == [waiting]
    submitted.clear()
    assert reaper.reap_once().resubmitted == [] and submitted == []


def test_reaper_thread_runs_and_survives_a_failing_submit(db: Database, tmp_path: Path) -> None:
    settings = Settings(_env_file=None, data_dir=tmp_path, reaper_interval_s=0.05)
    seen = threading.Event()

    def submit(job_id: str) -> None:
        seen.set()
        raise RuntimeError("broker down")

    job = new_job(db)
    assert jobs.claim(db, job, "w", lease_s=30, max_attempts=3) is not None
    expire(db, job)
    reaper = Reaper(settings, db, submit)
    reaper.start()
    try:
        assert seen.wait(5)
        assert reaper.alive
    finally:
        reaper.stop()
    assert not reaper.alive
    assert row(db, job).status == "queued"


def test_claimable_while_queued_or_running_without_a_live_lease(db: Database) -> None:
    job = new_job(db)
    assert jobs.claimable(db, job)  # queued
    c = jobs.claim(db, job, "w1", lease_s=30, max_attempts=3)
    assert c is not None
    assert not jobs.claimable(db, job)  # running under a live lease
    expire(db, job)
    assert jobs.claimable(db, job)  # its worker died
    second = jobs.claim(db, job, "w2", lease_s=30, max_attempts=3)
    assert second is not None and not jobs.claimable(db, job)
    assert jobs.finish(db, second, JobStatus.succeeded)
    assert not jobs.claimable(db, job)  # finished
    assert not jobs.claimable(db, "est_missing")


def test_held_by_names_the_running_attempt_of_its_owner_only(db: Database) -> None:
    job = new_job(db)
    assert jobs.held_by(db, job, "w:1") is None  # queued: nobody holds it
    claim = jobs.claim(db, job, "w:1", lease_s=30, max_attempts=3)
    assert claim is not None
    assert jobs.held_by(db, job, "w:1") == claim
    assert jobs.held_by(db, job, "w:2") is None
    assert jobs.finish(db, claim, JobStatus.cancelled)
    assert jobs.held_by(db, job, "w:1") is None  # ended
    assert jobs.held_by(db, "est_missing", "w:1") is None


def test_expire_lease_makes_the_job_reapable_now(db: Database) -> None:
    job = new_job(db)
    assert not jobs.expire_lease(db, job, "w:1")  # queued: no lease
    assert jobs.claim(db, job, "w:1", lease_s=3600, max_attempts=3) is not None
    assert not jobs.expire_lease(db, job, "w:2")  # not its lease
    assert jobs.reap(db, max_attempts=3).requeued == []
    assert jobs.expire_lease(db, job, "w:1")
    later = utcnow() + timedelta(seconds=1)
    assert jobs.reap(db, max_attempts=3, now=later).requeued == [job]
    assert row(db, job).status == "queued"
