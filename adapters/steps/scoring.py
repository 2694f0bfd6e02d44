"""Scoring a batch where its pixels are: fidelity to the product, the look of its background, CLIP
alignment and style similarity, the channel's checks; a blank image is marked failed.

The run's gates, near-duplicates and ranks are decided later, across the run (`adapters/steps/run_outputs.py`).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from adapters.catalog.images import load_image, load_mask
from adapters.infra.storage import ObjectStore
from adapters.model.clip import ClipScorer
from adapters.model.engine import StyleInput
from catalogs.models import Product
from tasks.canny import fit_to_canvas
from tasks.channels import channel_checks, params_box, row_layout
from tasks.consistency import background_look
from tasks.scores import background_region, clipped_share, edge_map, is_blank, pixel_scores, product_mask_on_canvas

log = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class Sources:
    """What a batch was made from, as its scores compare against: the product, the style set's references,
    the canny control image (None: a profile with other ControlNets) and whether it is on white by design."""

    product: Product
    style_input: StyleInput
    control: Image.Image | None = None
    white: bool = False


def score_batch(store: ObjectStore, rows: list[dict], images: Sequence[Image.Image], sources: Sources,
                clip: ClipScorer | None = None) -> list[dict]:
    """The batch's rows with every score filled in; a blank image is marked failed.

    Fidelity is measured against the product photo as the control images placed it (in a channel's
    product box), inside the product's mask (its mask file, alpha channel or plain background; else the whole photo).
    `control` is the batch's canny control image; without one (a profile with other
    ControlNets) the fitted product's edges are computed here with the same thresholds.
    A photo or mask that cannot be read any more leaves the fidelity scores and `product_mask` null.
    `white`: images on a white background, whose background hash is left null (they repeat no scene).
    """
    product, style_input, control, white = sources.product, sources.style_input, sources.control, sources.white
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
