"""The one poller behind every /events stream: one store read per interval however many
streams follow, each change fanned out to every stream of its job, a deleted job reported."""

from __future__ import annotations

import asyncio
from pathlib import Path

from jobfixtures import add_dataset, add_estimate, open_store, shifted_pair
from sqlalchemy import delete, update

from service.settings import Settings
from service.store import EstimateRow
from service.store.models import utcnow
from service.watch import Watcher


def test_many_streams_cost_one_read_per_interval_and_all_see_changes(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, data_dir=tmp_path / "data")
    db, blobs = open_store(settings)
    x, y = shifted_pair(20, 2, 1.0)
    sx, sy = add_dataset(db, blobs, x), add_dataset(db, blobs, y)
    jobs = [add_estimate(db, sx, sy) for _ in range(5)]

    async def scenario() -> None:
        watcher = Watcher(db, interval_s=0.05)
        async with asyncio.TaskGroup() as tg:
            woke: dict[str, int] = {}
            ready = asyncio.Event()
            stop = asyncio.Event()

            async def stream(i: int) -> None:
                job = jobs[i % len(jobs)]
                async with watcher.watch(job) as sub:
                    if watcher.streams == 1000:
                        ready.set()
                    while not stop.is_set():
                        if await sub.changed(timeout=0.2):
                            key = "gone" if sub.gone else sub.row.status
                            woke[f"{job}:{key}"] = woke.get(f"{job}:{key}", 0) + 1

            for i in range(1000):
                tg.create_task(stream(i))
            await asyncio.wait_for(ready.wait(), 10)
            await asyncio.sleep(0.5)  # idle: nothing changes
            polls_idle = watcher.polls
            assert polls_idle <= 0.5 / 0.05 + 3  # not 1000 streams x 10 intervals
            woke.clear()
            with db.session() as s:  # one job changes, another is deleted
                s.execute(
                    update(EstimateRow)
                    .where(EstimateRow.id == jobs[0])
                    .values(status="running", updated_at=utcnow())
                )
                s.execute(delete(EstimateRow).where(EstimateRow.id == jobs[1]))
            await asyncio.sleep(0.5)
            stop.set()
        assert woke == {f"{jobs[0]}:running": 200, f"{jobs[1]}:gone": 200}
        assert watcher.streams == 0  # every stream let go of its subscription

    asyncio.run(scenario())
    db.dispose()
