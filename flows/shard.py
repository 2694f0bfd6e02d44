"""The GPU step: a shard of batches run with the process's engine, its staged `generations` part written last.

A shard is one task run wherever it runs: `generate_shard` in the campaign's own process, one
shard after another, or `flows/gpu_worker.generate_shard_task` on a GPU worker, with the engine it
keeps loaded. Its batches are plain calls inside it (a task run per batch cost about a tenth of a
second of API calls each, and thousands of task runs per campaign on the Prefect server). A shard
that fails runs again and skips the images it already wrote.
"""

from __future__ import annotations

from dataclasses import dataclass

from prefect import get_run_logger

from adapters.infra.settings import get_settings
from adapters.infra.storage import S3Store
from adapters.model.clip import get_clip_scorer
from adapters.model.engine import get_engine
from adapters.steps import rendering
from adapters.steps.rendering import Renderer
from adapters.steps.shards import shard_part_name
from catalogs import load_profiles
from flows import steps
from flows.progress import Progress
from tasks.plan import Shard, ShardContext
from tasks.tables import RunContext


@dataclass(frozen=True)
class ShardRuntime:
    """What a shard is run with besides its stored spec and the run's `ShardContext`, never sent to a worker.

    In the campaign's own process, where shards run one after another, `progress` is the run's reporter
    (its artifact, the terminal's bar), the counts are those of the shards before this one and `local_copy`
    is the run's local copy folder; on a GPU worker, `progress` counts the shard's images for its heartbeat
    and the shard knows only itself.
    """

    progress: Progress
    images_before: int = 0
    batches_before: int | None = None  # None: on a GPU worker, which does not know the run's batches
    local_copy: str | None = None


def run_shard(shard: Shard, ctx: ShardContext, runtime: ShardRuntime) -> dict:
    """Run every batch of a shard with the process's engine (loaded on first use); write the shard's table part.

    Returns the part's manifest entry. After each batch the shard reports `runtime.images_before` + its
    images done to `runtime.progress`, which never moves back when a failed shard runs again.
    """
    logger = get_run_logger()
    settings = get_settings()
    store = S3Store.shared(settings)
    profile = shard.batches[0].jobs[0].profile
    engine = get_engine(profile, settings)
    clip = get_clip_scorer(ctx.clip_model, load_profiles()[profile], settings)
    renderer = Renderer(engine=engine, clip=clip, copy_to=runtime.local_copy, run=RunContext(
        run_id=ctx.run_id, campaign=ctx.campaign, device=engine.device_name, versions=engine.versions,
        worker=settings.worker_name))
    rows: list[dict] = []
    images = 0
    for done, batch in enumerate(shard.batches, start=1):
        batch_rows, seconds = rendering.render_batch(renderer, store, batch, shard, ctx)
        rows += batch_rows
        # One after another, a shard knows the run's count; on the pool it knows only its own.
        where = (f"batch {runtime.batches_before + done}/{ctx.batch_total}" if runtime.batches_before is not None
                 else f"shard {shard.index}: batch {done}/{len(shard.batches)}")
        n = len(batch.jobs)
        logger.info("%s done: %d images of %s x %s in %.2f s (%.1f images/s)", where, n, batch.product_id,
                    batch.style_id, seconds, n / max(seconds, 1e-9))
        images += n
        runtime.progress.reach(runtime.images_before + images)
    return steps.write_part(store, ctx.run, "generations", shard_part_name(ctx.run_id, shard.index), rows)


# A shard in the campaign's own process (on a GPU worker: flows/gpu_worker.generate_shard_task).
generate_shard = steps.step(run_shard, name="generate-shard-in-process", retries=1, tags=["gpu"])
