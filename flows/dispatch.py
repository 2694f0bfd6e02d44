"""Running shards: in this process (embedded default), or on the GPU workers (flows/gpu_worker.py).

With shard workers on, every shard becomes a `generate-shard` task run that the next free GPU
worker takes and runs with the engine it keeps loaded. A shard whose run fails (a GPU fell over)
or whose worker stops beating for the lease (the worker or its machine died: Prefect itself
never hands such a run out again) is marked Crashed and handed out again as a new task run; it
skips the images it already wrote, so nothing is lost or duplicated.

Progress has one writer, so the run's progress bar only moves forward: in this process each
shard moves it after each batch (shards run one after another); on the pool, where shards run
in parallel and finish in any order, the campaign flow counts the batches whose images are all
written while it waits.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

from prefect import get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.exceptions import ObjectNotFound
from prefect.states import Crashed

from adapters import publish
from adapters.heartbeats import Silence, beat_uri
from adapters.settings import Settings
from adapters.storage import ObjectStore
from flows import progress
from flows.artifacts import advance_progress
from flows.gpu_worker import generate_shard_task
from flows.shard import generate_shard, shard_part_name
from tasks.plan import Batch, Shard, ShardContext, finished_batches

RETRYABLE = {StateType.CRASHED, StateType.FAILED}
FINAL = {StateType.COMPLETED, StateType.CANCELLED, StateType.CRASHED, StateType.FAILED}
TAKEN = {StateType.PENDING, StateType.RUNNING}  # a worker has the task run: its heartbeat must move


@dataclass(frozen=True)
class Generated:
    """What the shards published: their `generations` parts and images, and the generation phase's wall time."""

    parts: tuple[dict, ...]
    images: tuple[dict, ...]  # asset_id, uri, sha256 of every image
    wall_seconds: float

    def owned_by(self, run_id: str, owner: dict[str, str]) -> Generated:
        """Only the images whose claim `run_id` holds (`owner`: asset id -> claim holder)."""
        return replace(self, images=tuple(i for i in self.images if owner.get(i["asset_id"]) == run_id))


def run_shards(shards: Sequence[Shard], ctx: ShardContext, store: ObjectStore, settings: Settings) -> Generated:
    """Run every shard to completion and return what each published, read back from its table part.

    Each shard's spec is stored with the run first: what a worker ran can always be looked up or
    re-run. `settings.shard_workers` decides where shards run: off, in this process.
    """
    clock = time.perf_counter()
    images = sum(len(b.jobs) for s in shards for b in s.batches)
    progress.begin(images)  # the terminal's bar counts images; the artifact, batches
    for shard in shards:
        store.put(publish.run_uri(ctx.assets, ctx.run_id, "shards", f"{shard.index:05d}.json"),
                  shard.model_dump_json().encode(), content_type="application/json")
    if not settings.shard_workers:  # one task run per shard in the campaign's flow run
        batches_before = images_before = 0
        for shard in shards:
            generate_shard(shard, ctx, batches_before=batches_before, images_before=images_before)
            batches_before += len(shard.batches)
            images_before += sum(len(b.jobs) for b in shard.batches)
    else:
        tracker = BatchProgress(store, ctx, [b for s in shards for b in s.batches])
        _run_on_workers(shards, ctx.model_copy(update={"progress": None, "local_copy": None}), store, settings, tracker)
    if ctx.progress:
        advance_progress(ctx.progress, 1.0)  # every shard has finished, whatever order their batches ran in
    progress.reach(images)
    # Wall time of the whole generation phase, not the sum of the shards' times: parallel workers count once.
    wall = time.perf_counter() - clock
    parts = [publish.part_entry(store, "generations", publish.staged_part_uri(
        ctx.assets, ctx.run_id, "generations", shard_part_name(ctx.run_id, s.index))) for s in shards]
    images = tuple(img for part in parts for img in _part_images(store, part))
    return Generated(parts=tuple(parts), images=images, wall_seconds=wall)


class BatchProgress:
    """The run's progress artifact as the share of batches whose images are all written, whichever shard wrote them.

    `update` lists the run's images and moves the artifact forward only: it never goes back. The
    images of those batches go to this process's progress listeners (the terminal's bar).
    """

    def __init__(self, store: ObjectStore, ctx: ShardContext, batches: Sequence[Batch]) -> None:
        self._store, self._progress, self._batches = store, ctx.progress, tuple(batches)
        self._images = publish.run_uri(ctx.assets, ctx.run_id, "images/")
        self.share = 0.0

    def update(self) -> float:
        """Count the finished batches now; returns the share reported (0..1)."""
        if not self._batches:
            return self.share
        present = {o.key.rsplit("/", 1)[-1].removesuffix(".png") for o in self._store.list(self._images)}
        finished = [b for b in self._batches if finished_batches([b], present)]
        progress.reach(sum(len(b.jobs) for b in finished))
        share = len(finished) / len(self._batches)
        if share > self.share:
            self.share = share
            advance_progress(self._progress, share)
        return self.share


def _run_on_workers(shards: Sequence[Shard], ctx: ShardContext, store: ObjectStore, settings: Settings,
                    tracker: BatchProgress) -> None:
    logger = get_run_logger()
    attempts, lease = settings.shard_attempts, settings.shard_lease_seconds
    silence = Silence(store)

    def submit(shard: Shard, attempt: int) -> str:
        # Named `<run_id>-shard-<index>-try-<n>`: a deferred task run takes its task's name.
        named = generate_shard_task.with_options(name=f"{ctx.run_id}-shard-{shard.index:05d}-try-{attempt}")
        # Handed over outside this flow run's context: `.delay()` would pickle the campaign flow with the
        # shard, and a worker cannot import the flow's module as a deployment loaded it.
        return str(contextvars.Context().run(named.delay, shard=shard, ctx=ctx).task_run_id)

    tries = {s.index: 1 for s in shards}
    running = {s.index: submit(s, 1) for s in shards}
    by_index = {s.index: s for s in shards}
    logger.info("handed %d shards to the GPU workers", len(shards))
    with get_client(sync_client=True) as client:
        while running:
            time.sleep(settings.shard_poll_seconds)
            try:
                tracker.update()
            except Exception as exc:  # a progress bar is a report: it never stops the run
                logger.warning("progress not updated: %s: %s", type(exc).__name__, exc)
            for index, run_id in list(running.items()):
                try:
                    state = client.read_task_run(run_id).state
                except ObjectNotFound:  # not recorded yet, or deleted by a worker that could not read its parameters
                    state = None
                kind = state.type if state else None
                message = (state.message if state else None) or "no message"
                if kind in TAKEN or state is None:
                    quiet = silence.seconds(beat_uri(ctx.assets, ctx.run_id, run_id))
                    if quiet <= lease:
                        continue
                    if state is None:
                        message = f"task run {run_id} not found for {quiet:.0f} s"
                    else:
                        message = f"no heartbeat from its worker for {quiet:.0f} s: the worker is gone"
                        client.set_task_run_state(run_id, Crashed(message=message), force=True)
                    kind = StateType.CRASHED
                elif kind not in FINAL:
                    continue  # scheduled: waiting for a free worker
                del running[index]
                if kind == StateType.COMPLETED:
                    logger.info("shard %d done (task run %s)", index, run_id)
                elif kind in RETRYABLE and tries[index] < attempts:
                    tries[index] += 1
                    logger.warning("shard %d %s (%s); handing out attempt %d of %d", index, kind.value.lower(),
                                   message, tries[index], attempts)
                    running[index] = submit(by_index[index], tries[index])
                else:
                    raise RuntimeError(f"shard {index} ended {kind.value} after {tries[index]} attempts: {message}")


def _part_images(store: ObjectStore, part: dict) -> list[dict]:
    """The images a finished shard published, from its table part in S3."""
    rows = publish.read_staged(store, [part], "generations")
    return [{"asset_id": r.asset_id, "uri": r.output_key, "sha256": r.sha256} for r in rows.itertuples()]
