"""Running shards: in this process (embedded default), or on the GPU workers (flows/gpu_worker.py).

With shard workers on, every shard becomes a `generate-shard-on-worker` task run that the next free GPU
worker takes and runs with the engine it keeps loaded. A shard whose run fails (a GPU fell over)
or whose worker stops beating for the lease (the worker or its machine died: Prefect itself
never hands such a run out again) is marked Crashed and handed out again as a new task run; it
skips the images it already wrote, so nothing is lost or duplicated.

Progress goes to the run's one reporter (flows/progress.py), which only moves forward: in this
process each shard reports after each batch (shards run one after another); on the pool, where
shards run in parallel and finish in any order, the campaign flow counts the images of the
completed shards and those the running shards' workers report in their heartbeats.

On the pool, at most `shards_in_flight` shards are handed out at once; a poll reads their states in
one query per 200 and the beats of those a worker has taken, so the campaign's requests per poll
depend on the shards in flight, never on the size of the run.
"""

from __future__ import annotations

import contextvars
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from uuid import UUID

import pyarrow as pa
import pyarrow.compute as pc
from prefect import get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterId
from prefect.client.schemas.objects import State, StateType
from prefect.states import Crashed

from adapters.infra.code_version import code_version
from adapters.infra.settings import Settings
from adapters.infra.storage import ObjectStore
from adapters.steps import shards as shard_specs
from adapters.steps.heartbeats import Beat, Silence
from flows.fleet import Forgotten, read_fleet, require_worker, through_outage, withdraw
from flows.gpu_worker import generate_shard_task
from flows.progress import Progress
from flows.shard import ShardRuntime, generate_shard
from tasks.plan import Shard, ShardContext

RETRYABLE = {StateType.CRASHED, StateType.FAILED}
FINAL = {StateType.COMPLETED, StateType.CANCELLED, StateType.CRASHED, StateType.FAILED}
TAKEN = {StateType.PENDING, StateType.RUNNING}  # a worker has the task run: its heartbeat must move
STATE_PAGE = 200  # task runs read per query: the API's default page


@dataclass(frozen=True)
class Generated:
    """What the shards published: their `generations` parts and images, and the generation phase's wall time."""

    parts: tuple[dict, ...]
    images: pa.Table  # asset_id, uri, sha256 of every image: columns, not a dict per image
    wall_seconds: float

    @property
    def asset_ids(self) -> list[str]:
        return self.images.column("asset_id").to_pylist()

    def owned_by(self, run_id: str, owner: dict[str, str]) -> Generated:
        """Only the images whose claim `run_id` holds (`owner`: asset id -> claim holder)."""
        mine = pa.array([asset for asset, holder in owner.items() if holder == run_id], pa.string())
        return replace(self, images=self.images.filter(pc.is_in(self.images.column("asset_id"), value_set=mine)))


def run_shards(shards: Sequence[Shard], ctx: ShardContext, store: ObjectStore, settings: Settings,
               runtime: ShardRuntime) -> Generated:
    """Run every shard to completion and return what each published, read back from its table part.

    Each shard's spec is stored with the run first: what a worker ran can always be looked up or
    re-run. `settings.shard_workers` decides where shards run: off, in this process, each with
    `runtime` (the run's progress and local copy); on, on the GPU workers, while the campaign reports
    the progress it reads from the pool to `runtime.progress`.
    """
    clock = time.perf_counter()
    images = sum(s.image_count for s in shards)
    runtime.progress.begin(images)
    shard_specs.store_specs(store, ctx, shards)
    if not settings.shard_workers:  # one task run per shard in the campaign's flow run
        batches_before = images_before = 0
        for shard in shards:
            generate_shard(shard, ctx, replace(runtime, batches_before=batches_before, images_before=images_before))
            batches_before += len(shard.batches)
            images_before += shard.image_count
    else:
        _run_on_workers(shards, ctx, store, settings, PoolProgress(runtime.progress, shards))
    runtime.progress.reach(images)  # every shard has finished, whatever order their batches ran in
    # Wall time of the whole generation phase, not the sum of the shards' times: parallel workers count once.
    wall = time.perf_counter() - clock
    parts, images_made = shard_specs.read_published(store, ctx, shards)
    return Generated(parts=parts, images=images_made, wall_seconds=wall)


class PoolProgress:
    """The run's progress on the pool: the images of the shards that completed plus those the running shards'
    workers report in their heartbeats (`Beat.images_done`), as a share of the run's images.

    It reads nothing itself: the campaign already knows which shards completed (their task runs'
    states) and reads the running shards' beats to tell live workers from dead ones. So a poll
    costs the same at 100 images or 100,000. The artifact and the terminal's bar move forward only.
    """

    def __init__(self, progress: Progress, shards: Sequence[Shard]) -> None:
        self._progress = progress
        self._images = {s.index: s.image_count for s in shards}
        self._total = sum(self._images.values())
        self._completed = 0
        self.share = 0.0

    def completed(self, index: int) -> None:
        """Shard `index` completed: all its images are written."""
        self._completed += self._images[index]

    def update(self, running: Iterable[Beat | None] = ()) -> float:
        """The share of the run's images made now (0..1), counting the running shards' last beats."""
        if not self._total:
            return self.share
        done = self._completed + sum(b.images_done for b in running if b is not None and b.state == "running")
        self._progress.reach(done)
        self.share = max(self.share, min(done / self._total, 1.0))
        return self.share


@dataclass
class _Pool:
    """The shards handed to the GPU workers and not yet completed: index -> task run id, attempts so far."""

    running: dict[int, str]
    tries: dict[int, int]
    shards: dict[int, Shard]
    forgotten: Forgotten


def _run_on_workers(shards: Sequence[Shard], ctx: ShardContext, store: ObjectStore, settings: Settings,
                    tracker: PoolProgress) -> None:
    """Hand the shards out, at most `settings.shards_in_flight` at once, and wait until every one completed.

    Each poll reads the states of the shards in flight in one query (`_states`) and the heartbeats of
    those a worker has taken: its cost grows with the shards in flight, never with the run.
    """
    logger = get_run_logger()
    silence, waiting = Silence(store), deque(shards)
    pool = _Pool(running={}, tries={}, shards={s.index: s for s in shards},
                 forgotten=Forgotten(settings.shard_forgotten_seconds))
    outage = settings.api_outage_seconds
    logger.info("handing %d shards to the GPU workers, at most %d at a time", len(shards), settings.shards_in_flight)
    with get_client(sync_client=True) as client:
        _require_workers(client, settings)
        while waiting or pool.running:
            while waiting and len(pool.running) < settings.shards_in_flight:
                shard = waiting.popleft()
                pool.tries[shard.index] = 1
                pool.running[shard.index] = _submit(shard, ctx, 1, outage)
            time.sleep(settings.shard_poll_seconds)
            states = through_outage(outage, _states, client, list(pool.running.values()))
            _hand_out_forgotten(client, pool, states, ctx, settings)
            for index, task_run_id in list(pool.running.items()):
                kind, message = _verdict(client, silence, ctx.run.beat(task_run_id), task_run_id,
                                         states.get(task_run_id), settings.shard_lease_seconds)
                if kind is None:
                    continue
                del pool.running[index]
                if kind == StateType.COMPLETED:
                    tracker.completed(index)
                    logger.info("shard %d done (task run %s)", index, task_run_id)
                elif kind in RETRYABLE and pool.tries[index] < settings.shard_attempts:
                    pool.tries[index] += 1
                    logger.warning("shard %d %s (%s); handing out attempt %d of %d", index, kind.value.lower(),
                                   message, pool.tries[index], settings.shard_attempts)
                    pool.running[index] = _submit(pool.shards[index], ctx, pool.tries[index], outage)
                else:
                    raise RuntimeError(f"shard {index} ended {kind.value} after {pool.tries[index]} attempts: {message}")
            try:
                tracker.update(silence.last(ctx.run.beat(t)) for t in pool.running.values())
            except Exception as exc:  # a progress bar is a report: it never stops the run
                logger.warning("progress not updated: %s: %s", type(exc).__name__, exc)


def _submit(shard: Shard, ctx: ShardContext, attempt: int, outage: float) -> str:
    """Hand one shard to the GPU workers as a `generate-shard-on-worker` task run (waiting out an API outage of up to
    `outage` seconds); returns the task run's id."""
    # Named `<run_id>-shard-<index>-try-<n>`: a deferred task run takes its task's name.
    named = generate_shard_task.with_options(name=f"{ctx.run_id}-shard-{shard.index:05d}-try-{attempt}")
    # Handed over outside this flow run's context: `.delay()` would pickle the campaign flow with the
    # shard, and a worker cannot import the flow's module as a deployment loaded it.
    future = through_outage(outage, contextvars.Context().run, named.delay, shard=shard, ctx=ctx)
    return str(future.task_run_id)


def _hand_out_forgotten(client, pool: _Pool, states: dict[str, State], ctx: ShardContext, settings: Settings) -> None:
    """Hand out again the shards a restarted server forgot (flows/fleet.py): a shard still SCHEDULED while a free
    worker waits on its task, for `shard_forgotten_seconds`, is withdrawn and submitted again on the same attempt."""
    free: frozenset[str] | None = None  # the task keys a free worker waits on, read once per poll if needed
    for index, task_run_id in list(pool.running.items()):
        state = states.get(task_run_id)
        if state is None or state.type != StateType.SCHEDULED:
            pool.forgotten.forget(task_run_id)
            continue
        if free is None:
            free = through_outage(settings.api_outage_seconds, read_fleet, client).free
        if pool.forgotten.check(task_run_id, generate_shard_task.task_key in free):
            get_run_logger().warning("shard %d: the Prefect server no longer queues it (restarted?); handing it out "
                                     "again", index)
            through_outage(settings.api_outage_seconds, withdraw, client, task_run_id)
            pool.forgotten.forget(task_run_id)
            pool.running[index] = _submit(pool.shards[index], ctx, pool.tries[index], settings.api_outage_seconds)


def _states(client, task_run_ids: Sequence[str]) -> dict[str, State]:
    """The states of these task runs, in one query per STATE_PAGE of them; a run the server does not know is absent."""
    states: dict[str, State] = {}
    for start in range(0, len(task_run_ids), STATE_PAGE):
        page = [UUID(t) for t in task_run_ids[start:start + STATE_PAGE]]
        runs = client.read_task_runs(task_run_filter=TaskRunFilter(id=TaskRunFilterId(any_=page)), limit=len(page))
        states |= {str(r.id): r.state for r in runs if r.state is not None}
    return states


def _verdict(client, silence: Silence, beat: str, task_run_id: str, state: State | None,
             lease: float) -> tuple[StateType | None, str]:
    """What a shard's task run came to: (None, "") while it is scheduled or its worker beats; else its final
    state and why. A task run taken (or unknown to the server) whose heartbeat has not moved for `lease`
    seconds is marked Crashed: its worker is gone, and Prefect never hands such a run out again."""
    kind = state.type if state else None
    message = (state.message if state else None) or "no message"
    if kind in TAKEN or state is None:
        quiet = silence.seconds(beat)
        if quiet <= lease:
            return None, ""
        if state is None:  # not recorded yet, or deleted by a worker that could not read its parameters
            return StateType.CRASHED, f"task run {task_run_id} not found for {quiet:.0f} s"
        message = f"no heartbeat from its worker for {quiet:.0f} s: the worker is gone"
        client.set_task_run_state(task_run_id, Crashed(message=message), force=True)
        return StateType.CRASHED, message
    if kind not in FINAL:
        return None, ""  # scheduled: waiting for a free worker
    return kind, message


def _require_workers(client, settings: Settings) -> None:
    """Wait for a GPU worker on this code version (flows/fleet.py), or fail saying which version is needed."""
    fleet = require_worker(client, code_version(), generate_shard_task.task_key, settings.worker_wait_seconds)
    names = sorted({w.worker for w in fleet.seen if w.version == code_version()})
    get_run_logger().info("GPU workers on code version %s: %s", code_version(), ", ".join(names))
