"""Running shards: in this process (embedded default), or as `generate-shard` flow runs on the GPU pool.

With a shard deployment configured, every shard becomes a child flow run that any GPU worker
can pick up. A shard whose run crashes or fails (a worker died, a GPU fell over) is started
again; it skips the images it already wrote, so nothing is lost or duplicated.

Progress has one writer, so the run's progress bar only moves forward: in this process each
shard moves it after each batch (shards run one after another); on the pool, where shards run
in parallel and finish in any order, the campaign flow counts the batches whose images are all
written while it waits.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

from prefect import get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.deployments import run_deployment

from adapters import publish
from adapters.settings import Settings
from adapters.storage import ObjectStore
from flows import progress
from flows.artifacts import advance_progress
from flows.shard import generate_shard, shard_part_name
from tasks.plan import Batch, Shard, ShardContext, finished_batches

RETRYABLE = {StateType.CRASHED, StateType.FAILED}
FINAL = {StateType.COMPLETED, StateType.CANCELLED, StateType.CRASHED, StateType.FAILED}


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
    re-run. `settings.shard_deployment` decides where shards run: None, in this process.
    """
    clock = time.perf_counter()
    images = sum(len(b.jobs) for s in shards for b in s.batches)
    progress.begin(images)  # the terminal's bar counts images; the artifact, batches
    for shard in shards:
        store.put(publish.run_uri(ctx.assets, ctx.run_id, "shards", f"{shard.index:05d}.json"),
                  shard.model_dump_json().encode(), content_type="application/json")
    if settings.shard_deployment is None:
        before = 0
        for shard in shards:
            generate_shard(shard, ctx, batches_before=before)
            before += len(shard.batches)
    else:
        tracker = BatchProgress(store, ctx, [b for s in shards for b in s.batches])
        _run_on_pool(shards, ctx.model_copy(update={"progress": None}), settings, tracker)
    if ctx.progress:
        advance_progress(ctx.progress, 1.0)  # every shard has finished, whatever order their batches ran in
    progress.reach(images)
    # Wall time of the whole generation phase, not the sum of the shards' times: parallel workers count once.
    wall = time.perf_counter() - clock
    parts = [publish.part_entry(store, "generations", publish.table_part_uri(
        ctx.assets, "generations", ctx.run_date, shard_part_name(ctx.run_id, s.index))) for s in shards]
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


def _run_on_pool(shards: Sequence[Shard], ctx: ShardContext, settings: Settings, tracker: BatchProgress) -> None:
    logger = get_run_logger()
    deployment, attempts = settings.shard_deployment, settings.shard_attempts
    tries = {s.index: 1 for s in shards}
    running = {s.index: _submit(deployment, s, 1, ctx) for s in shards}
    by_index = {s.index: s for s in shards}
    logger.info("submitted %d shards to deployment %s", len(shards), deployment)
    with get_client(sync_client=True) as client:
        while running:
            time.sleep(settings.shard_poll_seconds)
            try:
                tracker.update()
            except Exception as exc:  # a progress bar is a report: it never stops the run
                logger.warning("progress not updated: %s: %s", type(exc).__name__, exc)
            for index, run_id in list(running.items()):
                state = client.read_flow_run(run_id).state
                if state is None or state.type not in FINAL:
                    continue
                del running[index]
                if state.type == StateType.COMPLETED:
                    logger.info("shard %d done (flow run %s)", index, run_id)
                elif state.type in RETRYABLE and tries[index] < attempts:
                    tries[index] += 1
                    logger.warning("shard %d %s (%s); starting attempt %d of %d", index, state.type.value.lower(),
                                   state.message or "no message", tries[index], attempts)
                    running[index] = _submit(deployment, by_index[index], tries[index], ctx)
                else:
                    raise RuntimeError(f"shard {index} ended {state.type.value} after {tries[index]} attempts: "
                                       f"{state.message or 'no message'}")


def _submit(deployment: str, shard: Shard, attempt: int, ctx: ShardContext):
    run = run_deployment(
        name=deployment,
        parameters={"shard": shard, "ctx": ctx},
        timeout=0,  # do not wait here: every shard is submitted before any is awaited
        flow_run_name=f"{ctx.run_id}-shard-{shard.index:05d}-try-{attempt}",
        as_subflow=True,
    )
    return run.id


def _part_images(store: ObjectStore, part: dict) -> list[dict]:
    """The images a finished shard published, from its table part in S3."""
    rows = publish.read_table(store, {"parts": [part]}, "generations")
    return [{"asset_id": r.asset_id, "uri": r.output_key, "sha256": r.sha256} for r in rows.itertuples()]
