"""The campaign's wait on the GPU pool costs the same per poll at any run size: it hands out at most
`shards_in_flight` shards, reads their states in one query and the beats of those a worker took."""

from __future__ import annotations

import contextlib
import logging
import uuid
from types import SimpleNamespace

from prefect.client.schemas.objects import StateType

from adapters.infra.settings import Settings
from flows import dispatch
from flows.progress import Progress
from tasks.layout import AssetsLayout
from tasks.plan import ShardContext


class FakePool:
    """A Prefect API whose task runs complete `polls` polls after they are handed out; one attempt fails."""

    def __init__(self, polls: int, fail_first_try_of: int) -> None:
        self.polls, self.fail = polls, fail_first_try_of
        self.age: dict[str, int] = {}
        self.shard_of: dict[str, tuple[int, int]] = {}
        self.queries: list[list[str]] = []  # the task run ids of each read_task_runs call
        self.completed: list[int] = []

    def submit(self, shard, ctx, attempt: int, outage: float) -> str:
        run = str(uuid.uuid4())
        self.age[run], self.shard_of[run] = 0, (shard.index, attempt)
        return run

    def read_task_runs(self, *, task_run_filter, limit):
        ids = [str(i) for i in task_run_filter.id.any_]
        self.queries.append(ids)
        runs = []
        for run in ids:
            self.age[run] += 1
            index, attempt = self.shard_of[run]
            kind = StateType.SCHEDULED
            if self.age[run] >= self.polls:
                kind = StateType.FAILED if (index, attempt) == (self.fail, 1) else StateType.COMPLETED
                if kind == StateType.COMPLETED:
                    self.completed.append(index)
            runs.append(SimpleNamespace(id=run, state=SimpleNamespace(type=kind, message="gpu fell over")))
        return runs[:limit]


class CountingStore:
    def __init__(self) -> None:
        self.gets = 0

    def get(self, uri: str) -> bytes:
        self.gets += 1
        raise FileNotFoundError(uri)


def wait_on_pool(monkeypatch, shards: int, in_flight: int) -> tuple[FakePool, CountingStore, int]:
    pool, store = FakePool(polls=3, fail_first_try_of=5), CountingStore()
    monkeypatch.setattr(dispatch, "get_client", lambda sync_client: contextlib.nullcontext(pool))
    monkeypatch.setattr(dispatch, "get_run_logger", lambda: logging.getLogger("test"))
    monkeypatch.setattr(dispatch, "_submit", pool.submit)
    # A GPU worker on this code version is there, and busy: no scheduled shard counts as forgotten (flows/fleet.py).
    monkeypatch.setattr(dispatch, "_require_workers", lambda client, settings: None)
    monkeypatch.setattr(dispatch, "read_fleet", lambda client: SimpleNamespace(free=frozenset()))
    polls: list[float] = []
    monkeypatch.setattr(dispatch.time, "sleep", polls.append)
    work = [SimpleNamespace(index=i, image_count=4) for i in range(shards)]
    ctx = ShardContext(run=AssetsLayout.at("s3://a").run("r", "2026-01-01"), campaign="c", controls={}, batch_total=shards)
    settings = Settings(shards_in_flight=in_flight, shard_attempts=2)
    tracker = dispatch.PoolProgress(Progress(), work)
    dispatch._run_on_workers(work, ctx, store, settings, tracker)
    assert tracker.share == 1.0
    assert len(pool.queries) == len(polls)  # one state query per poll (up to 200 shards in flight)
    return pool, store, len(polls)


def test_each_poll_reads_the_shards_in_flight_in_one_query_whatever_the_run_size(monkeypatch):
    small, _, small_polls = wait_on_pool(monkeypatch, shards=20, in_flight=8)
    large, store, large_polls = wait_on_pool(monkeypatch, shards=400, in_flight=8)
    for pool, shards in ((small, 20), (large, 400)):
        assert sorted(pool.completed) == list(range(shards))  # every shard once; the failed one again
        assert pool.shard_of and sum(1 for i, a in pool.shard_of.values() if i == 5) == 2
        assert max(len(q) for q in pool.queries) <= 8  # one query per poll, of the shards in flight only
    assert large_polls >= 10 * small_polls  # a run 20x larger polls longer ...
    assert store.gets == 0  # ... and reads no beat: nothing was taken by a worker (all SCHEDULED until done)


def test_a_taken_shard_costs_one_beat_read_per_poll(monkeypatch):
    pool, store = FakePool(polls=4, fail_first_try_of=-1), CountingStore()

    def taken(*, task_run_filter, limit):
        runs = FakePool.read_task_runs(pool, task_run_filter=task_run_filter, limit=limit)
        return [SimpleNamespace(id=r.id, state=SimpleNamespace(type=StateType.RUNNING, message=None))
                if r.state.type == StateType.SCHEDULED else r for r in runs]

    pool.read_task_runs = taken
    monkeypatch.setattr(dispatch, "get_client", lambda sync_client: contextlib.nullcontext(pool))
    monkeypatch.setattr(dispatch, "get_run_logger", lambda: logging.getLogger("test"))
    monkeypatch.setattr(dispatch, "_submit", pool.submit)
    # A GPU worker on this code version is there, and busy: no scheduled shard counts as forgotten (flows/fleet.py).
    monkeypatch.setattr(dispatch, "_require_workers", lambda client, settings: None)
    monkeypatch.setattr(dispatch, "read_fleet", lambda client: SimpleNamespace(free=frozenset()))
    monkeypatch.setattr(dispatch.time, "sleep", lambda seconds: None)
    work = [SimpleNamespace(index=i, image_count=4) for i in range(30)]
    ctx = ShardContext(run=AssetsLayout.at("s3://a").run("r", "2026-01-01"), campaign="c", controls={}, batch_total=30)
    dispatch._run_on_workers(work, ctx, store, Settings(shards_in_flight=5), dispatch.PoolProgress(Progress(), work))
    assert sorted(pool.completed) == list(range(30))
    in_flight_per_poll = sum(len(q) for q in pool.queries)
    running_polls = in_flight_per_poll - 30  # the poll that sees each run complete reads no beat
    assert store.gets == running_polls and max(len(q) for q in pool.queries) <= 5
