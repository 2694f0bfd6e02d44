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

from prefect import get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.deployments import run_deployment

from adapters import publish
from adapters.storage import ObjectStore
from flows import publishing
from flows.shard import generate_shard, shard_part_name
from tasks.plan import Batch, Shard, finished_batches

RETRYABLE = {StateType.CRASHED, StateType.FAILED}
FINAL = {StateType.COMPLETED, StateType.CANCELLED, StateType.CRASHED, StateType.FAILED}


def run_shards(
    shards: Sequence[Shard],
    *,
    store: ObjectStore,
    deployment: str | None,
    attempts: int,
    poll_seconds: float,
    progress: str | None = None,
    **shard_args,
) -> list[dict]:
    """Run every shard to completion and return what each published, read back from its table part.

    Each shard's spec is stored with the run first: what a worker ran can always be looked up or re-run.
    `progress` is the run's progress artifact id (None: no progress reported).
    """
    for shard in shards:
        store.put(publish.run_uri(shard_args["assets"], shard_args["run_id"], "shards", f"{shard.index:05d}.json"),
                  shard.model_dump_json().encode(), content_type="application/json")
    if deployment is None:
        before = 0
        for shard in shards:
            generate_shard(shard, progress=progress, batches_before=before, **shard_args)
            before += len(shard.batches)
    else:
        tracker = BatchProgress(store, progress, [b for s in shards for b in s.batches],
                                assets=shard_args["assets"], run_id=shard_args["run_id"])
        _run_on_pool(shards, deployment=deployment, attempts=attempts, poll_seconds=poll_seconds, tracker=tracker,
                     **shard_args)
    return [_shard_output(store, shard, **shard_args) for shard in shards]


class BatchProgress:
    """The run's progress artifact as the share of batches whose images are all written, whichever shard wrote them.

    `update` lists the run's images and moves the artifact forward only: it never goes back.
    """

    def __init__(self, store: ObjectStore, progress: str | None, batches: Sequence[Batch], *, assets: str,
                 run_id: str) -> None:
        self._store, self._progress, self._batches = store, progress, tuple(batches)
        self._images = publish.run_uri(assets, run_id, "images/")
        self.share = 0.0

    def update(self) -> float:
        """Count the finished batches now; returns the share reported (0..1)."""
        if not self._progress or not self._batches:
            return self.share
        present = (o.key.rsplit("/", 1)[-1].removesuffix(".png") for o in self._store.list(self._images))
        share = finished_batches(self._batches, present) / len(self._batches)
        if share > self.share:
            self.share = share
            publishing.advance_progress(self._progress, share)
        return self.share


def _run_on_pool(shards: Sequence[Shard], *, deployment: str, attempts: int, poll_seconds: float,
                 tracker: BatchProgress, **shard_args) -> None:
    logger = get_run_logger()
    tries = {s.index: 1 for s in shards}
    running = {s.index: _submit(deployment, s, 1, shard_args) for s in shards}
    by_index = {s.index: s for s in shards}
    logger.info("submitted %d shards to deployment %s", len(shards), deployment)
    with get_client(sync_client=True) as client:
        while running:
            time.sleep(poll_seconds)
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
                    running[index] = _submit(deployment, by_index[index], tries[index], shard_args)
                else:
                    raise RuntimeError(f"shard {index} ended {state.type.value} after {tries[index]} attempts: "
                                       f"{state.message or 'no message'}")


def _submit(deployment: str, shard: Shard, attempt: int, shard_args: dict):
    run = run_deployment(
        name=deployment,
        parameters={"shard": shard, **shard_args},
        timeout=0,  # do not wait here: every shard is submitted before any is awaited
        flow_run_name=f"{shard_args['run_id']}-shard-{shard.index:05d}-try-{attempt}",
        as_subflow=True,
    )
    return run.id


def _shard_output(store: ObjectStore, shard: Shard, *, run_id: str, assets: str, run_date: str, **_) -> dict:
    """A finished shard's part entry, images and generation time, from its table part in S3."""
    uri = publish.table_part_uri(assets, "generations", run_date, shard_part_name(run_id, shard.index))
    part = publish.part_entry(store, "generations", uri)
    rows = publish.read_table(store, {"parts": [part]}, "generations")
    images = [{"asset_id": r.asset_id, "uri": r.output_key, "sha256": r.sha256} for r in rows.itertuples()]
    return {"part": part, "images": images, "seconds": float(rows["generation_seconds"].sum()) if len(rows) else 0.0}
