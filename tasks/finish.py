"""Finishing, after selection: an image brought to its delivery size, the product's own pixels pasted back
at that size over a grounded shadow, a marketplace main image composed on white, and the checks.

What each channel gets is resolved once (`finish_plans`): its `upscale:` (the channel's, else its
marketplace preset's, else the campaign's), its `shadow:`, its background rule and marketplace. The
pixels are made here from plain images (`paste_back`, `compose_white`); adapters/steps/finishing.py reads
and writes them, and runs the model for the `tile` and `x4` methods.

The product is never taken from an upscaled render: in preserve mode (and on a white background)
it is fitted again from the catalog photo at the final size, and a photo smaller than its box there
is said in one line (`stretch_note`) and marked in the `finishes` table.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from catalogs.models import PRESETS, Campaign, ChannelSpec, Shadow, Upscale
from tasks.canny import canvas_mask, fit_to_canvas
from tasks.channels import channel_of, params_box, row_layout
from tasks.marketplace import MARKETPLACES, MarketplacePreset
from tasks.shadow import draw_shadow, shadow_alpha, shadow_region
from tasks.upscale import target_size

FINISH_ID_VERSION = 1
Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class FinishPlan:
    """What finishing does to one channel's images (`channel` None: a campaign without channels)."""

    channel: str | None
    upscale: Upscale | None = None
    shadow: Shadow | None = None
    marketplace: MarketplacePreset | None = None
    background: str = "scene"  # scene | white

    @property
    def active(self) -> bool:
        return bool(self.upscale or self.shadow or self.marketplace or self.background == "white")

    @property
    def only(self) -> str:
        """Which images are finished: `selected` (the default) or `all` that are not failed."""
        return self.upscale.only if self.upscale else "selected"

    def params(self) -> dict:
        """The plan as recorded and hashed into the finished image's id."""
        return {"upscale": self.upscale.model_dump(mode="json") if self.upscale else None,
                "shadow": self.shadow.model_dump(mode="json") if self.shadow else None,
                "marketplace": self.marketplace.name if self.marketplace else None, "background": self.background}


def channel_plan(campaign: Campaign, name: str | None) -> FinishPlan:
    """One channel's finishing: its own settings, else its marketplace preset's, else the campaign's."""
    if name is None:
        return FinishPlan(channel=None, upscale=campaign.upscale, shadow=campaign.shadow)
    spec = campaign.channels.get(name, ChannelSpec())
    preset = spec.preset or (name if name in PRESETS else None)
    market = MARKETPLACES.get(preset or "")
    background = spec.background or (market.background if market else "scene")
    upscale = spec.upscale or campaign.upscale or (market.upscale if market and background == "scene" else None)
    shadow = spec.shadow or campaign.shadow or (market.shadow if market else None)
    return FinishPlan(channel=name, upscale=upscale, shadow=shadow, marketplace=market, background=background)


def finish_plans(campaign: Campaign, channels: Sequence[str | None]) -> dict[str | None, FinishPlan]:
    """The plan of each channel a run's images were made for (None: no channel)."""
    return {name: channel_plan(campaign, name) for name in dict.fromkeys(channels)}


def to_finish(rows: Sequence[Mapping], plans: Mapping[str | None, FinishPlan]) -> list[Mapping]:
    """The rows whose images are finished: those whose channel's plan does something, selected (or every
    image not failed, with `upscale.only: all`)."""
    out = []
    for row in rows:
        plan = plans.get(channel_of(row))
        if plan is None or not plan.active or row.get("status") == "failed" or not row.get("output_key"):
            continue
        if row.get("selected") or (plan.only == "all" and row.get("status") in ("ok", "gated", "duplicate")):
            out.append(row)
    return out


def final_size(row: Mapping, plan: FinishPlan, multiple: int = 8) -> tuple[int, int]:
    """The finished image's size: the marketplace's canvas on white, else the upscale's long side, else the render's."""
    if plan.background == "white" and plan.marketplace is not None:
        return plan.marketplace.width, plan.marketplace.height
    width, height = int(row["width"]), int(row["height"])
    if plan.upscale is None:
        return width, height
    return target_size(width, height, plan.upscale.long_side, multiple)


def pastes_product(row: Mapping, plan: FinishPlan) -> bool:
    """Whether the product's own pixels are pasted back: preserve mode, or a white background."""
    return row.get("mode") == "preserve" or plan.background == "white"


def finish_id(source_asset_id: str, plan: FinishPlan, size: tuple[int, int], model_revision: str = "") -> str:
    """The finished image's asset id: a sha256 over its source, its plan, its size and the model that refined it."""
    payload = {"v": FINISH_ID_VERSION, "source": source_asset_id, "plan": plan.params(), "size": list(size),
               "model": model_revision}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:32]


def scale_box(box: Sequence[int], source: tuple[int, int], size: tuple[int, int]) -> Box:
    """A box on a source canvas, on the same canvas at another size."""
    sx, sy = size[0] / source[0], size[1] / source[1]
    return (round(box[0] * sx), round(box[1] * sy), round(box[2] * sx), round(box[3] * sy))


def stretch_note(photo: Image.Image, box: Sequence[int]) -> str | None:
    """One line when the product photo is smaller than its box (it is stretched to fill it); None otherwise."""
    w, h = box[2] - box[0], box[3] - box[1]
    scale = min(w / photo.width, h / photo.height)
    if scale <= 1.0:
        return None
    return (f"the product photo gives {photo.width}x{photo.height} px, less than its {w}x{h} box at this size: "
            f"stretched x{scale:.2f} (a larger catalog photo gives a sharper product)")


@dataclass(frozen=True)
class Finished:
    """A finished image and what the checks need: where the product and its shadow are, and any note."""

    image: Image.Image
    product: np.ndarray  # booleans: the product's pixels (keep-mask >= 128)
    reference: Image.Image  # the catalog photo fitted at this size: what fidelity is measured against
    shadow: np.ndarray | None = None  # booleans: where the shadow and the product's soft outline may be grey
    note: str | None = None
    pasted: bool = False


def paste_back(base: Image.Image, photo: Image.Image, mask: Image.Image | None, box: Sequence[int],
               shadow: Shadow | None = None) -> Finished:
    """The product's own pixels pasted on `base` at `base`'s size, fitted into `box`, over its shadow.

    Exact where the keep-mask is 255: those pixels are the catalog photo fitted at this size (Lanczos from
    the photo itself, never from a render). The shadow is drawn on the background first.
    """
    width, height = base.size
    fitted = fit_to_canvas(photo, width, height, box=box)
    keep = canvas_mask(photo, mask, width, height, box)
    levels = np.asarray(keep)
    product = levels >= 128
    region = (levels > 0) & ~product  # the product's anti-aliased outline: part product, never pure white
    if shadow is not None:
        alpha = shadow_alpha(product, shadow)
        base = draw_shadow(base, alpha, shadow.colour)
        region |= shadow_region(alpha) & ~product
    image = Image.composite(fitted, base.convert("RGB"), keep)
    return Finished(image=image, product=product, reference=fitted, shadow=region, note=stretch_note(photo, box),
                    pasted=True)


def as_rendered(image: Image.Image, photo: Image.Image, mask: Image.Image | None, box: Sequence[int]) -> Finished:
    """An upscaled render kept as the model made it (no paste-back), with where its product should be."""
    width, height = image.size
    product = np.asarray(canvas_mask(photo, mask, width, height, box)) >= 128
    return Finished(image=image.convert("RGB"), product=product, reference=fit_to_canvas(photo, width, height, box=box))


def product_crop(photo: Image.Image, mask: Image.Image | None) -> tuple[Image.Image, Image.Image | None]:
    """The photo (and mask) cut to the product's bounding box, so a main image fills the frame with the
    product rather than with the photo's own margins."""
    source = mask if mask is not None else (photo.getchannel("A") if photo.mode == "RGBA" else None)
    if source is None:
        return photo, mask
    bbox = source.convert("L").point(lambda v: 255 if v >= 128 else 0).getbbox()
    if bbox is None:
        return photo, mask
    return photo.crop(bbox), mask.crop(bbox) if mask is not None else None


def white_box(crop: tuple[int, int], size: tuple[int, int], fill: float) -> Box:
    """Where a product of `crop` size goes on a white canvas: its long side `fill` of the frame, centred."""
    scale = fill * min(size[0] / crop[0], size[1] / crop[1])
    w, h = max(1, round(crop[0] * scale)), max(1, round(crop[1] * scale))
    left, top = (size[0] - w) // 2, (size[1] - h) // 2
    return (left, top, left + w, top + h)


def compose_white(photo: Image.Image, mask: Image.Image | None, size: tuple[int, int], fill: float,
                  shadow: Shadow | None = None) -> Finished:
    """A main image: the product, cut to its own outline, on pure white (RGB 255) with only its shadow."""
    crop, crop_mask = product_crop(photo, mask)
    white = Image.new("RGB", size, (255, 255, 255))
    return paste_back(white, crop, crop_mask, white_box(crop.size, size, fill), shadow)


def render_box(row: Mapping, size: tuple[int, int]) -> Box:
    """The product's box of a `generations` row (its channel's, else the whole canvas) at the finished size."""
    width, height = int(row["width"]), int(row["height"])
    box = params_box(row_layout(row)) or (0, 0, width, height)
    return scale_box(box, (width, height), size)


def with_finishes(rows: Sequence[Mapping], finishes: Sequence[Mapping]) -> list[Mapping]:
    """The rows as the sheets and gallery show them: each finished image's size, file and checks beside its source.

    A row with no finished image is the row itself, not a copy (a run's rows are most of its memory); neither
    the sheets nor the gallery change a row."""
    by_source = {f["source_asset_id"]: f for f in finishes}
    return [{**r, "finish": by_source[r["asset_id"]]} if r["asset_id"] in by_source else r for r in rows]
