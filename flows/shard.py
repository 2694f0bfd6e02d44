"""The GPU step: a shard of batches run with the process's engine, published part by part."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from adapters import conditioning, publish
from adapters.engine import Engine, get_engine
from adapters.scorers import ClipScorer, get_clip_scorer
from adapters.settings import get_settings
from adapters.storage import S3Store
from catalogs import load_profiles
from flows import publishing
from tasks.canny import canvas_kinds, canvas_name
from tasks.plan import Batch, Shard
from tasks.tables import RunContext, generation_rows


def render_batch(engine: Engine, store: S3Store, batch: Batch, shard: Shard, *, ctx: RunContext, assets: str,
                 controls: dict[str, str], clip: ClipScorer | None = None) -> dict:
    """Generate one batch, publish and score its images, and return its `generations` rows and timing."""
    product = shard.products[batch.product_id]
    style = shard.styles[batch.style_id]
    reference_keys = [r.key for r in style.references]
    kinds = canvas_kinds(batch.params, engine.control_types, engine.adapter_images)
    canvases = conditioning.load_canvases(store, controls, batch.product_id, batch.params, kinds)
    control_keys = [controls[canvas_name(batch.product_id, batch.params, t)] for t in engine.control_types]
    control_uri = control_keys[0]
    style_input = conditioning.style_input(store, style)
    # A retried shard finds the images its first attempt wrote and only makes the rest.
    earlier = {j.asset_id: publish.existing_image(store, assets, ctx.run_id, j.asset_id) for j in batch.jobs}
    todo = [j for j in batch.jobs if earlier[j.asset_id] is None]
    start = time.perf_counter()
    fresh = engine.generate(
        canvases=canvases,
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
        control_keys=control_keys,
        mask_key=controls[canvas_name(batch.product_id, batch.params, "keep")] if "keep" in kinds else None,
        negative_reference_key=style.negative.key if style.negative else None,
        reference_keys=reference_keys,
        seconds=seconds,
        created_at=datetime.now(UTC),
    )
    pictures = [earlier[j.asset_id][1] if earlier[j.asset_id] else made[j.asset_id] for j in batch.jobs]
    rows = publishing.score_batch(store, rows, pictures, product=product, control=canvases.get("canny"), style=style,
                                  style_input=style_input, clip=clip)
    return {"rows": rows, "seconds": seconds}


def shard_part_name(run_id: str, index: int) -> str:
    """The shard's `generations` part: fixed, so a retried shard overwrites its own part."""
    return f"{run_id}-{index:05d}"


render = task(render_batch, name="render-batch", retries=1, cache_policy=NO_CACHE, tags=["gpu"])
write_part = task(publish.put_table_part, name="write-table-part", retries=2, cache_policy=NO_CACHE)


@flow(name="generate-shard")
def generate_shard(shard: Shard, run_id: str, campaign: str, assets: str, controls: dict[str, str],
                   run_date: str, batch_total: int, clip_model: str = "none", progress: str | None = None,
                   batches_before: int = 0) -> dict:
    """Run every batch of a shard with one loaded engine; write the shard's table part.

    Returns the part's manifest entry, the images it published, and the generation time.
    `clip_model` is the campaign's `selection.clip_model`. `progress` (the run's progress artifact
    id) is given only when shards run one after another: after each batch the shard moves it to
    (`batches_before` + its batches done) / `batch_total`. Shards on the pool get None, since
    they finish in any order; the campaign flow reports their progress.
    """
    logger = get_run_logger()
    settings = get_settings()
    store = S3Store.from_settings(settings)
    profile = shard.batches[0].jobs[0].profile
    engine = get_engine(profile, settings)
    clip = get_clip_scorer(clip_model, load_profiles()[profile], settings)
    ctx = RunContext(run_id=run_id, campaign=campaign, device=engine.device_name, versions=engine.versions,
                     worker=settings.worker_name)
    rows: list[dict] = []
    seconds = 0.0
    for done, batch in enumerate(shard.batches, start=1):
        result = render(engine, store, batch, shard, ctx=ctx, assets=assets,
                        controls=controls, clip=clip)
        rows += result["rows"]
        seconds += result["seconds"]
        n = len(batch.jobs)
        # One after another, a shard knows the run's count; on the pool it knows only its own.
        where = (f"batch {batches_before + done}/{batch_total}" if progress is not None
                 else f"shard {shard.index}: batch {done}/{len(shard.batches)}")
        logger.info("%s done: %d images of %s x %s in %.2f s (%.1f images/s)", where, n, batch.product_id,
                    batch.style_id, result["seconds"], n / max(result["seconds"], 1e-9))
        publishing.advance_progress(progress, (batches_before + done) / batch_total)
    part = write_part(store, assets, "generations", run_date, shard_part_name(run_id, shard.index), rows)
    images = [{"asset_id": r["asset_id"], "uri": r["output_key"], "sha256": r["sha256"]} for r in rows]
    return {"part": part, "images": images, "seconds": seconds}
