"""The GPU step: a shard of batches run with the process's engine, published part by part."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from adapters import catalog_io, publish
from adapters.engine import Engine, StyleInput, get_engine
from adapters.settings import get_settings
from adapters.storage import S3Store
from tasks.canny import control_name
from tasks.plan import Batch, Shard
from tasks.tables import RunContext, generation_rows


def render_batch(engine: Engine, store: S3Store, batch: Batch, shard: Shard, *, ctx: RunContext, assets: str,
                 control_uri: str) -> dict:
    """Generate one batch, publish its images, and return its `generations` rows and timing."""
    product = shard.products[batch.product_id]
    style = shard.styles[batch.style_id]
    reference_keys = [r.key for r in style.references]
    control = catalog_io.load_image(store, control_uri).convert("RGB")
    style_input = StyleInput.from_images(
        [catalog_io.load_image(store, k) for k in reference_keys], [r.sha256 for r in style.references]
    )
    # A retried shard finds the images its first attempt wrote and only makes the rest.
    earlier = {j.asset_id: publish.existing_image(store, assets, ctx.run_id, j.asset_id) for j in batch.jobs}
    todo = [j for j in batch.jobs if earlier[j.asset_id] is None]
    start = time.perf_counter()
    fresh = engine.generate(
        control=control,
        style=style_input,
        prompts=[j.prompt for j in todo],
        negatives=[j.negative_prompt for j in todo],
        seeds=[j.seed for j in todo],
        params=batch.params,
    ) if todo else []
    seconds = time.perf_counter() - start
    made = dict(zip([j.asset_id for j in todo], fresh, strict=True))
    outputs = [
        earlier[j.asset_id][0] if earlier[j.asset_id] else publish.put_image(store, assets, ctx.run_id, j.asset_id, made[j.asset_id])
        for j in batch.jobs
    ]
    rows = generation_rows(
        ctx, batch, outputs,
        product_key=product.image_key,
        control_key=control_uri,
        reference_keys=reference_keys,
        seconds=seconds,
        created_at=datetime.now(UTC),
    )
    return {"rows": rows, "seconds": seconds}


def shard_part_name(run_id: str, index: int) -> str:
    """The shard's `generations` part: fixed, so a retried shard overwrites its own part."""
    return f"{run_id}-{index:05d}"


render = task(render_batch, name="render-batch", retries=1, cache_policy=NO_CACHE, tags=["gpu"])
write_part = task(publish.put_table_part, name="write-table-part", retries=2, cache_policy=NO_CACHE)


@flow(name="generate-shard")
def generate_shard(shard: Shard, run_id: str, campaign: str, assets: str, controls: dict[str, str],
                   run_date: str, batch_total: int) -> dict:
    """Run every batch of a shard with one loaded engine; write the shard's table part.

    Returns the part's manifest entry, the images it published, and the generation time.
    """
    logger = get_run_logger()
    settings = get_settings()
    store = S3Store.from_settings(settings)
    profile = shard.batches[0].jobs[0].profile
    engine = get_engine(profile, settings)
    ctx = RunContext(run_id=run_id, campaign=campaign, device=engine.device_name, versions=engine.versions,
                     worker=settings.worker_name)
    rows: list[dict] = []
    seconds = 0.0
    for batch in shard.batches:
        result = render(engine, store, batch, shard, ctx=ctx, assets=assets,
                        control_uri=controls[control_name(batch.product_id, batch.params)])
        rows += result["rows"]
        seconds += result["seconds"]
        n = len(batch.jobs)
        logger.info("batch %d/%d done: %d images of %s x %s in %.2f s (%.1f images/s)",
                    batch.index + 1, batch_total, n, batch.product_id, batch.style_id,
                    result["seconds"], n / max(result["seconds"], 1e-9))
    part = write_part(store, assets, "generations", run_date, shard_part_name(run_id, shard.index), rows)
    images = [{"asset_id": r["asset_id"], "uri": r["output_key"], "sha256": r["sha256"]} for r in rows]
    return {"part": part, "images": images, "seconds": seconds}
