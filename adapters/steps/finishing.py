"""Finishing a run's images after selection: upscale, paste the product back, shadow, check, publish.

Each finished image is its own asset under the run's `images/`, with a row in the `finishes` table
pointing at its source (tasks/tables.FINISHES). Like the other outputs written before the manifest,
it is rewritten by a retry and counts only once the run commits. The pixels are made by
tasks/finish.py; the `tile` and `x4` methods run the profile's models in this process
(adapters/model/upscale.py), on the engine the shards loaded.

Where model relighting (IC-Light) would go: `relight`, between the upscale and the paste-back.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from PIL import Image

from adapters.catalog.images import load_image, load_mask
from adapters.infra.settings import get_settings
from adapters.infra.storage import ObjectStore
from adapters.steps import publish
from catalogs.models import Campaign, Product
from tasks.channels import channel_of
from tasks.finish import (
    Finished,
    FinishPlan,
    as_rendered,
    compose_white,
    final_size,
    finish_id,
    finish_plans,
    paste_back,
    pastes_product,
    render_box,
    to_finish,
)
from tasks.marketplace import marketplace_checks
from tasks.plan import ShardContext
from tasks.scores import masked_ssim, mean_delta_e
from tasks.tables import SCHEMA_VERSION, Published
from tasks.upscale import lanczos_to

log = logging.getLogger(__name__)
WHITE_FILL = 0.85  # a white-background channel that is no marketplace preset: the product's share of the frame


def relight(image: Image.Image, finished_size: tuple[int, int], row: dict) -> Image.Image:
    """The hook for relighting the scene's light onto the product with a model (IC-Light): not built, so the
    picture passes unchanged. It would run on the upscaled picture, before the shadow and paste-back."""
    return image


def upscaled(render: Image.Image, size: tuple[int, int], row: dict, plan: FinishPlan) -> tuple[Image.Image, str, str | None]:
    """The render at `size`, with the method's name and the revision of the model that refined it (None: no model)."""
    up = plan.upscale
    if up is None or render.size == size and up.method == "lanczos":
        return (render.convert("RGB"), "none", None) if render.size == size else (lanczos_to(render, size), "lanczos", None)
    if up.method == "lanczos":
        return lanczos_to(render, size), "lanczos", None
    from adapters.model.draws import Draw
    from adapters.model.upscale import tile_upscaler, x4_upscaler  # torch: only where a model refines

    settings = get_settings()
    model = tile_upscaler(row["profile"], settings) if up.method == "tile" else x4_upscaler(row["profile"], settings)
    picture = model.refine(render, size, Draw(row["prompt"], row["negative_prompt"] or "", int(row["seed"])), up=up)
    return picture, up.method, model.revision


def finish_image(render: Image.Image, photo: Image.Image, mask: Image.Image | None, row: dict,
                 plan: FinishPlan) -> tuple[Finished, str, str | None]:
    """One image finished by its plan: (the finished image, the method, the refining model's revision)."""
    size = final_size(row, plan)
    if plan.background == "white":
        fill = plan.marketplace.fill if plan.marketplace else WHITE_FILL
        return compose_white(photo, mask, size, fill, plan.shadow), "compose", None
    picture, method, revision = upscaled(render, size, row, plan)
    picture = relight(picture, size, row)
    box = render_box(row, size)
    if pastes_product(row, plan):
        return paste_back(picture, photo, mask, box, plan.shadow), method, revision
    return as_rendered(picture, photo, mask, box), method, revision


def finish_run(store: ObjectStore, ctx: ShardContext, spec: Campaign, products: Sequence[Product],
               rows: Sequence[dict], *, copy_to: str | None = None) -> list[dict]:
    """Finish the run's images that their channel's plan asks for; their `finishes` rows, which the run
    commits with its other tables. Each finished image is also written into the run's local copy `copy_to`."""
    plans = finish_plans(spec, [channel_of(r) for r in rows])
    todo = to_finish(rows, plans)
    by_id = {p.product_id: p for p in products}
    out = []
    for row in todo:
        clock = time.perf_counter()
        plan = plans[channel_of(row)]
        product = by_id[row["product_id"]]
        photo = load_image(store, product.image_key, product.sha256)
        mask, _ = load_mask(store, product, photo)
        render = load_image(store, row["output_key"])
        done, method, revision = finish_image(render, photo, mask, row, plan)
        aid = finish_id(row["asset_id"], plan, done.image.size, revision or "")
        if done.note and done.pasted:
            log.warning("finished image %s of %s (%s): %s", aid, row["product_id"], channel_of(row) or "no channel",
                        done.note)
        checks, reasons = ({}, []) if plan.marketplace is None else \
            marketplace_checks(done.image, done.product, plan.marketplace, shadow=done.shadow)
        for reason in reasons:
            log.warning("finished image %s of %s fails %s: %s", aid, row["product_id"], plan.marketplace.name, reason)
        stored = publish.put_image(store, ctx.run, aid, done.image, copy_to=copy_to)
        made = Made(method=method, revision=revision, stored=stored, checks=checks, reasons=reasons,
                    seconds=time.perf_counter() - clock)
        out.append(finish_row(ctx, row, plan, done, made))
    return out


@dataclass(frozen=True)
class Made:
    """How one finished image was made and stored, and its marketplace checks (empty without a marketplace)."""

    method: str
    revision: str | None
    stored: Published
    checks: dict = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)
    seconds: float = 0.0


def finish_row(ctx: ShardContext, row: dict, plan: FinishPlan, done: Finished, made: Made) -> dict:
    """The `finishes` row of one finished image."""
    values, reasons, stored, method, revision = made.checks, made.reasons, made.stored, made.method, made.revision
    return {
        "schema_version": SCHEMA_VERSION, "asset_id": stored.asset_id, "source_asset_id": row["asset_id"],
        "run_id": ctx.run_id, "campaign": ctx.campaign, "product_id": row["product_id"], "channel": channel_of(row),
        "marketplace": plan.marketplace.name if plan.marketplace else None, "background": plan.background,
        "method": method, "upscale": json.dumps(plan.upscale.model_dump(mode="json"), sort_keys=True) if plan.upscale else None,
        "model_revision": revision, "seed": int(row["seed"]),
        "source_width": int(row["width"]), "source_height": int(row["height"]),
        "width": done.image.width, "height": done.image.height,
        "shadow": json.dumps(plan.shadow.model_dump(mode="json"), sort_keys=True) if plan.shadow and done.pasted else None,
        "paste_back": done.pasted, "product_stretched": bool(done.note) and done.pasted,
        "note": done.note if done.pasted else None,
        "product_ssim": masked_ssim(done.reference, done.image, done.product),
        "product_delta_e": mean_delta_e(done.reference, done.image, done.product),
        "long_side": max(done.image.size), "white_background_share": values.get("white_background_share"),
        "product_fill": values.get("product_fill"), "text_added": bool(values.get("text_added", False)),
        "checks_passed": (not reasons) if plan.marketplace else None, "check_reasons": list(reasons),
        "output_key": stored.uri, "sha256": stored.sha256, "bytes": stored.size, "finish_seconds": made.seconds,
        "created_at": datetime.now(UTC),
    }
