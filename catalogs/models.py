"""The data model: products, style sets, prompt matrices, campaigns and model profiles.

Everything here is plain pydantic, validated when it is built, so a bad spec fails
before any image is read or any weight is loaded.
"""

from __future__ import annotations

import re
import string
import unicodedata
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from catalogs.uris import AssetsUri, CatalogUri

ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
BUILTIN_PLACEHOLDERS = frozenset({"product", "category"})

# How a style set's references become one image prompt: their tokens side by side (diffusers'
# default), or the mean of their embeddings, plain or weighted by each reference's weight.
Combine = Literal["concat", "average", "weighted"]
# Which UNet blocks the IP-Adapter feeds (InstantStyle): all, the style blocks, the layout blocks.
Preset = Literal["full", "style-only", "layout-only"]
Mode = Literal["ip_adapter", "img2img", "preserve"]
ControlType = Literal["canny", "depth", "softedge", "mask"]
# What an IP-Adapter of a profile is fed: the style set's references, or the product photo.
AdapterImage = Literal["style", "product"]
# Where a channel puts the product inside the room its safe zones and margin leave.
Anchor = Literal["centre", "left", "right", "top", "bottom"]


def _ip_scale(value: object) -> float | str:
    if value == "auto":
        return "auto"
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 2:
        raise ValueError(f"must be a number from 0 to 2, or auto; got {value!r}")
    return float(value)


# An IP-Adapter scale, or `auto`: the recommended scale of the style set's latest style scan.
IpScale = Annotated[float | Literal["auto"], PlainValidator(_ip_scale)]
AXIS_SCALE = Annotated[float, Field(ge=0, le=2)]  # an ip_scale axis value: a number, never auto


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------- catalog


class Product(_Strict):
    """One product photo in the catalog."""

    product_id: str = Field(pattern=ID_PATTERN)
    image_key: str
    mask_key: str | None = None
    title: str
    category: str = ""
    tags: tuple[str, ...] = ()
    sha256: str = ""
    width: int = 0
    height: int = 0
    # Where the product's mask comes from: mask.png, the alpha channel, an automatic mask
    # from a plain background, or none (see tasks/masks.py).
    mask_source: Literal["file", "alpha", "auto", "none"] = "none"
    mode: str = ""  # stored pixel mode (RGB, RGBA, P, CMYK, I;16, ...) before conversion
    phash: str = ""  # 64-bit perceptual hash, 16 hex digits


class Reference(_Strict):
    """One style reference image and its weight inside a style set."""

    key: str
    weight: float = Field(default=1.0, gt=0)
    sha256: str = ""


class StyleSet(_Strict):
    """One or more reference images that together make an image prompt."""

    style_id: str = Field(pattern=ID_PATTERN)
    references: tuple[Reference, ...] = Field(min_length=1)
    combine: Combine = "concat"
    tags: tuple[str, ...] = ()
    ip_scale: IpScale | None = None
    preset: Preset = "full"
    # An image whose embedding replaces the zero unconditional image embedding: "not like this".
    negative: Reference | None = None
    # The style scan an `auto` scale was taken from (set by a run, never by the catalog).
    ip_scale_scan: str | None = None


class ProductMeta(_Strict):
    """The optional `product.yaml` beside a product image."""

    title: str | None = None
    category: str = ""
    tags: tuple[str, ...] = ()


class StyleMeta(_Strict):
    """The optional `style.yaml` beside a style set's references."""

    weights: dict[str, float] = {}
    combine: Combine = "concat"
    tags: tuple[str, ...] = ()
    ip_scale: IpScale | None = None
    preset: Preset = "full"


# --------------------------------------------------------------------------- campaign


# Axes whose values set a generation parameter (or pick the style set) instead of words.
PARAMETER_AXES = frozenset({
    "mode", "style", "steps", "scheduler", "guidance", "strength", "ip_scale", "ip_preset", "ip_start", "ip_end",
    "controlnet_scale", "controlnet_start", "controlnet_end", "channel",
})
# The parameter axis that picks a campaign's channel (its canvas and layout); see `Campaign.channels`.
CHANNEL_AXIS = "channel"
# The placements shipped as presets (their sizes per profile and layouts are in tasks/channels.py).
CHANNEL_PRESETS = ("square", "portrait", "story", "banner")
# Marketplace presets: a marketplace's main (or gallery) image, its size, background rule and checks
# (tasks/marketplace.py). A channel named after one, or with `preset:` one, is made to its rules.
MARKETPLACE_PRESETS = ("amazon-main", "jd-main", "tmall-main", "shopify-square")
PRESETS = CHANNEL_PRESETS + MARKETPLACE_PRESETS
# The cell key recording which optional parts (`a|b|c`) a cell switches on.
OPTIONAL_KEY = "optional"
AxisValue = str | int | float


class PromptMatrix(_Strict):
    """A prompt template with `{axis}` placeholders and the values of each axis.

    `{product}` and `{category}` are filled from the product; every other placeholder must
    be a named axis. Word axes must be used in the template; parameter axes (PARAMETER_AXES)
    set that generation parameter for their cells and need not appear in it. Axes named in
    one `zip` group advance together instead of multiplying. `base|b|c` in the template makes
    AUTOMATIC1111's optional parts: every subset of {b, c} appended to the base.
    """

    template: str = Field(min_length=1)
    axes: dict[str, tuple[AxisValue, ...]] = {}
    zip: tuple[tuple[str, ...], ...] = ()
    negative: str = ""
    seeds: tuple[int, ...] | int = (0,)
    max_cells: int = Field(default=256, ge=1)

    @field_validator("axes")
    @classmethod
    def _axes_named_and_filled(cls, axes: dict[str, tuple[AxisValue, ...]]) -> dict[str, tuple[AxisValue, ...]]:
        checked: dict[str, tuple[AxisValue, ...]] = {}
        for name, values in axes.items():
            if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
                raise ValueError(f"axis name {name!r} must be lowercase letters, digits or _")
            if name in BUILTIN_PLACEHOLDERS or name == OPTIONAL_KEY:
                raise ValueError(f"axis name {name!r} is reserved (it is filled from the product or the template)")
            if not values:
                raise ValueError(f"axis {name!r} is empty")
            # Words are substituted as text: YAML's 12 and "12" are the same word.
            checked[name] = values if name in PARAMETER_AXES else tuple(str(v) for v in values)
            if len({str(v) for v in values}) != len(values):
                raise ValueError(f"axis {name!r} repeats a value")
        return checked

    @field_validator("seeds")
    @classmethod
    def _seeds_valid(cls, seeds: tuple[int, ...] | int) -> tuple[int, ...] | int:
        if isinstance(seeds, int):
            if seeds < 1:
                raise ValueError(f"seed count must be at least 1, got {seeds}")
        else:
            if not seeds:
                raise ValueError("seeds list is empty")
            if len(set(seeds)) != len(seeds):
                raise ValueError("seeds list repeats a seed")
            if any(s < 0 or s >= 2**63 for s in seeds):
                raise ValueError("seeds must be in [0, 2**63)")
        return seeds

    @model_validator(mode="after")
    def _placeholders_match_axes(self) -> PromptMatrix:
        _, parts = split_optional(self.template)
        if any(not p for p in parts):
            raise ValueError(f"template {self.template!r} has an empty optional part (nothing between two |)")
        if len(set(parts)) != len(parts):
            raise ValueError(f"template {self.template!r} repeats an optional part")
        used = template_fields(self.template)
        unknown = used - set(self.axes) - BUILTIN_PLACEHOLDERS
        if unknown:
            raise ValueError(f"template uses {sorted(unknown)} but no axis has that name")
        unused = set(self.axes) - used - PARAMETER_AXES
        if unused:
            raise ValueError(f"axes {sorted(unused)} are not used in the template")
        seen: set[str] = set()
        for group in self.zip:
            if len(group) < 2:
                raise ValueError(f"zip group {list(group)} needs at least two axes")
            for name in group:
                if name not in self.axes:
                    raise ValueError(f"zip group {list(group)} names {name!r}, which is not an axis")
                if name in seen:
                    raise ValueError(f"axis {name!r} is in more than one zip group")
                seen.add(name)
            sizes = {name: len(self.axes[name]) for name in group}
            if len(set(sizes.values())) > 1:
                counts = ", ".join(f"{k} has {v}" for k, v in sizes.items())
                raise ValueError(f"zip group {list(group)}: zipped axes need the same number of values ({counts})")
        return self

    @property
    def seed_list(self) -> tuple[int, ...]:
        """The seeds every cell is rendered with (a count `n` means seeds 0..n-1)."""
        return tuple(range(self.seeds)) if isinstance(self.seeds, int) else self.seeds

    @property
    def axis_groups(self) -> tuple[tuple[str, ...], ...]:
        """The units the matrix multiplies, in declared order: a lone axis, or a zip group at its first axis."""
        group_of = {name: group for group in self.zip for name in group}
        units: list[tuple[str, ...]] = []
        for name in self.axes:
            unit = group_of.get(name, (name,))
            if unit not in units:
                units.append(unit)
        return tuple(units)

    @property
    def optional_parts(self) -> tuple[str, ...]:
        return split_optional(self.template)[1]

    @property
    def cell_count(self) -> int:
        n = 2 ** len(self.optional_parts)
        for unit in self.axis_groups:
            n *= len(self.axes[unit[0]])
        return n


def split_optional(template: str) -> tuple[str, tuple[str, ...]]:
    """`base|b|c` -> ("base", ("b", "c")), each part stripped of spaces and commas at its ends (as A1111)."""
    base, *parts = template.split("|")
    if not parts:
        return template, ()
    return base.strip().strip(",").strip(), tuple(p.strip().strip(",").strip() for p in parts)


def template_fields(template: str) -> set[str]:
    """The `{name}` placeholders of a template; raises ValueError on a malformed one."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"template {template!r} is malformed: {exc}") from None
    names = set()
    for _, name, spec, conv in parsed:
        if name is None:
            continue
        if not name.isidentifier() or spec or conv:
            raise ValueError(f"template placeholder {{{name}}} must be a plain name like {{surface}}")
        names.add(name)
    return names


class Selector(_Strict):
    """Which catalog entries a campaign uses: explicit ids, or any of the tags, or all."""

    ids: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()

    def matches(self, item_id: str, item_tags: tuple[str, ...]) -> bool:
        if not self.ids and not self.tags:
            return True
        return item_id in self.ids or bool(set(self.tags) & set(item_tags))


class Generation(_Strict):
    """Generation parameters shared by every image of a campaign (parameter axes override some per cell)."""

    profile: str | None = None  # None: the STYLEMATRIX_PROFILE setting decides
    mode: Mode = "ip_adapter"
    width: int = Field(default=512, ge=64, le=2048, multiple_of=8)
    height: int = Field(default=512, ge=64, le=2048, multiple_of=8)
    steps: int = Field(default=30, ge=1, le=200)
    scheduler: Literal["unipc", "ddim", "euler", "euler_a", "dpmpp_2m"] = "unipc"
    guidance: float = Field(default=7.0, ge=0, le=30)
    # img2img and preserve: how far from the init image the denoising starts (None: 0.75 for
    # img2img, 1.0 for preserve). Text-to-image (ip_adapter) always starts from noise.
    strength: float | None = Field(default=None, gt=0, le=1)
    ip_scale: IpScale = 0.6  # `auto`: each style set's scan decides (stylematrix style scan)
    ip_preset: Preset = "full"  # the style set's preset applies unless this is set
    ip_start: float = Field(default=0.0, ge=0, le=1)  # fraction of the steps where the adapter starts
    ip_end: float = Field(default=1.0, ge=0, le=1)  # ... and where it stops (0 = never on)
    product_ip_scale: float | None = Field(default=None, ge=0, le=2)  # an adapter fed the product photo; None: ip_scale
    negative_reference: str | None = None  # catalog key or s3:// URI of a negative reference image
    controlnet_scale: float = Field(default=1.0, ge=0, le=2)
    controlnet_start: float = Field(default=0.0, ge=0, lt=1)
    controlnet_end: float = Field(default=1.0, gt=0, le=1)
    control_scales: dict[ControlType, float] = {}  # per ControlNet of the profile, by type; default controlnet_scale
    canny_low: int = Field(default=100, ge=0, le=255)
    canny_high: int = Field(default=200, ge=0, le=255)
    batch_size: int = Field(default=8, ge=1, le=256)

    @field_validator("control_scales")
    @classmethod
    def _scales_in_range(cls, scales: dict[str, float]) -> dict[str, float]:
        for name, value in scales.items():
            if not 0 <= value <= 2:
                raise ValueError(f"scale of {name!r} must be between 0 and 2, got {value}")
        return scales

    @model_validator(mode="after")
    def _ranges_ordered(self) -> Generation:
        if self.canny_low > self.canny_high:
            raise ValueError(f"canny_low {self.canny_low} is above canny_high {self.canny_high}")
        if self.ip_start > self.ip_end:
            raise ValueError(f"ip_start {self.ip_start} is after ip_end {self.ip_end}")
        if self.controlnet_start >= self.controlnet_end:
            raise ValueError(f"controlnet_start {self.controlnet_start} must be before controlnet_end {self.controlnet_end}")
        return self


# Every score an image gets, and which way is better: "higher", "lower", or "mid" (nearest 0.5).
# Gates and ranking weights name these; their meaning is in docs/metadata-tables.md.
SCORES = {
    "edge_f1": "higher",
    "product_ssim": "higher",
    "product_delta_e": "lower",
    "clip_text": "higher",
    "clip_style": "higher",
    "sharpness": "higher",
    "luminance": "mid",
    "clipped_share": "lower",
    "colourfulness": "higher",
    # Channel checks (tasks/channels.py): where the product is on the canvas, and the output's size.
    "safe_zone_share": "lower",
    "product_share": "higher",
    "product_cut": "lower",
    "size_error": "lower",
    "aspect_error": "lower",
}
GATE_PATTERN = re.compile(r"^\s*([a-z_0-9]+)\s*(>=|<=|>|<)\s*(-?\d+(?:\.\d*)?(?:e-?\d+)?)\s*$")


def parse_gate(gate: str) -> tuple[str, str, float]:
    """`"edge_f1 >= 0.3"` as `("edge_f1", ">=", 0.3)`; raises ValueError naming the problem."""
    match = GATE_PATTERN.match(gate)
    if not match:
        raise ValueError(f"gate {gate!r} must look like 'edge_f1 >= 0.3' (a score, one of >= <= > <, a number)")
    name, op, value = match.groups()
    if name not in SCORES:
        raise ValueError(f"gate {gate!r} names unknown score {name!r}; known: {sorted(SCORES)}")
    return name, op, float(value)


class Consistency(_Strict):
    """Selection for one look across the campaign: each product's picks should agree with the others'.

    `weight` counts beside the sum of `selection.weights` in use: an image's agreement (1 at the centre
    of the other products' picks, 0 two clear differences away) against its quality score; `within` is
    the group whose centre counts: the image's own style set, or every style set of the campaign (each
    channel apart).
    """

    weight: float = Field(gt=0, le=1000)
    within: Literal["style_set", "campaign"] = "style_set"


class Selection(_Strict):
    """How a run's images are judged: gates drop, weights rank, the top k per product are selected."""

    top_k: int = Field(default=4, ge=0, le=10_000)
    gates: tuple[str, ...] = ("edge_f1 >= 0.2", "clipped_share <= 0.5")
    weights: dict[str, float] = {
        "edge_f1": 1.0, "product_ssim": 0.5, "product_delta_e": 0.5, "clip_text": 1.0, "clip_style": 0.5,
        "sharpness": 0.25, "clipped_share": 0.25,
    }
    # Largest Hamming distance (of 64 bits) between two background hashes that still makes a near-duplicate.
    duplicate_distance: int = Field(default=6, ge=0, le=64)
    # CLIP model for clip_text and clip_style: "auto" (the tiny kit's for a tiny profile, else
    # openai/clip-vit-large-patch14), "none", an HF repo id, a local folder, an s3:// prefix or "builtin:tiny".
    clip_model: str = Field(default="auto", min_length=1)
    # Pick, per product, images that also agree with the other products' picks (tasks/select.py); None: each alone.
    consistency: Consistency | None = None

    @field_validator("gates")
    @classmethod
    def _gates_parse(cls, gates: tuple[str, ...]) -> tuple[str, ...]:
        for gate in gates:
            parse_gate(gate)
        return gates

    @field_validator("weights")
    @classmethod
    def _weights_known(cls, weights: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(weights) - set(SCORES))
        if unknown:
            raise ValueError(f"weights name unknown scores {unknown}; known: {sorted(SCORES)}")
        negative = sorted(k for k, v in weights.items() if v < 0)
        if negative:
            raise ValueError(f"weights {negative} are negative; each score already counts in its better direction")
        if not any(v > 0 for v in weights.values()):
            raise ValueError("no weight is above 0: at least one score must rank the images")
        return weights


class Review(_Strict):
    """Whether a person signs the run's images off in the Prefect UI before anything is delivered."""

    required: bool = False
    # Who the review is for (names, teams or addresses); shown on the form and in the review event.
    reviewers: tuple[str, ...] = ()
    # How long the review waits for a decision; then it is recorded as timed out and delivers nothing.
    wait_hours: float = Field(default=72.0, gt=0, le=24 * 90)

    @field_validator("reviewers")
    @classmethod
    def _reviewers_named(cls, reviewers: tuple[str, ...]) -> tuple[str, ...]:
        if any(not r.strip() for r in reviewers):
            raise ValueError("a reviewer is empty")
        return tuple(r.strip() for r in reviewers)


class DeliveryFormat(_Strict):
    """How approved images are written for a channel: file format, quality, size limit, colour and metadata.

    The quality steps down from `quality` by `quality_step` until the file fits `max_bytes`,
    never below `min_quality`; an image that still does not fit is not delivered.
    """

    format: Literal["jpeg", "webp"] = "jpeg"
    quality: int = Field(default=88, ge=1, le=100)
    min_quality: int = Field(default=60, ge=1, le=100)
    quality_step: int = Field(default=4, ge=1, le=50)
    max_bytes: int | None = Field(default=None, ge=1024)
    # strip: no EXIF, ICC or XMP in the file. keep: the source's metadata, an sRGB ICC profile, and
    # the asset id and producer in EXIF, for a DAM to read.
    metadata: Literal["strip", "keep"] = "strip"
    # Convert the pixels to sRGB (from the source's ICC profile, when it has another one).
    srgb: bool = True

    @model_validator(mode="after")
    def _quality_range(self) -> DeliveryFormat:
        if self.min_quality > self.quality:
            raise ValueError(f"min_quality {self.min_quality} is above quality {self.quality}")
        return self

    @property
    def extension(self) -> str:
        return {"jpeg": "jpg", "webp": "webp"}[self.format]


class Upscale(_Strict):
    """How an image is brought to its delivery size after selection (`upscale:` of a campaign, channel or preset).

    `tile`: Lanczos to the size, then img2img with the profile's tile ControlNet at a low strength, in
    overlapping tiles whose seams are blended (memory stays that of one tile); `lanczos`: no model;
    `x4`: the profile's SD x4 upscaler pipeline. Only the selected images by default.
    """

    long_side: int = Field(ge=64, le=8192)
    method: Literal["tile", "lanczos", "x4"] = "lanczos"
    only: Literal["selected", "all"] = "selected"
    strength: float = Field(default=0.3, gt=0, le=1)  # tile: how far from the Lanczos image denoising starts
    steps: int = Field(default=20, ge=1, le=200)  # tile: scheduler steps (about steps x strength are run)
    guidance: float = Field(default=5.0, ge=0, le=30)
    controlnet_scale: float = Field(default=1.0, ge=0, le=2)
    tile: int | None = Field(default=None, ge=32, le=2048, multiple_of=8)  # None: the profile's native size
    overlap: int | None = Field(default=None, ge=0, le=1024, multiple_of=8)  # None: a quarter of the tile

    @model_validator(mode="after")
    def _overlap_fits(self) -> Upscale:
        if self.tile is not None and self.overlap is not None and self.overlap * 2 >= self.tile:
            raise ValueError(f"overlap {self.overlap} must be under half the tile {self.tile}")
        return self


class Shadow(_Strict):
    """A grounded shadow drawn from the product's mask under the pasted product (as Bria's shadow options).

    `contact`: a soft ellipse where the product meets the ground; `drop`: the product's silhouette,
    offset and blurred; `both`. Offsets and blur are shares of the product's height on the image, so the
    same shadow comes out at any size; `size` is the contact shadow's width as a share of the product's.
    """

    type: Literal["contact", "drop", "both"] = "contact"
    offset: tuple[float, float] = (0.02, 0.03)  # drop shadow: right, down
    blur: float = Field(default=0.04, ge=0, le=0.5)
    opacity: float = Field(default=0.35, ge=0, le=1)
    size: float = Field(default=0.9, gt=0, le=2)
    colour: tuple[int, int, int] = (0, 0, 0)

    @field_validator("offset")
    @classmethod
    def _offset_small(cls, value: tuple[float, float]) -> tuple[float, float]:
        if any(abs(v) > 0.5 for v in value):
            raise ValueError(f"offset {list(value)} must be shares of the product's height within -0.5..0.5")
        return value

    @field_validator("colour")
    @classmethod
    def _colour_bytes(cls, value: tuple[int, int, int]) -> tuple[int, int, int]:
        if any(not 0 <= v <= 255 for v in value):
            raise ValueError(f"colour {list(value)} must be three values from 0 to 255")
        return value


class Zone(_Strict):
    """A rectangle of the canvas as fractions of its width and height (0 = left or top edge, 1 = right or bottom).

    Unset sides are the canvas's own: `{left: 0.55}` is the right 45%, `{bottom: 0.14}` the top 14%.
    """

    left: float = Field(default=0.0, ge=0, le=1)
    top: float = Field(default=0.0, ge=0, le=1)
    right: float = Field(default=1.0, ge=0, le=1)
    bottom: float = Field(default=1.0, ge=0, le=1)

    @model_validator(mode="after")
    def _not_empty(self) -> Zone:
        if self.left >= self.right or self.top >= self.bottom:
            raise ValueError(f"zone left={self.left} top={self.top} right={self.right} bottom={self.bottom} is empty "
                             "(left must be below right and top below bottom)")
        return self


class ChannelSpec(_Strict):
    """One placement of a campaign: a preset by name, parts of it overridden, or a canvas of its own.

    `preset` defaults to the channel's name when that names a preset (square, portrait, story,
    banner); a channel that is no preset must give `width`, `height` and `aspect`. Every field
    left out takes the preset's value (sizes suit the campaign's model profile).
    """

    preset: Literal["square", "portrait", "story", "banner", "amazon-main", "jd-main", "tmall-main",
                    "shopify-square"] | None = None
    width: int | None = Field(default=None, ge=64, le=2048, multiple_of=8)
    height: int | None = Field(default=None, ge=64, le=2048, multiple_of=8)
    aspect: str | None = Field(default=None, pattern=r"^[1-9][0-9]*:[1-9][0-9]*$")  # "9:16": what the output must match
    anchor: Anchor | None = None
    max_share: float | None = Field(default=None, gt=0, le=1)  # largest share of the canvas area the product may take
    safe_zones: tuple[Zone, ...] | None = None  # where the product must not go: the copy's room, a platform's interface
    margin: float | None = Field(default=None, ge=0, lt=0.5)  # kept clear at every edge, as a share of the short side
    # How this channel's approved images are delivered; unset: the campaign's `delivery:` format.
    delivery: DeliveryFormat | None = None
    # white: the product on pure white (RGB 255) with only its shadow, no generated scene (a marketplace's
    # main image); scene: what the model makes. Unset: the preset's rule (scene for the placements).
    background: Literal["scene", "white"] | None = None
    upscale: Upscale | None = None  # unset: the preset's, else the campaign's
    shadow: Shadow | None = None  # unset: the preset's, else the campaign's


class Campaign(_Strict):
    """What to make: products x style sets x prompt matrix, and how."""

    name: str = Field(pattern=ID_PATTERN)
    # What people call the campaign, in any language ("秋季上新"): shown on sheets, the gallery, the
    # artifacts and in the runs table. `name` stays a slug: run ids and keys are made of it.
    title: str | None = Field(default=None, max_length=120)
    products: Selector = Selector()
    styles: Selector = Selector()
    matrix: PromptMatrix
    generation: Generation = Generation()
    selection: Selection = Selection()
    # Placements by name: every image is made once per channel (a `channel` axis the campaign does not
    # write itself lists them all; one it writes zips or narrows them). Empty: one canvas,
    # generation.width x generation.height, the product centred on it.
    channels: dict[str, ChannelSpec] = {}
    # A named product or style set that is missing or quarantined is left out, and the run goes on
    # with the rest (reported in its summary, runs table, artifact and gallery). `strict: true`
    # fails the run before anything is generated instead.
    strict: bool = False
    # A person's sign-off in the Prefect UI before delivery, and the format approved images are delivered in.
    review: Review = Review()
    delivery: DeliveryFormat = DeliveryFormat()
    # After selection: bring images to a delivery size, and draw a grounded shadow under pasted products
    # (each channel may set its own; a marketplace preset brings its size and shadow).
    upscale: Upscale | None = None
    shadow: Shadow | None = None

    @field_validator("name", mode="before")
    @classmethod
    def _name_is_a_slug(cls, value: object) -> object:
        if isinstance(value, str) and not re.fullmatch(ID_PATTERN, value):
            raise ValueError("must be a slug (lowercase letters, digits, '-' and '_', at most 64) because run ids "
                             "and keys are made of it; put a name in any language in `title:`")
        return value

    @field_validator("title")
    @classmethod
    def _title_is_one_line(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip()
        if not value:
            raise ValueError("is empty: leave `title` out instead")
        if any(unicodedata.category(c) == "Cc" for c in value):
            raise ValueError("must be one line of text (no newlines, tabs or control characters)")
        return value

    @model_validator(mode="before")
    @classmethod
    def _channels_are_an_axis(cls, data: object) -> object:
        """`channels:` without a `channel` axis: one is added, listing every channel (it multiplies the matrix)."""
        if not isinstance(data, dict) or not data.get("channels") or not isinstance(data["channels"], dict):
            return data
        matrix = data.get("matrix")
        if isinstance(matrix, PromptMatrix):
            matrix = matrix.model_dump()
        if isinstance(matrix, dict) and CHANNEL_AXIS not in (matrix.get("axes") or {}):
            axes = {**(matrix.get("axes") or {}), CHANNEL_AXIS: list(data["channels"])}
            data = {**data, "matrix": {**matrix, "axes": axes}}
        return data

    @field_validator("channels")
    @classmethod
    def _channels_named(cls, channels: dict[str, ChannelSpec]) -> dict[str, ChannelSpec]:
        for name, spec in channels.items():
            if not re.fullmatch(ID_PATTERN, name):
                raise ValueError(f"channel name {name!r} must be a slug (lowercase letters, digits, '-' and '_')")
            market = spec.preset if spec.preset in MARKETPLACE_PRESETS else name if name in MARKETPLACE_PRESETS else None
            if market and spec.delivery and (spec.delivery.format != "jpeg" or not spec.delivery.srgb):
                raise ValueError(f"channel {name!r}: a {market} image is delivered as sRGB JPEG; its `delivery:` "
                                 f"asks for {spec.delivery.format}{'' if spec.delivery.srgb else ' without sRGB'}")
            if spec.preset is None and name not in PRESETS and None in (spec.width, spec.height, spec.aspect):
                raise ValueError(f"channel {name!r} is no preset ({', '.join(PRESETS)}): give it `preset:`, "
                                 "or `width`, `height` and `aspect` of its own")
        return channels

    @model_validator(mode="after")
    def _parameter_axes_valid(self) -> Campaign:
        for name, values in self.matrix.axes.items():
            if name == CHANNEL_AXIS:
                known = set(self.channels) if self.channels else set(PRESETS)
                bad = [v for v in values if str(v) not in known]
                if bad:
                    where = "names in `channels:`" if self.channels else "presets"
                    raise ValueError(f"matrix axis 'channel': {bad} are not channels (known {where}: {sorted(known)})")
            elif name == "style":
                if self.styles.ids or self.styles.tags:
                    raise ValueError("matrix axis 'style' picks the style sets: leave `styles` empty")
                bad = [v for v in values if not isinstance(v, str) or not re.fullmatch(ID_PATTERN, v)]
                if bad:
                    raise ValueError(f"matrix axis 'style': {bad} are not style set ids")
            elif name in PARAMETER_AXES:
                if name == "ip_scale" and "auto" in values:
                    raise ValueError("matrix axis 'ip_scale': 'auto' belongs in generation.ip_scale or a style "
                                     "set's style.yaml, not in an axis")
                field = Generation.model_fields[name]
                adapter = TypeAdapter(AXIS_SCALE if name == "ip_scale" else
                                      Annotated[field.annotation, *field.metadata] if field.metadata else field.annotation)
                for value in values:
                    try:
                        adapter.validate_python(value)
                    except ValidationError as exc:
                        msg = exc.errors()[0]["msg"]
                        raise ValueError(f"matrix axis {name!r}: value {value!r}: {msg}") from None
        return self


# --------------------------------------------------------------------------- models


class WeightsRef(_Strict):
    """Where one set of weights lives: an HF repo id, a local folder, or an s3:// prefix.

    `builtin:tiny` names the locally built random-weight kit.
    """

    source: str
    revision: str | None = None
    subfolder: str | None = None
    weight_name: str | None = None


class ControlNetRef(WeightsRef):
    """A ControlNet and the kind of control image it was trained on."""

    control: ControlType = "canny"


class IPAdapterRef(WeightsRef):
    """An IP-Adapter; every adapter of a profile shares the first one's image encoder."""

    image_encoder_folder: str = "image_encoder"
    image: AdapterImage = "style"


class ModelProfile(_Strict):
    """A named set of weights the engine loads together: one or more ControlNets and IP-Adapters."""

    name: str = Field(pattern=ID_PATTERN)
    # `sim`: no model, a simulated GPU for load-testing the orchestration (adapters/model/sim_engine.py).
    pipeline: Literal["sd15", "sdxl", "sim"] = "sd15"
    base: WeightsRef
    controlnet: ControlNetRef | tuple[ControlNetRef, ...]
    ip_adapter: IPAdapterRef | tuple[IPAdapterRef, ...]
    description: str = ""
    # For the `tile` upscale: a ControlNet trained on tiles (SD1.5's control_v11f1e_sd15_tile); for `x4`:
    # the SD x4 upscaler pipeline. Not part of the profile's revision: finished images hash their own.
    tile_controlnet: WeightsRef | None = None
    upscaler: WeightsRef | None = None

    @model_validator(mode="after")
    def _one_of_each_kind(self) -> ModelProfile:
        if not self.controlnets or not self.ip_adapters:
            raise ValueError(f"profile {self.name!r}: needs at least one ControlNet and one IP-Adapter")
        if len(set(self.control_types)) != len(self.control_types):
            raise ValueError(f"profile {self.name!r}: two ControlNets take the same control type {list(self.control_types)}")
        images = [a.image for a in self.ip_adapters]
        if len(set(images)) != len(images) or images[0] != "style":
            raise ValueError(f"profile {self.name!r}: the first IP-Adapter must take the style references and the "
                             f"others different images, got {images}")
        return self

    @property
    def controlnets(self) -> tuple[ControlNetRef, ...]:
        return self.controlnet if isinstance(self.controlnet, tuple) else (self.controlnet,)

    @property
    def ip_adapters(self) -> tuple[IPAdapterRef, ...]:
        return self.ip_adapter if isinstance(self.ip_adapter, tuple) else (self.ip_adapter,)

    @property
    def control_types(self) -> tuple[str, ...]:
        return tuple(c.control for c in self.controlnets)

    @property
    def adapter_images(self) -> tuple[str, ...]:
        return tuple(a.image for a in self.ip_adapters)


# --------------------------------------------------------------------------- runs


class RunRequest(_Strict):
    """What starts a campaign run: the CLI, a schedule, or the form in the Prefect UI."""

    campaign: str = Field(
        description="Campaign: a name under the catalog's campaigns/ folder, an s3:// URI, or a path on the worker",
        examples=["sample"],
    )
    catalog: CatalogUri | None = Field(default=None, description="s3:// URI of the catalog (default: the worker's setting)")
    assets: AssetsUri | None = Field(default=None, description="s3:// URI for outputs (default: the worker's setting)")
    snapshot: str | None = Field(
        default=None,
        description="Catalog snapshot id to read (default: the latest; a catalog never refreshed is refreshed first)",
    )
    profile: str | None = Field(default=None, description="Model profile, overriding the campaign's (tiny, sd15, ...)")
    products: tuple[str, ...] = Field(default=(), description="Only these product ids (of those the campaign selects)")
    styles: tuple[str, ...] = Field(default=(), description="Only these style set ids (of those the campaign selects)")
    axes: dict[str, tuple[str, ...]] = Field(
        default={}, description="Replace the values of some matrix axes, e.g. {\"surface\": [\"marble\"]}"
    )
    seeds: tuple[int, ...] = Field(default=(), description="Replace the campaign's seeds")
    strict: bool | None = Field(
        default=None, description="Fail when a named product or style set is missing or quarantined, instead of "
                                  "leaving it out (default: the campaign's `strict` setting)")
    dry_run: bool = Field(default=False, description="Plan and report counts; generate and publish nothing")
    review: bool | None = Field(
        default=None, description="Wait for a person to approve the selected images in the Prefect UI before they are "
                                  "delivered (default: the campaign's `review.required`)")
    local_copy: str | None = Field(
        default=None, description="A folder on the machine that runs the campaign: the run is copied into "
                                  "<folder>/<run_id>/ as it is made, and <folder>/latest points at it "
                                  "(`stylematrix run` passes its out/)")
    sim_seconds: float | None = Field(
        default=None, ge=0, description="Profile `sim` only (a simulated GPU, for load tests): seconds per image "
                                        "(default: the GPU workers' STYLEMATRIX_SIM_SECONDS_PER_IMAGE)")
    triggered_by: Literal["cli", "demo", "schedule", "ui", "api", "test"] = "api"


class RunSummary(_Strict):
    """What a campaign run returns and the CLI prints: its counts and where everything is.

    A dry run plans only: `run_id` and the locations are None, `images_to_generate` says what a
    real run would make.
    """

    run_id: str | None
    campaign: str
    title: str | None = None  # the campaign's title, in any language
    channels: tuple[str, ...] = ()  # the placements the run made images for; () without `channels:`
    dry_run: bool = False
    images_planned: int
    images_skipped: int
    images_to_generate: int
    images_generated: int = 0
    images_selected: int = 0
    images_failed: int = 0
    batches: int = 0
    quarantined: int = 0
    duration_seconds: float = 0.0
    images_per_second: float = 0.0
    manifest: str | None = None
    gallery: str | None = None
    local_copy: str | None = None  # the folder the run was copied into (`RunRequest.local_copy`/<run_id>)
    sheets: dict[str, str] = {}
    tables: tuple[str, ...] = ()
    left_out: dict[str, str] = {}  # "style set night-sky" -> why it was left out
    images_taken_over: int = 0  # made by a run that died before committing, verified, recorded by this one
    images_left_to_others: int = 0  # claimed by another live run, which records them
    left_to_runs: tuple[str, ...] = ()
    estimated_seconds: float | None = None  # dry run: generation time from earlier runs' speed (None: no basis)
    estimate_basis: str = ""
    review: str | None = None  # the review waiting for a decision: its Prefect flow run, or why none could start
    # Reports that failed (contact-sheets, gallery, artifacts) -> why; the run committed without them.
    reports_failed: dict[str, str] = {}

    def lines(self) -> list[str]:
        """What a person wants to read when a run ends."""
        titled = f" ({self.title})" if self.title else ""
        if self.dry_run:
            return [f"dry run of {self.campaign}{titled}: {self.images_planned} images planned, {self.images_skipped} "
                    f"already published, {self.images_to_generate} to make; {self.quarantined} catalog objects quarantined",
                    f"  estimate: {_duration(self.estimated_seconds)} of generation ({self.estimate_basis})"
                    if self.estimated_seconds is not None else f"  estimate: none ({self.estimate_basis})",
                    *(f"  WARNING: left out {what}: {why}" for what, why in self.left_out.items())]
        lines = [f"run {self.run_id}{titled}: {self.images_generated} images generated, {self.images_skipped} already "
                 f"published, {self.quarantined} catalog objects quarantined "
                 f"({self.duration_seconds:.1f} s, {self.images_per_second:.2f} images/s)"]
        if self.images_generated or self.images_taken_over:
            per = "product and channel" if self.channels else "product"
            lines.append(f"  selected: {self.images_selected} images (top k per {per}), "
                         f"{self.images_failed} failed; contact sheets: {len(self.sheets)}")
        if self.images_taken_over:
            lines.append(f"  took over: {self.images_taken_over} images made by an earlier run that stopped before "
                         "committing (verified; see generations.made_by_run)")
        if self.images_left_to_others:
            lines.append(f"  left to:  {self.images_left_to_others} images that run {', '.join(self.left_to_runs)} "
                         "was making at the same time")
        lines += [f"  WARNING: left out {what}: {why}" for what, why in self.left_out.items()]
        lines += [f"  WARNING: report {what} failed: {why} (make it again: stylematrix report {self.run_id})"
                  for what, why in self.reports_failed.items()]
        lines += [f"  table:    {t}" for t in self.tables]
        if self.gallery:
            lines.append(f"  gallery:  {self.gallery}")
        if self.review:
            lines.append(f"  review:   {self.review}")
        lines.append(f"  manifest: {self.manifest}")
        return lines


def _duration(seconds: float) -> str:
    """`42 s`, `12.5 min`, `3.2 h`."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"
