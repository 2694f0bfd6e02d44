"""The GPU worker's work on one batch: generate it with the process's engine, publish and score its images.

Scores are computed where the pixels are (the worker holds the images and the CLIP model);
the run's gates, near-duplicates and ranks are decided later, across the run
(`adapters/run_outputs.py`).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import numpy as np
from PIL import Image

from adapters import claims, conditioning, publish
from adapters.engine import Engine, StyleInput
from adapters.images import load_image, load_mask
from adapters.scorers import ClipScorer
from adapters.sim_engine import SIM_PARAM
from adapters.storage import ObjectStore, parallel_map
from catalogs.models import Product
from tasks.canny import canvas_kinds, canvas_name, fit_to_canvas
from tasks.channels import channel_checks, params_box, row_layout
from tasks.consistency import background_look
from tasks.finish import paste_back
from tasks.plan import Batch, Shard, ShardContext
from tasks.scores import background_region, clipped_share, edge_map, is_blank, pixel_scores, product_mask_on_canvas
from tasks.tables import BatchInputs, RunContext, generation_rows

log = logging.getLogger(__name__)


def render_batch(engine: Engine, store: ObjectStore, batch: Batch, shard: Shard, ctx: ShardContext,
                 run: RunContext, clip: ClipScorer | None = None) -> tuple[list[dict], float]:
    """Generate one batch, publish and score its images; returns its `generations` rows and generation seconds.

    Each asset is claimed first (adapters/claims.py): one another live run holds is left to it (no
    row here); one this run already wrote (a retried shard) is reused; one a presumed-dead run wrote
    and that verifies is taken over; only the rest is generated.
    """
    product, style = shard.products[batch.product_id], shard.styles[batch.style_id]
    kinds = canvas_kinds(batch.params, engine.control_types, engine.adapter_images)
    held = claims.claim_all(store, ctx.assets, [j.asset_id for j in batch.jobs], ctx.run_id,
                            lease=timedelta(seconds=ctx.claim_lease_seconds))
    jobs = [j for j in batch.jobs if held[j.asset_id].run_id == ctx.run_id]
    for job in batch.jobs:
        if held[job.asset_id].run_id != ctx.run_id:
            log.info("image %s is being made by run %s: left to it", job.asset_id, held[job.asset_id].run_id)
    earlier = {j.asset_id: None if held[j.asset_id].new else publish.existing_image(
        store, ctx.assets, held[j.asset_id].replaced or ctx.run_id, j.asset_id, recorder=ctx.run_id,
        copy_to=ctx.local_copy) for j in jobs}
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
            prompts=[j.prompt for j in todo],
            negatives=[j.negative_prompt for j in todo],
            seeds=[j.seed for j in todo],
            # A run's own time per image for the simulated GPU (adapters/sim_engine.py); a real engine ignores it.
            params=batch.params if ctx.sim_seconds is None else {**batch.params, SIM_PARAM: ctx.sim_seconds},
        ) if todo else []
    seconds = time.perf_counter() - start
    made = dict(zip([j.asset_id for j in todo], fresh, strict=True))
    # All of the batch's uploads at once (PNG encoding drops the GIL; S3 waits on latency).
    put = dict(zip(made, parallel_map(lambda a: publish.put_image(store, ctx.assets, ctx.run_id, a, made[a],
                                                                  copy_to=ctx.local_copy), list(made)), strict=True))
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
    return score_batch(store, rows, pictures, product=product, control=canvases.get("canny"),
                       style_input=style_input, clip=clip, white=batch.params.get("background") == "white"), seconds


def white_preview(store: ObjectStore, product: Product, params: dict) -> Image.Image:
    """A white-background image at the canvas size: the product's own pixels in its box on RGB 255.

    What selection scores; the delivered image is composed again at the marketplace's size after
    selection (adapters/finishing.py), with its shadow, the product cut to its outline to fill the frame.
    """
    photo = load_image(store, product.image_key, product.sha256)
    mask, _ = load_mask(store, product, photo)
    width, height = int(params["width"]), int(params["height"])
    white = Image.new("RGB", (width, height), (255, 255, 255))
    return paste_back(white, photo, mask, params_box(params) or (0, 0, width, height)).image


@functools.lru_cache(maxsize=16)
def product_view(store: ObjectStore, product: Product, width: int, height: int,
                 box: tuple[int, ...] | None) -> tuple[np.ndarray, Image.Image, str]:
    """The product as a batch's images are scored against it: its mask on the canvas, its photo fitted to
    the canvas (in `box`), and where the mask came from.

    Read and computed once per product and canvas in a process, not once per batch: a shard's
    batches of one product share it, and so do the shards a GPU worker serves. The photo is read
    with the sha256 the catalog recorded, so a cached view is never of other bytes. Read-only.

    Raises FileNotFoundError or ValueError when the photo or mask cannot be read.
    """
    photo = load_image(store, product.image_key, product.sha256)  # the photo the images were made from
    mask, source = load_mask(store, product, photo)
    region = product_mask_on_canvas(photo, width, height, mask, box)
    region.flags.writeable = False
    return region, fit_to_canvas(photo, width, height, box=box), source


def score_batch(store: ObjectStore, rows: list[dict], images: Sequence[Image.Image], *, product: Product,
                control: Image.Image | None, style_input: StyleInput, clip: ClipScorer | None,
                white: bool = False) -> list[dict]:
    """The batch's rows with every score filled in; a blank image is marked failed.

    Fidelity is measured against the product photo as the control images placed it (in a channel's
    product box), inside the product's mask (its mask file, alpha channel or plain background; else the whole photo).
    `control` is the batch's canny control image; without one (a profile with other
    ControlNets) the fitted product's edges are computed here with the same thresholds.
    A photo or mask that cannot be read any more leaves the fidelity scores and `product_mask` null.
    `white`: images on a white background, whose background hash is left null (they repeat no scene).
    """
    first = rows[0]
    width, height, low, high = (int(first[k]) for k in ("width", "height", "canny_low", "canny_high"))
    layout = row_layout(first)  # a channel's product box and safe zones; none: the product centred on the canvas
    box = params_box(layout)
    what = f"{product.product_id} x {first.get('style_id', '?')}"
    try:
        view = product_view(store, product, width, height, box)
    except (FileNotFoundError, ValueError) as exc:
        # Gone, overwritten or broken since the run read it: fidelity cannot be measured, every
        # other score can. A connection error is not caught: the shard's retry reads it again.
        log.warning("fidelity scores of %s left null: the product photo or mask cannot be read: %s", what, exc)
        view = None
    if view is not None:
        region, canvas, source = view
        control_edges = np.asarray(control.convert("L")) > 127 if control is not None else edge_map(canvas, low, high)
    else:  # no product region known: the background hash covers the whole image
        region, canvas, control_edges, source = np.zeros((height, width), dtype=bool), None, None, None
    clip_scores: list[tuple[float | None, float | None]] = [(None, None)] * len(images)
    embeddings: list[list[float] | None] = [None] * len(images)
    if clip is not None:
        try:
            clip_scores, embeddings = clip.score_and_embed(images, [r["prompt"] for r in rows], style_key=style_input.key,
                                                           references=style_input.images, weights=style_input.weights)
        except Exception as exc:  # a scorer's failure costs its columns, never the images
            log.warning("CLIP scores of %s failed: %s: %s", what, type(exc).__name__, exc)
            clip = None
    background = background_region(region)  # one product region per batch: its background once
    for row, image, (clip_text, clip_style), embedding in zip(rows, images, clip_scores, embeddings, strict=True):
        scores, problems = pixel_scores(image, product_canvas=canvas, control_edges=control_edges, mask=region,
                                        canny_low=low, canny_high=high)
        for problem in problems:
            log.warning("image %s: score %s", row["asset_id"], problem)
        try:
            row.update(background_look(image, background), clip_embedding=embedding)
        except Exception as exc:  # the look costs the consistency columns, never the image
            log.warning("image %s: background look: %s: %s", row["asset_id"], type(exc).__name__, exc)
        checks = channel_checks(region, image.size, layout)
        if view is None:  # the product region is unknown: only the size checks hold
            checks.update(safe_zone_share=None, product_share=None, product_cut=None)
        row.update(scores, **checks, product_mask=source, clip_text=clip_text, clip_style=clip_style,
                   clip_model=clip.name if clip is not None else None)
        if white:  # white by design: its background repeats no scene, and it is not blown out
            row.update(background_hash=None, clipped_share=clipped_share(image, region) if region.any() else None)
        if is_blank(image):
            row.update(status="failed", status_reason="blank image: every pixel is the same colour")
    return rows
