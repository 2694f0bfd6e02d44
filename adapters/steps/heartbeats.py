"""Heartbeats of GPU workers: how the campaign tells a busy worker from a dead one.

A task worker that runs a shard puts its beat (`RunLayout.beat`: `runs/<run_id>/workers/`) every
few seconds while the shard runs, and once more when it ends. Prefect forgets a task run once a
worker has taken it: a worker that dies mid-shard leaves it Running for ever. So the campaign
reads these beats and calls a shard's worker dead when its beat count has not moved for the
lease. The time is the campaign's own clock (when it saw the count change), never the worker's:
two machines' clocks need not agree.

The beat also says who ran the shard (worker name, process id) and how many pipelines that
process had loaded and shards it had served: a warm worker serves many shards with one load.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime

from adapters.infra.storage import ObjectStore
from tasks.layout import RunLayout


@dataclass(frozen=True)
class Beat:
    """One heartbeat of the worker running a shard."""

    worker: str
    pid: int
    task_run_id: str
    shard: int
    beats: int = 0  # goes up with every put while the shard runs
    engine_loads: int = 0  # pipelines loaded by the worker's process so far
    shards_served: int = 0  # shards this process has started, this one included
    images_done: int = 0  # images of the shard made so far (the campaign's progress on the pool)
    state: str = "running"  # running | done | failed
    at: str = ""  # the worker's clock, for people reading it; liveness never uses it


def read_beat(store: ObjectStore, uri: str) -> Beat | None:
    """The last beat put at `uri`, or None if none was put yet."""
    try:
        return Beat(**json.loads(store.get(uri)))
    except FileNotFoundError:
        return None


def read_beats(store: ObjectStore, run: RunLayout) -> list[Beat]:
    """Every worker beat of a run (`RunLayout.beat`): one per shard attempt a worker took."""
    listing = store.list(run.workers)
    return [Beat(**json.loads(store.get(o.uri))) for o in listing if o.key.endswith(".json")]


class Heartbeat:
    """Puts a `Beat` every `interval` seconds from a thread while the `with` block runs, and once at its end.

    `engine_loads` and `images_done`, if given, are asked at every beat: the first shard of a process
    loads the engine mid-shard, and the campaign counts its progress from the images done.
    """

    def __init__(self, store: ObjectStore, uri: str, beat: Beat, interval: float,
                 engine_loads: Callable[[], int] | None = None, images_done: Callable[[], int] | None = None) -> None:
        if interval <= 0:
            raise ValueError(f"heartbeat interval must be positive, got {interval}")
        self._store, self._uri, self._beat, self._interval = store, uri, beat, interval
        self._loads = engine_loads or (lambda: beat.engine_loads)
        self._done = images_done or (lambda: self._beat.images_done)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{beat.shard}", daemon=True)

    def _put(self, **change) -> None:
        self._beat = replace(self._beat, beats=self._beat.beats + 1, engine_loads=self._loads(), images_done=self._done(),
                             at=datetime.now(UTC).isoformat(), **change)
        self._store.put(self._uri, json.dumps(asdict(self._beat), sort_keys=True).encode(),
                        content_type="application/json")

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._put()
            except OSError:  # one missed beat is not death; the lease spans several
                continue

    def __enter__(self) -> Heartbeat:
        self._put()
        self._thread.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._stop.set()
        self._thread.join()
        self._put(state="failed" if exc_type else "done")


class Silence:
    """How long each watched heartbeat has not moved, on this process's clock."""

    def __init__(self, store: ObjectStore, clock=time.monotonic) -> None:
        self._store, self._clock = store, clock
        self._seen: dict[str, tuple[int, float]] = {}  # uri -> (beats, when that count was first seen)
        self._last: dict[str, Beat | None] = {}  # uri -> the beat read there last

    def last(self, uri: str) -> Beat | None:
        """The beat `seconds` last read at `uri` (None: none read yet); reads nothing."""
        return self._last.get(uri)

    def seconds(self, uri: str) -> float:
        """Seconds since the beat at `uri` last moved; since the first call for it if no beat was put yet."""
        beat = self._last[uri] = read_beat(self._store, uri)
        count = beat.beats if beat else 0
        now = self._clock()
        last = self._seen.get(uri)
        if last is None or last[0] != count:
            self._seen[uri] = (count, now)
            return 0.0
        return now - last[1]
