"""The GPU worker's work on one batch: generate it with the process's engine, publish its images and
score them where the pixels are (`adapters/steps/scoring.py`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from PIL import Image

from adapters.catalog.images import load_image, load_mask
from adapters.infra.storage import ObjectStore, parallel_map
from adapters.model.clip import ClipScorer
from adapters.model.draws import Draw
from adapters.model.engine import Engine
from adapters.model.sim_engine import SIM_PARAM
from adapters.steps import claims, conditioning, publish
from adapters.steps.scoring import Sources, score_batch
from catalogs.models import Product
from tasks.canny import canvas_kinds, canvas_name
from tasks.channels import params_box
from tasks.finish import paste_back
from tasks.plan import Batch, Shard, ShardContext
from tasks.tables import BatchInputs, RunContext, generation_rows

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Renderer:
    """What a process renders with: its engine, its CLIP scorer (None: no CLIP scores), the run context its rows
    record (run, device, versions, worker) and, for shards in the campaign's own process, the run's local copy
    folder, which each image is also written into as it is published (publish.local_image_path) so the copy never
    reads it back."""

    engine: Engine
    run: RunContext
    clip: ClipScorer | None = None
    copy_to: str | None = None


def render_batch(renderer: Renderer, store: ObjectStore, batch: Batch, shard: Shard,
                 ctx: ShardContext) -> tuple[list[dict], float]:
    """Generate one batch, publish and score its images; returns its `generations` rows and generation seconds.

    Each asset is claimed first (adapters/steps/claims.py): one another live run holds is left to it (no
    row here); one this run already wrote (a retried shard) is reused; one a presumed-dead run wrote
    and that verifies is taken over; only the rest is generated.
    """
    engine, run, clip, copy_to = renderer.engine, renderer.run, renderer.clip, renderer.copy_to
    product, style = shard.products[batch.product_id], shard.styles[batch.style_id]
    kinds = canvas_kinds(batch.params, engine.control_types, engine.adapter_images)
    held = claims.claim_all(store, ctx.run, [j.asset_id for j in batch.jobs],
                            lease=timedelta(seconds=ctx.claim_lease_seconds))
    jobs = [j for j in batch.jobs if held[j.asset_id].run_id == ctx.run_id]
    for job in batch.jobs:
        if held[job.asset_id].run_id != ctx.run_id:
            log.info("image %s is being made by run %s: left to it", job.asset_id, held[job.asset_id].run_id)
    earlier = {j.asset_id: None if held[j.asset_id].new else publish.existing_image(
        store, ctx.run.assets.run(held[j.asset_id].replaced or ctx.run_id), j.asset_id, recorder=ctx.run_id,
        copy_to=copy_to) for j in jobs}
    todo = [j for j in jobs if earlier[j.asset_id] is None]
    if not jobs:
        return [], 0.0
    canvases = conditioning.load_canvases(store, ctx.controls, batch.product_id, batch.params, kinds)
    style_input = conditioning.style_input(store, style)
    start = time.perf_counter()
    if todo and batch.params.get("background") == "white":  # composed from the photo: no model, no scene
        fresh = [white_preview(store, product, batch.params)] * len(todo)
    else:
        fresh = engine.generate(
            canvases=canvases,
            style=style_input,
            draws=[Draw(j.prompt, j.negative_prompt, j.seed) for j in todo],
            # A run's own time per image for the simulated GPU (adapters/model/sim_engine.py); a real engine ignores it.
            params=batch.params if ctx.sim_seconds is None else {**batch.params, SIM_PARAM: ctx.sim_seconds},
        ) if todo else []
    seconds = time.perf_counter() - start
    made = dict(zip([j.asset_id for j in todo], fresh, strict=True))
    # All of the batch's uploads at once (PNG encoding drops the GIL; S3 waits on latency).
    put = dict(zip(made, parallel_map(lambda a: publish.put_image(store, ctx.run, a, made[a], copy_to=copy_to),
                                      list(made)), strict=True))
    outputs = [put[j.asset_id] if j.asset_id in made else earlier[j.asset_id][0] for j in jobs]
    pictures = [made[j.asset_id] if j.asset_id in made else earlier[j.asset_id][1] for j in jobs]
    batch = batch.model_copy(update={"jobs": tuple(jobs)})
    inputs = BatchInputs(
        product_key=product.image_key,
        control_keys=tuple(ctx.controls[canvas_name(batch.product_id, batch.params, t)] for t in engine.control_types),
        reference_keys=tuple(r.key for r in style.references),
        mask_key=ctx.controls[canvas_name(batch.product_id, batch.params, "keep")] if "keep" in kinds else None,
        negative_reference_key=style.negative.key if style.negative else None,
    )
    rows = generation_rows(run, batch, outputs, inputs, seconds=seconds, created_at=datetime.now(UTC))
    sources = Sources(product=product, style_input=style_input, control=canvases.get("canny"),
                      white=batch.params.get("background") == "white")
    return score_batch(store, rows, pictures, sources, clip), seconds


def white_preview(store: ObjectStore, product: Product, params: dict) -> Image.Image:
    """A white-background image at the canvas size: the product's own pixels in its box on RGB 255.

    What selection scores; the delivered image is composed again at the marketplace's size after
    selection (adapters/steps/finishing.py), with its shadow, the product cut to its outline to fill the frame.
    """
    photo = load_image(store, product.image_key, product.sha256)
    mask, _ = load_mask(store, product, photo)
    width, height = int(params["width"]), int(params["height"])
    white = Image.new("RGB", (width, height), (255, 255, 255))
    return paste_back(white, photo, mask, params_box(params) or (0, 0, width, height)).image
