"""Job planning: one job per image, each with a deterministic asset id, grouped into batches."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, ValidationError

from catalogs.models import CHANNEL_AXIS, Campaign, Generation, ModelProfile, Product, StyleSet
from tasks.catalog_build import QuarantineEntry
from tasks.channels import Layout, layout_params, product_box, resolve_channels
from tasks.layout import RunLayout
from tasks.matrix import Cell, cell_record, render_prompt

ASSET_ID_VERSION = 2

# Generation fields every image of one pipeline call must share; prompts and seeds may differ.
GENERATION_PARAMS = (
    "mode", "width", "height", "steps", "scheduler", "guidance", "strength",
    "ip_scale", "ip_preset", "ip_start", "ip_end", "product_ip_scale",
    "controlnet_scale", "controlnet_start", "controlnet_end", "canny_low", "canny_high",
)
DEFAULT_STRENGTH = {"ip_adapter": 1.0, "img2img": 0.75, "preserve": 1.0}


# A channel adds its name, aspect, anchor, product box and safe zones (`tasks.channels.layout_params`).
Param = str | int | float | dict[str, float] | list[int] | list[list[int]]


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Job(_Frozen):
    """One image to make, with everything that decides its pixels."""

    asset_id: str
    product_id: str
    style_id: str
    cell_index: int
    cell: dict[str, str]
    prompt: str
    negative_prompt: str
    seed: int
    params: dict[str, Param]
    profile: str
    profile_revision: str
    dtype: str
    product_sha256: str
    reference_sha256s: tuple[str, ...]
    ip_scale_scan: str = ""  # the style scan its `auto` IP-Adapter scale came from; "" when set otherwise


class Batch(_Frozen):
    """Jobs that run in one pipeline call: one control image, one style set, many prompts and seeds."""

    index: int
    product_id: str
    style_id: str
    params: dict[str, Param]
    jobs: tuple[Job, ...]


class Shard(_Frozen):
    """Batches that one worker runs with one loaded engine, with the catalog entries they need."""

    index: int
    batches: tuple[Batch, ...]
    products: dict[str, Product]
    styles: dict[str, StyleSet]

    @property
    def image_count(self) -> int:
        """How many images the shard's batches make."""
        return sum(len(b.jobs) for b in self.batches)


class ModelIdentity(_Frozen):
    """The model a plan is for, as far as it decides pixels: the profile's weights revision and dtype.

    `profile` says which ControlNets and IP-Adapters the parameters cover and which channel sizes
    suit it; None: one canny ControlNet and one style adapter (the shape of `tiny` and `sd15`).
    """

    revision: str
    dtype: str
    profile: ModelProfile | None = None


class ShardContext(_Frozen):
    """What every shard of a run shares: where to write (the run's layout), the stored control images, how to score.

    It is stored with each shard and sent to the GPU workers as it is; what only the campaign's own
    process has (the run's progress, its local copy) is handed to the shards run there beside it
    (flows/shard.py `ShardRuntime`).
    """

    run: RunLayout  # where the run's objects live (tasks/layout.py), its id and table partition
    campaign: str
    controls: dict[str, str]
    batch_total: int
    clip_model: str = "none"
    # An asset claimed by another run longer ago than this, never committed, is presumed abandoned.
    claim_lease_seconds: float = 900.0
    # The `sim` profile's seconds per image for this run (`RunRequest.sim_seconds`); None: the worker's setting.
    sim_seconds: float | None = None

    @property
    def run_id(self) -> str:
        return self.run.run_id


@dataclass(frozen=True)
class AssetInputs:
    """Everything that decides an image's pixels except its seed: what `asset_id` hashes.

    A plain frozen dataclass, not a pydantic model: planning makes one per cell and must not copy
    or coerce `params` (its JSON is hashed exactly as given).
    """

    product_sha256: str
    reference_sha256s: Sequence[str]
    reference_weights: Sequence[float]
    prompt: str
    negative_prompt: str
    params: Mapping[str, object]
    profile: str
    profile_revision: str
    dtype: str


def asset_id(inputs: AssetInputs, seed: int) -> str:
    """A key that is the same whenever the inputs are: 32 hex digits of a sha256."""
    return asset_ids(inputs, [seed])[0]


_SEED_MARK = "\x00seed\x00"  # stands for the seed in a payload's JSON; no input can contain it as JSON writes it


def asset_ids(inputs: AssetInputs, seeds: Iterable[int]) -> list[str]:
    """`asset_id` for many seeds of the same inputs: the payload's JSON is written once, each seed set into it.

    The bytes hashed are those of the whole payload with the seed written in place (an int as its
    decimal digits). Changing them changes every asset id, and stored images are found by their id:
    bump ASSET_ID_VERSION instead, and know that every image is then made again.
    """
    payload = {
        "v": ASSET_ID_VERSION,
        "product": inputs.product_sha256,
        "references": list(inputs.reference_sha256s),
        "weights": [float(w) for w in inputs.reference_weights],
        "prompt": inputs.prompt,
        "negative": inputs.negative_prompt,
        "seed": _SEED_MARK,
        "params": inputs.params,
        "profile": inputs.profile,
        "revision": inputs.profile_revision,
        "dtype": inputs.dtype,
    }
    before, after = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str).encode().split(
        json.dumps(_SEED_MARK).encode())
    return [hashlib.sha256(b"%s%d%s" % (before, int(seed), after)).hexdigest()[:32] for seed in seeds]


def check_control_scales(campaign: Campaign, profile: ModelProfile | None = None) -> tuple[str, ...]:
    """The profile's control types, once the campaign's ControlNet scales are known to all take effect.

    `generation.control_scales` wins over `controlnet_scale` (a field or an axis) for the types
    it names; the others take `controlnet_scale`. Cheap: check it before loading anything.

    Raises:
        ValueError: `control_scales` names a type the profile has no ControlNet for, or a
            `controlnet_scale` axis would change no ControlNet because `control_scales` names
            every one (its cells would be the same pictures under different asset ids).
    """
    control_types = profile.control_types if profile else ("canny",)
    scales = campaign.generation.control_scales
    unknown = sorted(set(scales) - set(control_types))
    if unknown:
        raise ValueError(f"campaign {campaign.name!r}: control_scales names {unknown}, but the profile's ControlNets "
                         f"take {list(control_types)}")
    if "controlnet_scale" in campaign.matrix.axes and all(t in scales for t in control_types):
        raise ValueError(f"campaign {campaign.name!r}: axis 'controlnet_scale' would change nothing: "
                         f"generation.control_scales sets the scale of every ControlNet of the profile "
                         f"({list(control_types)}) and wins over it; drop the axis or leave a type out of control_scales")
    return tuple(control_types)


def job_params(campaign: Campaign, style: StyleSet, cell: Cell | None = None,
               profile: ModelProfile | None = None) -> dict[str, Param]:
    """The generation parameters of one (campaign, style set, cell), checked together.

    The style set's IP-Adapter scale and preset apply unless the campaign sets them
    explicitly; a cell's parameter axes override both.

    Raises:
        ValueError: the combination is invalid (e.g. a cell's ip_start after ip_end), or
            `control_scales` names a control type the profile has no ControlNet for.
    """
    gen = campaign.generation
    values = {name: getattr(gen, name) for name in GENERATION_PARAMS}
    # `auto` in the campaign defers to each style set's scale, which a style scan resolved.
    if ("ip_scale" not in gen.model_fields_set or gen.ip_scale == "auto") and style.ip_scale is not None:
        values["ip_scale"] = style.ip_scale
    if "ip_preset" not in gen.model_fields_set:
        values["ip_preset"] = style.preset
    if cell is not None:
        values.update({k: v for k, v in cell.params.items() if k not in ("style", CHANNEL_AXIS)})
    try:
        checked = Generation.model_validate({**gen.model_dump(), **values})
    except ValidationError as exc:
        where = f" cell {cell.label}" if cell is not None else ""
        raise ValueError(f"campaign {campaign.name!r}:{where}: {exc.errors()[0]['msg']}") from None
    if checked.ip_scale == "auto":
        raise ValueError(f"campaign {campaign.name!r}: style set {style.style_id!r}: ip_scale auto was not resolved "
                         "from a style scan (tasks.style_scan.apply_auto_scales)")
    params: dict[str, Param] = {name: getattr(checked, name) for name in GENERATION_PARAMS}
    if checked.mode == "ip_adapter" or checked.strength is None:
        params["strength"] = DEFAULT_STRENGTH[checked.mode]
    control_types = check_control_scales(campaign, profile)
    adapter_images = profile.adapter_images if profile else ("style",)
    product_scale = checked.product_ip_scale if checked.product_ip_scale is not None else checked.ip_scale
    params["product_ip_scale"] = product_scale if "product" in adapter_images else 0.0
    # What else decides the pixels of a batch: the style set's combine rule and negative reference
    # (its sha256, "" for none), and the scale of each of the profile's ControlNets by type.
    params["combine"] = style.combine
    params["negative_reference"] = style.negative.sha256 if style.negative else ""
    params["control_scales"] = {t: float(gen.control_scales.get(t, checked.controlnet_scale)) for t in control_types}
    return params


def plan_jobs(
    campaign: Campaign,
    products: Sequence[Product],
    styles: Sequence[StyleSet],
    cells: Sequence[Cell],
    model: ModelIdentity,
) -> list[Job]:
    """Every image of the campaign, product by product, style by style, cell by cell, seed by seed.

    `model.profile` says which ControlNets and IP-Adapters the parameters cover (None: one canny
    ControlNet and one style adapter, the shape of `tiny` and `sd15`) and which channel sizes
    suit it. A `style` axis gives each cell its style set; a `channel` axis its canvas and the
    product's box on it (a campaign without channels keeps one canvas and its asset ids).
    """
    matrix = campaign.matrix
    if not campaign.generation.profile:
        raise ValueError(f"campaign {campaign.name!r}: no model profile decided (set generation.profile or STYLEMATRIX_PROFILE)")
    profile = model.profile
    layouts = resolve_channels(campaign, profile)
    jobs = []
    composed: set[tuple[str, str]] = set()  # (product, channel) of the white-background images planned
    for product in products:
        for style in styles:
            ref_shas = tuple(r.sha256 for r in style.references)
            ref_weights = tuple(r.weight for r in style.references)
            for cell in cells:
                if "style" in matrix.axes and cell.params["style"] != style.style_id:
                    continue
                params = job_params(campaign, style, cell, profile)
                if CHANNEL_AXIS in cell.params:
                    params.update(channel_params(layouts[str(cell.params[CHANNEL_AXIS])], product))
                white = params.get("background") == "white"
                if (params["mode"] == "preserve" or white) and product.mask_source == "none":
                    continue  # no mask, no pixels to keep: maskless_products says so
                if white:
                    # A white-background image is composed from the catalog photo, not generated: one per
                    # product and channel, whatever the style, cell and seed (the first of each).
                    if (product.product_id, str(params["channel"])) in composed:
                        continue
                    composed.add((product.product_id, str(params["channel"])))
                prompt = render_prompt(matrix.template, cell, product)
                scanned = style.ip_scale_scan or "" if "ip_scale" not in cell.params else ""
                seeds = matrix.seed_list[:1] if white else matrix.seed_list
                ids = asset_ids(AssetInputs(
                    product_sha256=product.sha256,
                    reference_sha256s=ref_shas,
                    reference_weights=ref_weights,
                    prompt=prompt,
                    negative_prompt=matrix.negative,
                    params=params,
                    profile=campaign.generation.profile,
                    profile_revision=model.revision,
                    dtype=model.dtype,
                ), seeds)
                first = Job(
                    asset_id=ids[0],
                    product_id=product.product_id,
                    style_id=style.style_id,
                    cell_index=cell.index,
                    cell=cell_record(cell, matrix),
                    prompt=prompt,
                    negative_prompt=matrix.negative,
                    seed=seeds[0],
                    params=params,
                    profile=campaign.generation.profile,
                    profile_revision=model.revision,
                    dtype=model.dtype,
                    product_sha256=product.sha256,
                    reference_sha256s=ref_shas,
                    ip_scale_scan=scanned,
                )
                # A cell's jobs differ only by seed: one is checked, the rest are copies (100,000 jobs in seconds).
                jobs.append(first)
                jobs += [first.model_copy(update={"asset_id": aid, "seed": int(seed)})
                         for aid, seed in zip(ids[1:], seeds[1:], strict=True)]
    duplicated = len(jobs) - len({j.asset_id for j in jobs})
    if duplicated:
        raise ValueError(f"campaign {campaign.name!r}: {duplicated} jobs repeat another job's inputs exactly")
    return jobs


def channel_params(layout: Layout, product: Product) -> dict[str, Param]:
    """A channel's canvas and layout for one product: where its photo goes depends on the photo's aspect."""
    if product.width < 1 or product.height < 1:
        raise ValueError(f"product {product.product_id!r}: its photo size is unknown, so channel {layout.name!r} "
                         "cannot place it (refresh the catalog)")
    return layout_params(layout, product_box(layout, product.width, product.height))


def modes_used(campaign: Campaign) -> set[str]:
    """The generation modes a campaign's cells use (a `mode` axis may mix them)."""
    return {str(m) for m in campaign.matrix.axes.get("mode", (campaign.generation.mode,))}


def white_channels(campaign: Campaign, profile: ModelProfile | None = None) -> list[str]:
    """The campaign's channels whose images are the product on white (a marketplace's main image)."""
    return [name for name, layout in resolve_channels(campaign, profile).items() if layout.background == "white"]


def maskless_products(campaign: Campaign, products: Sequence[Product]) -> dict[str, str]:
    """Products whose preserve-mode (or white-background) images `plan_jobs` leaves out, with the reason: they
    have no mask."""
    white = white_channels(campaign)
    if white and "preserve" not in modes_used(campaign):
        return {p.product_id: f"product {p.product_id!r} has no mask (no mask.png, no transparent or plain "
                              f"background): its white-background images ({', '.join(white)}) are left out"
                for p in products if p.mask_source == "none"}
    if "preserve" not in modes_used(campaign):
        return {}
    return {
        p.product_id: f"product {p.product_id!r} has no mask (no mask.png, no transparent or plain background): "
                      "its preserve-mode images are left out, since preserve mode keeps the pixels a mask marks"
        for p in products if p.mask_source == "none"
    }


def group_batches(jobs: Iterable[Job], batch_size: int) -> list[Batch]:
    """Jobs grouped by (product, style set, parameters) in first-seen order, then cut to `batch_size`."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    groups: dict[tuple, list[Job]] = {}
    jobs = list(jobs)  # alive throughout: `written` is keyed by the id of their params
    written: dict[int, str] = {}  # a cell's jobs share one params dict: its JSON is written once
    for job in jobs:
        params = written.get(id(job.params))
        if params is None:
            params = written[id(job.params)] = json.dumps(job.params, sort_keys=True)
        groups.setdefault((job.product_id, job.style_id, params), []).append(job)
    batches = []
    for members in groups.values():
        first = members[0]
        for start in range(0, len(members), batch_size):
            batches.append(
                Batch(
                    index=len(batches),
                    product_id=first.product_id,
                    style_id=first.style_id,
                    params=first.params,
                    jobs=tuple(members[start : start + batch_size]),
                )
            )
    return batches


def plan_shards(
    batches: Sequence[Batch],
    products: Sequence[Product],
    styles: Sequence[StyleSet],
    *,
    images_per_shard: int,
) -> list[Shard]:
    """Batches packed in order into shards of about `images_per_shard` images (never splitting a batch)."""
    if images_per_shard < 1:
        raise ValueError(f"images_per_shard must be at least 1, got {images_per_shard}")
    by_product = {p.product_id: p for p in products}
    by_style = {s.style_id: s for s in styles}
    groups: list[list[Batch]] = []
    count = 0
    for batch in batches:
        if not groups or count + len(batch.jobs) > images_per_shard:
            groups.append([])
            count = 0
        groups[-1].append(batch)
        count += len(batch.jobs)
    return [
        Shard(
            index=i,
            batches=tuple(group),
            products={b.product_id: by_product[b.product_id] for b in group},
            styles={b.style_id: by_style[b.style_id] for b in group},
        )
        for i, group in enumerate(groups)
    ]


def choose_inputs(campaign: Campaign, products: Sequence[Product], styles: Sequence[StyleSet],
                  quarantine: Sequence[QuarantineEntry] = (), *,
                  strict: bool = False) -> tuple[list[Product], list[StyleSet], dict[str, str]]:
    """The catalog entries a campaign's selectors pick (a `style` axis picks the style sets, in its
    order), and those it names that are missing or quarantined, with why: `{"style set night-sky":
    "quarantined: styles/night-sky/b.jpg: ..."}`. The run goes on with the rest.

    Raises:
        ValueError: `strict` and a named id is missing or quarantined; or nothing is left on either side.
    """
    style_axis = tuple(str(v) for v in campaign.matrix.axes.get("style", ()))
    reasons = {(q.kind, q.entry_id): q.reason for q in quarantine if q.kind in ("product", "style") and q.entry_id}
    left_out: dict[str, str] = {}
    for kind, short, wanted, ids in (
        ("product", "product", campaign.products.ids, {p.product_id for p in products}),
        ("style set", "style", campaign.styles.ids or style_axis, {s.style_id for s in styles}),
    ):
        missing = [i for i in wanted if i not in ids]
        if missing and strict:
            raise ValueError(f"campaign {campaign.name!r}: {kind} ids {missing} are not in the catalog (or were quarantined)")
        for i in missing:
            reason = reasons.get((short, i))
            left_out[f"{kind} {i}"] = f"quarantined: {reason}" if reason else "not in the catalog"
    chosen_products = [p for p in products if campaign.products.matches(p.product_id, p.tags)]
    if style_axis:
        by_id = {s.style_id: s for s in styles}
        chosen_styles = [by_id[i] for i in style_axis if i in by_id]
    else:
        chosen_styles = [s for s in styles if campaign.styles.matches(s.style_id, s.tags)]
    for kind, chosen in (("product", chosen_products), ("style set", chosen_styles)):
        if not chosen:
            gone = [k.split(" ", 2)[-1] for k in left_out if k.startswith(kind + " ")]
            why = f" (left out: {gone}, missing or quarantined)" if gone else ""
            raise ValueError(f"campaign {campaign.name!r}: no {kind} in the catalog matches its {kind.split()[0]} "
                             f"selector{why}: nothing left to generate")
    return chosen_products, chosen_styles, left_out
