"""Which GPU workers are there, on which code, and which handed-out shards the Prefect server forgot.

Both read Prefect's task-worker registry (`POST /task_workers/filter`), the one place the server
says which task workers are connected and for which task keys:

- **Presence.** A GPU worker (flows/gpu_worker.py) keeps, for its whole life, a subscription whose
  only key names it: `stylematrix-gpu-worker|<worker>|<code version>|<task key>`. Nobody submits
  a task under that key, so it is never sent anything; it just stays listed, busy or idle, and comes
  back by itself after a server restart (the subscription reconnects). `require_worker` waits
  for one on the campaign's code version and task key, and otherwise fails in one line naming
  what it needs and what it sees: a worker on other code would never receive the campaign's runs
  (Prefect's task key is the function's name plus a hash of its code) and nothing else would say so.
- **Forgotten shards.** A shard handed out with `.delay()` waits in the server's memory until a
  worker takes it (prefect/server/task_queue.py). A restart of the server empties that queue, and
  the run stays SCHEDULED for ever. A worker that is connected and free is listed under the shard
  task's key (it is unlisted from the moment it is sent a run until it asks again): while one is
  listed, the queue of that key is empty, so a run that stays SCHEDULED for `grace` seconds all that
  time is in nobody's queue. `Forgotten` says when to hand such a shard out again.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import httpx
from prefect.client.orchestration import SyncPrefectClient
from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError
from prefect.settings import PREFECT_API_URL

PRESENCE = "stylematrix-gpu-worker"
T = TypeVar("T")


class NoGpuWorker(ConnectionError):
    """No GPU worker on the campaign's code version is connected: the one line says which version is needed and
    which are there."""


@dataclass(frozen=True)
class WorkerSeen:
    """A GPU worker as its presence key names it."""

    worker: str
    version: str
    task_key: str


def presence_key(worker: str, version: str, task_key: str) -> str:
    """The key a GPU worker subscribes with to be seen: its name, code version and the shard task's key."""
    return "|".join((PRESENCE, worker.replace("|", "/"), version.replace("|", "/"), task_key))


def parse_presence(key: str) -> WorkerSeen | None:
    parts = key.split("|")
    if len(parts) != 4 or parts[0] != PRESENCE:
        return None
    return WorkerSeen(*parts[1:])


@dataclass(frozen=True)
class Fleet:
    """The task-worker registry at one moment."""

    seen: tuple[WorkerSeen, ...]  # every GPU worker's presence, busy or free
    free: frozenset[str]  # task keys with at least one connected worker waiting for a run

    def serves(self, version: str, task_key: str) -> bool:
        return any(w.version == version and w.task_key == task_key for w in self.seen)


def read_fleet(client: SyncPrefectClient) -> Fleet:
    """The GPU workers the server sees now, and the task keys a free worker waits on."""
    response = client.request("POST", "/task_workers/filter", json={})
    response.raise_for_status()
    seen, free = [], set()
    for entry in response.json():
        for key in entry.get("task_keys", []):
            presence = parse_presence(key)
            if presence:
                seen.append(presence)
            else:
                free.add(key)
    return Fleet(seen=tuple(seen), free=frozenset(free))


def require_worker(client: SyncPrefectClient, version: str, task_key: str, timeout: float,
                   poll: float = 1.0) -> Fleet:
    """Wait up to `timeout` s for a GPU worker on `version` serving `task_key`; NoGpuWorker in one line otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        fleet = read_fleet(client)
        if fleet.serves(version, task_key):
            return fleet
        if time.monotonic() >= deadline:
            raise NoGpuWorker(_no_worker(version, task_key, fleet, timeout))
        time.sleep(poll)


def _no_worker(version: str, task_key: str, fleet: Fleet, timeout: float) -> str:
    seen = ", ".join(sorted({f"{w.worker} at {w.version}" + ("" if w.task_key == task_key else " (other shard code)")
                             for w in fleet.seen})) or "none"
    return (f"no GPU worker serves code version {version} (task {task_key}) after {timeout:.0f} s; "
            f"workers seen: {seen}. Start a GPU worker at version {version} (docs/operations.md, 'A fleet').")


class Forgotten:
    """Tells which SCHEDULED shard runs the server no longer queues (see the module docstring).

    `check` is called once per poll for each shard run that is SCHEDULED; a run counts as forgotten
    once it has been SCHEDULED with a free worker on its key at every check for `grace` seconds.
    The time is this process's clock.
    """

    def __init__(self, grace: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._grace, self._clock = grace, clock
        self._since: dict[str, float] = {}

    def check(self, task_run_id: str, free_worker: bool) -> bool:
        """True when the run should be handed out again; a run not SCHEDULED should be `forget`-ed."""
        if not free_worker:
            self._since.pop(task_run_id, None)
            return False
        since = self._since.setdefault(task_run_id, self._clock())
        return self._clock() - since >= self._grace

    def forget(self, task_run_id: str) -> None:
        self._since.pop(task_run_id, None)


def through_outage(seconds: float, call: Callable[..., T], *args, **kwargs) -> T:
    """`call(*args, **kwargs)`, called again while the Prefect API cannot be reached (a server restarting) or
    its database is down (PostgreSQL restarting: the API then answers 500 or 503), for up to `seconds`.

    A 5xx counts as an outage only while the server's readiness check says its database is unavailable: any
    other server error is raised at once.
    """
    deadline = time.monotonic() + seconds
    while True:
        try:
            return call(*args, **kwargs)
        except httpx.TransportError as exc:
            if time.monotonic() >= deadline:
                raise ConnectionError(f"Prefect API unreachable for {seconds:.0f} s: {type(exc).__name__}: {exc}; "
                                      "start the Prefect server again (docs/operations.md, 'A fleet')") from exc
        except PrefectHTTPStatusError as exc:
            if exc.response.status_code < 500 or database_ready():
                raise
            if time.monotonic() >= deadline:
                raise ConnectionError(f"the Prefect server's database has been unavailable for {seconds:.0f} s; "
                                      "start PostgreSQL again (docs/operations.md, 'A fleet')") from exc
        time.sleep(1.0)


def database_ready() -> bool:
    """The Prefect server's readiness check (`/ready`): False while it cannot reach its database, or cannot be
    reached itself."""
    try:
        # Plain httpx: Prefect's client retries a 503 for a minute. `/ready` needs no auth.
        return httpx.get(f"{PREFECT_API_URL.value()}/ready", timeout=5).status_code != 503
    except httpx.TransportError:
        return False


def withdraw(client: SyncPrefectClient, task_run_id: str) -> None:
    """Delete a forgotten shard's task run before it is handed out again: should the server still queue it after
    all, the worker it reaches finds it gone and skips it, so the shard never runs twice at once."""
    with contextlib.suppress(ObjectNotFound):
        client.delete_task_run(task_run_id)
