"""The data model: products, style sets, prompt matrices, campaigns and model profiles.

Everything here is plain pydantic, validated when it is built, so a bad spec fails
before any image is read or any weight is loaded.
"""

from __future__ import annotations

import re
import string
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
BUILTIN_PLACEHOLDERS = frozenset({"product", "category"})


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
    mask_source: Literal["file", "alpha", "none"] = "none"


class Reference(_Strict):
    """One style reference image and its weight inside a style set."""

    key: str
    weight: float = Field(default=1.0, gt=0)
    sha256: str = ""


class StyleSet(_Strict):
    """One or more reference images that together make an image prompt."""

    style_id: str = Field(pattern=ID_PATTERN)
    references: tuple[Reference, ...] = Field(min_length=1)
    combine: Literal["concat"] = "concat"
    tags: tuple[str, ...] = ()
    ip_scale: float | None = Field(default=None, ge=0, le=2)
    preset: Literal["full"] = "full"


class ProductMeta(_Strict):
    """The optional `product.yaml` beside a product image."""

    title: str | None = None
    category: str = ""
    tags: tuple[str, ...] = ()


class StyleMeta(_Strict):
    """The optional `style.yaml` beside a style set's references."""

    weights: dict[str, float] = {}
    combine: Literal["concat"] = "concat"
    tags: tuple[str, ...] = ()
    ip_scale: float | None = Field(default=None, ge=0, le=2)
    preset: Literal["full"] = "full"


# --------------------------------------------------------------------------- campaign


class PromptMatrix(_Strict):
    """A prompt template with `{axis}` placeholders and the values of each axis.

    `{product}` and `{category}` are filled from the product; every other placeholder
    must be a named axis, and every axis must be used.
    """

    template: str = Field(min_length=1)
    axes: dict[str, tuple[str, ...]] = {}
    negative: str = ""
    seeds: tuple[int, ...] | int = (0,)
    max_cells: int = Field(default=256, ge=1)

    @field_validator("axes")
    @classmethod
    def _axes_named_and_filled(cls, axes: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
        for name, values in axes.items():
            if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
                raise ValueError(f"axis name {name!r} must be lowercase letters, digits or _")
            if name in BUILTIN_PLACEHOLDERS:
                raise ValueError(f"axis name {name!r} is reserved (it is filled from the product)")
            if not values:
                raise ValueError(f"axis {name!r} is empty")
            if len(set(values)) != len(values):
                raise ValueError(f"axis {name!r} repeats a value")
        return axes

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
        used = template_fields(self.template)
        unknown = used - set(self.axes) - BUILTIN_PLACEHOLDERS
        if unknown:
            raise ValueError(f"template uses {sorted(unknown)} but no axis has that name")
        unused = set(self.axes) - used
        if unused:
            raise ValueError(f"axes {sorted(unused)} are not used in the template")
        return self

    @property
    def seed_list(self) -> tuple[int, ...]:
        """The seeds every cell is rendered with (a count `n` means seeds 0..n-1)."""
        return tuple(range(self.seeds)) if isinstance(self.seeds, int) else self.seeds

    @property
    def cell_count(self) -> int:
        n = 1
        for values in self.axes.values():
            n *= len(values)
        return n


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


SCHEDULERS = ("unipc", "ddim", "euler", "euler_a", "dpmpp_2m")


class Generation(_Strict):
    """Generation parameters shared by every image of a campaign."""

    profile: str | None = None  # None: the STYLEMATRIX_PROFILE setting decides
    mode: Literal["ip_adapter"] = "ip_adapter"
    width: int = Field(default=512, ge=64, le=2048, multiple_of=8)
    height: int = Field(default=512, ge=64, le=2048, multiple_of=8)
    steps: int = Field(default=30, ge=1, le=200)
    scheduler: Literal["unipc", "ddim", "euler", "euler_a", "dpmpp_2m"] = "unipc"
    guidance: float = Field(default=7.0, ge=0, le=30)
    ip_scale: float = Field(default=0.6, ge=0, le=2)
    controlnet_scale: float = Field(default=1.0, ge=0, le=2)
    canny_low: int = Field(default=100, ge=0, le=255)
    canny_high: int = Field(default=200, ge=0, le=255)
    batch_size: int = Field(default=8, ge=1, le=256)

    @model_validator(mode="after")
    def _thresholds_ordered(self) -> Generation:
        if self.canny_low > self.canny_high:
            raise ValueError(f"canny_low {self.canny_low} is above canny_high {self.canny_high}")
        return self


class Campaign(_Strict):
    """What to make: products x style sets x prompt matrix, and how."""

    name: str = Field(pattern=ID_PATTERN)
    products: Selector = Selector()
    styles: Selector = Selector()
    matrix: PromptMatrix
    generation: Generation = Generation()


# --------------------------------------------------------------------------- models


class WeightsRef(_Strict):
    """Where one set of weights lives: an HF repo id, a local folder, or an s3:// prefix.

    `builtin:tiny` names the locally built random-weight kit.
    """

    source: str
    revision: str | None = None
    subfolder: str | None = None
    weight_name: str | None = None


class IPAdapterRef(WeightsRef):
    image_encoder_folder: str = "image_encoder"


class ModelProfile(_Strict):
    """A named set of weights the engine loads together."""

    name: str = Field(pattern=ID_PATTERN)
    base: WeightsRef
    controlnet: WeightsRef
    ip_adapter: IPAdapterRef
    description: str = ""
