"""Channels: a placement's canvas and layout, where the product goes on it, and the checks of an image.

A channel is resolved (`resolve_channels`) from a preset, the campaign's overrides and the
model profile's size family into a `Layout` in pixels. The product's box (`product_box`) is
placed by rule: inside the canvas less its margin, clear of every safe zone, as large as the
room and `max_share` allow with the photo's aspect, pushed toward the anchor. The control
images, canvases and score masks then put the product in that box (`tasks.canny.fit_to_canvas`).

Preset sizes are multiples of 64 near 512 px on the short side for SD1.5 and 1024 px for SDXL,
with the exact aspect where such a size exists (the SDXL story and banner are 4:7, 1.6% off
9:16, as SDXL's own 768 x 1344 bucket is). The random-weight tiny kits get small canvases with
the exact aspects (multiples of 8), so tests stay fast.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from catalogs.models import CHANNEL_AXIS, PRESETS, Campaign, ChannelSpec, ModelProfile, Zone
from tasks.marketplace import MARKETPLACES
from tasks.values import is_missing

Box = tuple[int, int, int, int]  # left, top, right, bottom in pixels; right and bottom exclusive

# Layouts of the presets. Story: Meta keeps the top 14% and the bottom 20% of a story for its own
# interface; banner: the right 45% is the copy's; portrait: the bottom 20% holds a caption line.
PRESET_LAYOUTS: dict[str, dict] = {
    "square": {"aspect": "1:1", "anchor": "centre", "max_share": 0.6, "margin": 0.06, "safe_zones": ()},
    "portrait": {"aspect": "4:5", "anchor": "top", "max_share": 0.5, "margin": 0.06,
                 "safe_zones": (Zone(top=0.8),)},
    "story": {"aspect": "9:16", "anchor": "centre", "max_share": 0.4, "margin": 0.05,
              "safe_zones": (Zone(bottom=0.14), Zone(top=0.8))},
    "banner": {"aspect": "16:9", "anchor": "centre", "max_share": 0.45, "margin": 0.06,
               "safe_zones": (Zone(left=0.55),)},
}
PRESET_SIZES: dict[str, dict[str, tuple[int, int]]] = {
    "tiny": {"square": (64, 64), "portrait": (64, 80), "story": (72, 128), "banner": (128, 72)},
    "sd15": {"square": (512, 512), "portrait": (512, 640), "story": (576, 1024), "banner": (1024, 576)},
    "sdxl": {"square": (1024, 1024), "portrait": (1024, 1280), "story": (1024, 1792), "banner": (1792, 1024)},
}
# A marketplace preset is made on the family's square canvas, the product as large as its fill asks;
# its final size, background rule and checks are the marketplace's (tasks/marketplace.py).
for _name, _market in MARKETPLACES.items():
    PRESET_LAYOUTS[_name] = {"aspect": "1:1", "anchor": "centre", "max_share": 1.0,
                             "margin": round((1 - _market.fill) / 2, 4), "safe_zones": (), "background": _market.background}
    for _sizes in PRESET_SIZES.values():
        _sizes[_name] = _sizes["square"]
MIN_BOX = 8  # the smallest product box, in pixels a side, that a layout must leave room for


@dataclass(frozen=True)
class Layout:
    """A channel resolved to pixels: its canvas, declared aspect, anchor, product share, margin and safe zones."""

    name: str
    width: int
    height: int
    aspect: str
    anchor: str
    max_share: float
    margin: float
    safe_zones: tuple[Box, ...]
    background: str = "scene"  # white: the product composed on RGB 255, no generated scene

    @property
    def margin_px(self) -> int:
        return round(self.margin * min(self.width, self.height))


def size_family(profile: ModelProfile | None, profile_name: str | None = None) -> str:
    """Which preset sizes suit a profile: `tiny` (the random-weight kits), `sd15` or `sdxl`."""
    if profile is not None:
        if profile.base.source.startswith("builtin:"):
            return "tiny"
        return profile.pipeline
    name = profile_name or ""
    return "tiny" if name.startswith("tiny") else "sdxl" if "sdxl" in name else "sd15"


def zone_box(zone: Zone, width: int, height: int) -> Box:
    """A zone in whole pixels, grown outward to the pixels it touches."""
    return (math.floor(zone.left * width), math.floor(zone.top * height),
            math.ceil(zone.right * width), math.ceil(zone.bottom * height))


def resolve_channel(name: str, spec: ChannelSpec, family: str) -> Layout:
    """One channel in pixels: its preset (by `preset:` or by name) with the spec's fields over it.

    Raises:
        ValueError: a channel that is no preset lacks a size or aspect, or an unknown size family.
    """
    preset = spec.preset or (name if name in PRESETS else None)
    if family not in PRESET_SIZES:
        raise ValueError(f"channel {name!r}: unknown size family {family!r}; known: {sorted(PRESET_SIZES)}")
    base = dict(PRESET_LAYOUTS[preset]) if preset else {"anchor": "centre", "max_share": 0.5, "margin": 0.05,
                                                        "safe_zones": ()}
    width, height = PRESET_SIZES[family][preset] if preset else (None, None)
    fields = spec.model_dump(exclude_none=True, exclude={"preset", "delivery", "upscale", "shadow"})
    width, height = fields.pop("width", width), fields.pop("height", height)
    zones = spec.safe_zones if spec.safe_zones is not None else base["safe_zones"]
    fields.pop("safe_zones", None)
    merged = {**base, **fields}
    if width is None or height is None or "aspect" not in merged:
        raise ValueError(f"channel {name!r} is no preset: give it width, height and aspect")
    return Layout(name=name, width=int(width), height=int(height), aspect=merged["aspect"], anchor=merged["anchor"],
                  max_share=float(merged["max_share"]), margin=float(merged["margin"]),
                  safe_zones=tuple(zone_box(z, int(width), int(height)) for z in zones),
                  background=merged.get("background", "scene"))


def resolve_channels(campaign: Campaign, profile: ModelProfile | None = None) -> dict[str, Layout]:
    """Every channel a campaign's `channel` axis names, resolved for its profile; {} without channels.

    A `channel` axis without a `channels:` section names presets as they are.

    Raises:
        ValueError: the axis names a channel the campaign does not define (or, without `channels:`,
            no preset), or a channel's layout leaves no room for a product.
    """
    names = [str(v) for v in campaign.matrix.axes.get(CHANNEL_AXIS, ())]
    family = size_family(profile, campaign.generation.profile)
    specs = campaign.channels or {}
    known = set(specs) if specs else set(PRESETS)
    unknown = [n for n in names if n not in known]
    if unknown:  # a run request's axis override is checked here, not when the spec is read
        raise ValueError(f"campaign {campaign.name!r}: channels {unknown} are not "
                         f"{'in its channels' if specs else 'presets'} ({sorted(known)})")
    return {n: resolve_channel(n, specs.get(n, ChannelSpec()), family) for n in names}


def _overlaps(a: Box, b: Box) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def free_rooms(layout: Layout) -> list[Box]:
    """The rectangles inside the canvas less its margin that touch no safe zone and cannot grow (candidates)."""
    m = layout.margin_px
    inner = (m, m, layout.width - m, layout.height - m)
    xs = sorted({inner[0], inner[2], *(min(max(v, inner[0]), inner[2]) for z in layout.safe_zones for v in (z[0], z[2]))})
    ys = sorted({inner[1], inner[3], *(min(max(v, inner[1]), inner[3]) for z in layout.safe_zones for v in (z[1], z[3]))})
    rooms = []
    for i, x0 in enumerate(xs):
        for x1 in xs[i + 1:]:
            for j, y0 in enumerate(ys):
                for y1 in ys[j + 1:]:
                    room = (x0, y0, x1, y1)
                    if not any(_overlaps(room, z) for z in layout.safe_zones):
                        rooms.append(room)
    return rooms


def product_box(layout: Layout, product_width: int, product_height: int) -> Box:
    """Where a product photo of this size goes on the channel's canvas.

    The room (a rectangle clear of the margin and every safe zone) that fits the photo largest
    is chosen (ties: the larger room, then the one nearer the anchor); the photo is scaled to fit
    it and to take at most `max_share` of the canvas area, and pushed to the anchor's side of the
    room (centre: its middle).

    Raises:
        ValueError: the margin and safe zones leave no room of at least MIN_BOX pixels a side.
    """
    if product_width < 1 or product_height < 1:
        raise ValueError(f"channel {layout.name!r}: product photo size {product_width}x{product_height} is empty")
    rooms = [r for r in free_rooms(layout) if r[2] - r[0] >= MIN_BOX and r[3] - r[1] >= MIN_BOX]
    if not rooms:
        raise ValueError(f"channel {layout.name!r}: its margin and safe zones leave no room for the product "
                         f"on the {layout.width}x{layout.height} canvas")

    def fit(room: Box) -> float:
        return min((room[2] - room[0]) / product_width, (room[3] - room[1]) / product_height)

    def toward_anchor(room: Box) -> float:
        # Smaller is nearer the anchor's side of the canvas.
        return {"left": room[0], "right": -room[2], "top": room[1], "bottom": -room[3]}.get(layout.anchor, 0)

    room = max(rooms, key=lambda r: (fit(r), (r[2] - r[0]) * (r[3] - r[1]), -toward_anchor(r), (-r[0], -r[1])))
    cap = math.sqrt(layout.max_share * layout.width * layout.height / (product_width * product_height))
    scale = min(fit(room), cap)
    w = max(1, min(room[2] - room[0], math.floor(product_width * scale)))
    h = max(1, min(room[3] - room[1], math.floor(product_height * scale)))
    spare_x, spare_y = room[2] - room[0] - w, room[3] - room[1] - h
    x = {"left": 0, "right": spare_x}.get(layout.anchor, spare_x // 2)
    y = {"top": 0, "bottom": spare_y}.get(layout.anchor, spare_y // 2)
    left, top = room[0] + x, room[1] + y
    return (left, top, left + w, top + h)


def layout_params(layout: Layout, box: Box) -> dict:
    """The generation parameters a channel sets on a job: its canvas, and its layout as resolved (part of the asset id)."""
    return {
        "width": layout.width,
        "height": layout.height,
        "channel": layout.name,
        "aspect": layout.aspect,
        "anchor": layout.anchor,
        "product_box": list(box),
        "safe_zones": [list(z) for z in layout.safe_zones],
        # Only a white background is named: a scene channel's parameters (and asset ids) stay as they were.
        **({"background": "white"} if layout.background == "white" else {}),
    }


def params_box(params: Mapping) -> Box | None:
    """The product box a job's parameters (or a `generations` row) name; None: centred on the whole canvas."""
    box = params.get("product_box")
    if box is None:
        return None
    if isinstance(box, str):
        box = [int(v) for v in box.split(",")]
    return tuple(int(v) for v in box)  # type: ignore[return-value]


def channel_of(row: Mapping) -> str | None:
    """The channel of a job's parameters or a `generations` row; None without one (however the table says null)."""
    value = row.get("channel")
    return None if is_missing(value) or not value else str(value)


def row_layout(row: Mapping) -> dict:
    """A `generations` row's canvas and layout as job parameters (`product_box`, `safe_zones`, `aspect`)."""
    listed = row.get("safe_zones")  # a list, or an array as parquet hands it back
    zones = [] if is_missing(listed) else list(listed)
    layout = {"width": int(row["width"]), "height": int(row["height"]), "channel": channel_of(row),
              "aspect": None if is_missing(row.get("channel_aspect")) else row.get("channel_aspect"),
              "safe_zones": [[int(v) for v in str(z).split(",")] for z in zones]}
    if not is_missing(row.get("box_left")):
        layout["product_box"] = [int(row[k]) for k in ("box_left", "box_top", "box_right", "box_bottom")]
    return layout


ZONE_INK = (230, 40, 140)
BOX_INK = (22, 150, 60)


def outline_layout(image: Image.Image, layout: Mapping, long_side: int | None = None) -> Image.Image:
    """A copy of an image with a channel's safe zones (magenta, dashed) and product box (green) drawn on it.

    `layout` is a job's parameters or `row_layout(row)`; coordinates are scaled from its canvas to the
    image. With `long_side` the copy is first scaled to that long side, so the lines are as thin
    on a small canvas as on a large one.
    """
    out = image.convert("RGB")
    if long_side:
        scale = long_side / max(out.size)
        out = out.resize((max(1, round(out.width * scale)), max(1, round(out.height * scale))), Image.Resampling.LANCZOS)
    draw = ImageDraw.Draw(out)
    sx, sy = out.width / int(layout["width"]), out.height / int(layout["height"])
    line = max(2, round(min(out.size) / 80))

    def scaled(box: Sequence[int]) -> tuple[int, int, int, int]:
        return (round(box[0] * sx), round(box[1] * sy), max(round(box[0] * sx), round(box[2] * sx) - 1),
                max(round(box[1] * sy), round(box[3] * sy) - 1))

    for zone in layout.get("safe_zones") or ():
        left, top, right, bottom = scaled(zone)
        dash = 4 * line
        for x in range(left, right + 1, 2 * dash):  # dashed: a zone is a guide, not part of the picture
            draw.line([(x, top), (min(x + dash, right), top)], fill=ZONE_INK, width=line)
            draw.line([(x, bottom), (min(x + dash, right), bottom)], fill=ZONE_INK, width=line)
        for y in range(top, bottom + 1, 2 * dash):
            draw.line([(left, y), (left, min(y + dash, bottom))], fill=ZONE_INK, width=line)
            draw.line([(right, y), (right, min(y + dash, bottom))], fill=ZONE_INK, width=line)
    box = params_box(layout)
    if box is not None:
        draw.rectangle(scaled(box), outline=BOX_INK, width=line)
    return out


# --------------------------------------------------------------------------- checks


def zones_mask(width: int, height: int, zones: Sequence[Sequence[int]]) -> np.ndarray:
    """Booleans of shape (height, width): True inside any of the zones."""
    inside = np.zeros((height, width), dtype=bool)
    for left, top, right, bottom in zones:
        inside[max(0, top):max(0, bottom), max(0, left):max(0, right)] = True
    return inside


def outline(mask: np.ndarray) -> np.ndarray:
    """The product's outline: product pixels with a side neighbour that is not product (or off the canvas)."""
    padded = np.pad(mask, 1, constant_values=False)
    core = padded[1:-1, 1:-1]
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return core & ~interior


def safe_zone_share(mask: np.ndarray, zones: Sequence[Sequence[int]]) -> float | None:
    """Share of the product's pixels inside the safe zones (0 = clear of them); None without product pixels."""
    total = int(mask.sum())
    if not total:
        return None
    return float((mask & zones_mask(mask.shape[1], mask.shape[0], zones)).sum()) / total


def product_share(mask: np.ndarray) -> float:
    """Share of the canvas the product covers."""
    return float(mask.mean()) if mask.size else 0.0


def product_cut(mask: np.ndarray) -> float | None:
    """Share of the product's outline that runs along the canvas edge (0 = the whole product is in the picture)."""
    line = outline(mask)
    total = int(line.sum())
    if not total:
        return None
    edge = np.zeros_like(mask)
    edge[0, :] = edge[-1, :] = edge[:, 0] = edge[:, -1] = True
    return float((line & edge).sum()) / total


def aspect_error(width: int, height: int, aspect: str | None) -> float | None:
    """How far an image's width:height is from a declared aspect ("9:16"), relative (0 = exact); None undeclared."""
    if not aspect:
        return None
    a, b = (int(v) for v in aspect.split(":"))
    return abs((width / height) / (a / b) - 1.0)


def channel_checks(mask: np.ndarray, size: tuple[int, int], params: Mapping) -> dict[str, float | None]:
    """The channel checks of one output image.

    `mask` is where the product is on the canvas (booleans, canvas height x width), `size` the
    output's (width, height), `params` the job's (canvas size, and a channel's aspect and safe
    zones). Without product pixels the mask-based checks are None.
    """
    width, height = int(params["width"]), int(params["height"])
    has_product = bool(mask.any())
    return {
        "safe_zone_share": safe_zone_share(mask, params.get("safe_zones") or ()) if has_product else None,
        "product_share": product_share(mask) if has_product else None,
        "product_cut": product_cut(mask) if has_product else None,
        "size_error": float(max(abs(size[0] - width), abs(size[1] - height))),
        "aspect_error": aspect_error(size[0], size[1], params.get("aspect") or f"{width}:{height}"),
    }
