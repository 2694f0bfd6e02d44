"""The style scan: where a style set's IP-Adapter scale stops adding style and starts copying.

Pure: the probe grid (shapes drawn here, neutral prompts, fixed seeds), the copying measure,
the per-scale means, the threshold rule, the scan's key and how `ip_scale: auto` resolves.
The scan itself (generating and scoring the grid) is `adapters/steps/style_scans.py`.

The threshold rule, on the per-scale means of every measure (docs/style-scan.md):

1. Each curve is smoothed with a running median of 3 (the ends keep their own value), so one
   noisy scale neither makes nor hides a threshold.
2. The baseline is the smoothed value at the lowest scale of the sweep (0.0 by default: no
   adapter at all).
3. A scale *breaches* when, against the baseline, a copying measure has risen by more than its
   tolerance, or prompt adherence or product fidelity has fallen by more than its tolerance
   (TOLERANCES).
4. The threshold is the first scale that breaches and whose next scale breaches too (the last
   scale of the sweep needs only itself): a rise that holds, not a blip.
5. The recommended scale is the scale just below the threshold. With no threshold in the range
   it is the scale of highest (smoothed) style similarity, the lowest such on ties, or the top
   of the sweep without a style measure; the scan then says "no threshold found in the range".
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw

from catalogs.models import Campaign, ModelProfile, StyleSet
from tasks.canny import cover_canvas
from tasks.catalog_build import QuarantineEntry
from tasks.phash import HASH_SIZE, dct_hash, hamming

SCAN_VERSION = 1  # part of every scan id: a new rule or measure scans every style set again

# The measures of every probe image, and which way each one goes when the adapter takes over.
# "rise": copying of the references; "fall": prompt adherence and product fidelity;
# "style": what a good scale raises (never a breach by itself).
MEASURES: dict[str, str] = {
    "clip_style": "style",
    "clip_text": "fall",
    "edge_f1": "fall",
    "product_ssim": "fall",
    "copy_ssim": "rise",
    "copy_patch": "rise",
}
# How far a measure may move from its baseline before the scale breaches (absolute units).
TOLERANCES: dict[str, float] = {
    "clip_text": 0.03,  # CLIP cosine to the prompt: real prompts sit around 0.2-0.35
    "edge_f1": 0.15,  # edge F1 beyond chance, 0..1
    "product_ssim": 0.15,  # SSIM inside the product, -1..1
    "copy_ssim": 0.10,  # SSIM to the closest reference at canvas size, -1..1
    "copy_patch": 0.15,  # share of patches that repeat a reference patch, 0..1
}

PATCH_GRID = 4  # the image and each reference are cut into PATCH_GRID x PATCH_GRID patches
PATCH_MATCH_BITS = 10  # a patch repeats a reference patch when their pHashes differ in at most this many bits
PATCH_MIN_STD = 4.0  # patches flatter than this (grey levels) carry no content to copy and are left out

PROBE_SHAPES = ("bottle", "box", "ball")
PROBE_PROMPTS = ("a product photo of a {shape}, studio light", "a {shape} on a table")
PROBE_NEGATIVE = "text, watermark"
DEFAULT_SCALES = tuple(round(0.1 * i, 1) for i in range(13))  # 0.0 .. 1.2


# --------------------------------------------------------------------------- the probe grid


@dataclass(frozen=True)
class Probe:
    """The fixed grid a scan renders at every scale: shapes x prompts x seeds, and how."""

    scales: tuple[float, ...] = DEFAULT_SCALES
    shapes: tuple[str, ...] = PROBE_SHAPES
    prompts: tuple[str, ...] = PROBE_PROMPTS
    seeds: tuple[int, ...] = (0, 1)
    width: int = 512
    height: int = 512
    steps: int = 20
    guidance: float = 7.0
    scheduler: str = "unipc"
    controlnet_scale: float = 1.0
    canny_low: int = 100
    canny_high: int = 200

    def __post_init__(self) -> None:
        if len(self.scales) < 2:
            raise ValueError(f"a scan needs at least two ip_scale values, got {list(self.scales)}")
        if list(self.scales) != sorted(set(self.scales)):
            raise ValueError(f"scan scales must rise without repeats, got {list(self.scales)}")
        if self.scales[0] < 0 or self.scales[-1] > 2:
            raise ValueError(f"scan scales must lie in 0..2, got {self.scales[0]}..{self.scales[-1]}")
        unknown = sorted(set(self.shapes) - set(PROBE_SHAPES))
        if unknown or not self.shapes:
            raise ValueError(f"unknown probe shapes {unknown}; known: {list(PROBE_SHAPES)}")
        if not self.prompts or not self.seeds:
            raise ValueError("a scan needs at least one prompt and one seed")
        if self.width % 8 or self.height % 8 or min(self.width, self.height) < 64:
            raise ValueError(f"probe size {self.width}x{self.height} must be multiples of 8, at least 64")

    def as_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}

    @property
    def images_per_scale(self) -> int:
        return len(self.shapes) * len(self.prompts) * len(self.seeds)

    def params(self, scale: float, preset: str) -> dict:
        """The engine parameters of every probe image at one scale."""
        return {"mode": "ip_adapter", "width": self.width, "height": self.height, "steps": self.steps,
                "scheduler": self.scheduler, "guidance": self.guidance, "ip_scale": float(scale), "ip_preset": preset,
                "controlnet_scale": self.controlnet_scale, "canny_low": self.canny_low, "canny_high": self.canny_high}


def default_probe(profile: ModelProfile) -> Probe:
    """The probe a profile is scanned with: its native size and enough steps for real weights.

    The tiny kit's random weights mean nothing at any size, so it is probed at 64 px in 2 steps
    (the scan's machinery is the same, in seconds).
    """
    if profile.base.source.startswith("builtin:"):
        return Probe(width=64, height=64, steps=2)
    side = 1024 if profile.pipeline == "sdxl" else 512
    return Probe(width=side, height=side, steps=20)


def probe_for(profile: ModelProfile, *, scales: Sequence[float] | None = None, seeds: Sequence[int] | None = None,
              size: int | None = None, steps: int | None = None) -> Probe:
    """The profile's probe (`default_probe`) with the parts a request replaces."""
    base = default_probe(profile)
    return replace(base, scales=tuple(float(s) for s in scales) if scales else base.scales,
                   seeds=tuple(int(s) for s in seeds) if seeds else base.seeds,
                   width=size or base.width, height=size or base.height, steps=steps or base.steps)


def pick_styles(styles: Sequence[StyleSet], quarantine: Sequence[QuarantineEntry], ids: Sequence[str]) -> list[StyleSet]:
    """The named style sets, in the order named.

    Raises:
        ValueError: naming each id that is quarantined (with why) or not in the catalog.
    """
    by_id = {s.style_id: s for s in styles}
    reasons = {q.entry_id: q.reason for q in quarantine if q.kind == "style"}
    missing = [i for i in ids if i not in by_id]
    if missing:
        why = "; ".join(f"{i}: quarantined: {reasons[i]}" if i in reasons else f"{i}: not in the catalog" for i in missing)
        raise ValueError(f"style scan: style sets {missing} cannot be scanned ({why})")
    return [by_id[i] for i in ids]


def sweep(start: float, stop: float, step: float) -> tuple[float, ...]:
    """start, start + step, ... up to stop (included), rounded to 3 decimals."""
    if step <= 0 or stop < start:
        raise ValueError(f"scan sweep {start}..{stop} step {step}: needs step > 0 and stop >= start")
    count = int(math.floor((stop - start) / step + 1e-9)) + 1
    return tuple(round(start + i * step, 3) for i in range(count))


def probe_shape(name: str, side: int = 256) -> Image.Image:
    """A plain cut-out shape on a transparent background: the product every style set is probed with."""
    img = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    draw = ImageDraw.Draw(img)
    s = side
    if name == "bottle":
        draw.rectangle((s * 0.42, s * 0.08, s * 0.58, s * 0.3), fill=(40, 110, 70, 255))
        draw.rounded_rectangle((s * 0.3, s * 0.28, s * 0.7, s * 0.92), radius=s // 10, fill=(40, 110, 70, 255))
    elif name == "box":
        draw.rectangle((s * 0.18, s * 0.3, s * 0.82, s * 0.78), fill=(180, 130, 60, 255))
        draw.line((s * 0.18, s * 0.45, s * 0.82, s * 0.45), fill=(120, 80, 30, 255), width=max(1, s // 40))
    elif name == "ball":
        draw.ellipse((s * 0.2, s * 0.2, s * 0.8, s * 0.8), fill=(200, 50, 50, 255))
    else:
        raise ValueError(f"unknown probe shape {name!r}; known: {list(PROBE_SHAPES)}")
    return img


def probe_prompt(template: str, shape: str) -> str:
    return template.replace("{shape}", shape)


# --------------------------------------------------------------------------- the copying measure


def copy_scores(image: Image.Image, references: Sequence[Image.Image]) -> dict[str, float]:
    """How much of the references an image reproduces: `copy_ssim` and `copy_patch`, each the
    highest over the references.

    `copy_ssim` is the structural similarity (grey levels) of the image to the reference scaled
    and centre-cropped to the image's canvas: a copied layout scores near 1, an unrelated
    picture near 0. `copy_patch` is the share of the image's textured patches (a PATCH_GRID x
    PATCH_GRID cut) whose perceptual hash is within PATCH_MATCH_BITS of some textured patch of
    the reference, wherever it sits: copied objects score even where they moved.
    """
    from skimage.metrics import structural_similarity

    if not references:
        raise ValueError("copy scores need at least one reference image")
    width, height = image.size
    grey = np.asarray(image.convert("L"), dtype=np.float64)
    mine = _patch_hashes(grey)
    best_ssim, best_patch = -1.0, 0.0
    for ref in references:
        fitted = np.asarray(cover_canvas(ref, width, height).convert("L"), dtype=np.float64)
        win = min(7, width, height) | 1
        best_ssim = max(best_ssim, float(structural_similarity(grey, fitted, win_size=win, data_range=255.0)))
        theirs = _patch_hashes(fitted)
        if mine and theirs:
            hits = sum(any(hamming(a, b) <= PATCH_MATCH_BITS for b in theirs) for a in mine)
            best_patch = max(best_patch, hits / len(mine))
    return {"copy_ssim": best_ssim, "copy_patch": best_patch}


def _patch_hashes(grey: np.ndarray) -> list[str]:
    import cv2

    h, w = grey.shape
    hashes = []
    for r in range(PATCH_GRID):
        for c in range(PATCH_GRID):
            patch = grey[r * h // PATCH_GRID:(r + 1) * h // PATCH_GRID, c * w // PATCH_GRID:(c + 1) * w // PATCH_GRID]
            if patch.size == 0 or float(patch.std()) < PATCH_MIN_STD:
                continue
            small = cv2.resize(patch.astype(np.float32), (HASH_SIZE, HASH_SIZE), interpolation=cv2.INTER_AREA)
            hashes.append(dct_hash(small, noise_floor=0.5))
    return hashes


# --------------------------------------------------------------------------- curves and the rule


def scale_means(rows: Sequence[Mapping], scales: Sequence[float]) -> dict[str, list[float | None]]:
    """Per measure, its mean over the probe images of each scale (None where no image has it)."""
    means: dict[str, list[float | None]] = {}
    for measure in MEASURES:
        curve = []
        for scale in scales:
            values = [float(r[measure]) for r in rows if math.isclose(float(r["ip_scale"]), scale)
                      and r.get(measure) is not None and not math.isnan(float(r[measure]))]
            curve.append(float(np.mean(values)) if values else None)
        means[measure] = curve
    return means


def smooth(curve: Sequence[float | None]) -> list[float | None]:
    """A running median of 3 (the ends keep their own value); None stays None."""
    out: list[float | None] = []
    for i, v in enumerate(curve):
        if v is None or i == 0 or i == len(curve) - 1:
            out.append(v)
            continue
        window = [x for x in curve[i - 1:i + 2] if x is not None]
        out.append(float(np.median(window)))
    return out


@dataclass(frozen=True)
class Threshold:
    """The rule's verdict on one scan's curves."""

    threshold: float | None  # the first scale past a tolerance; None: none in the range
    recommended: float  # the scale a campaign with `ip_scale: auto` uses
    measure: str | None  # the measure that crossed first at the threshold
    reason: str  # one line a person reads


def find_threshold(scales: Sequence[float], curves: Mapping[str, Sequence[float | None]],
                   tolerances: Mapping[str, float] = TOLERANCES) -> Threshold:
    """The threshold scale and the recommended scale of a scan (the rule in the module docstring)."""
    scales = [float(s) for s in scales]
    if len(scales) < 2 or scales != sorted(set(scales)):
        raise ValueError(f"scan scales must be at least two, rising, got {scales}")
    for name, curve in curves.items():
        if len(curve) != len(scales):
            raise ValueError(f"curve {name!r} has {len(curve)} points for {len(scales)} scales")
    smoothed = {name: smooth(curve) for name, curve in curves.items()}

    def breach(i: int) -> tuple[str, float] | None:
        worst = None
        for name, tol in tolerances.items():
            curve = smoothed.get(name)
            if curve is None or curve[0] is None or curve[i] is None:
                continue
            direction = MEASURES.get(name)
            moved = curve[i] - curve[0] if direction == "rise" else curve[0] - curve[i]
            if moved > tol and (worst is None or moved - tol > worst[1] - tolerances[worst[0]]):
                worst = (name, moved)
        return worst

    hits = [breach(i) for i in range(len(scales))]
    for i in range(1, len(scales)):
        if hits[i] is not None and (i == len(scales) - 1 or hits[i + 1] is not None):
            name, moved = hits[i]
            verb = "rose" if MEASURES[name] == "rise" else "fell"
            return Threshold(
                threshold=scales[i], recommended=scales[i - 1], measure=name,
                reason=f"{name} {verb} {moved:.3f} from its value at {scales[0]:g} by scale {scales[i]:g} "
                       f"(tolerance {tolerances[name]:g}); recommended {scales[i - 1]:g}, the scale below")
    style = smoothed.get("clip_style")
    if style and any(v is not None for v in style):
        best = max(range(len(scales)), key=lambda i: (style[i] if style[i] is not None else -math.inf, -i))
        why = "the highest style similarity"
    else:
        best, why = len(scales) - 1, "the top of the sweep (no style measure)"
    return Threshold(threshold=None, recommended=scales[best], measure=None,
                     reason=f"no threshold found in the range {scales[0]:g}..{scales[-1]:g}; "
                            f"recommended {scales[best]:g}, {why}")


# --------------------------------------------------------------------------- keys and use


def references_key(style: StyleSet) -> str:
    """What of a style set decides its scan: its references' sha256s and weights, combine rule and preset."""
    payload = {"refs": [[r.sha256, float(r.weight)] for r in style.references], "combine": style.combine,
               "preset": style.preset}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


def scan_id(style: StyleSet, profile: str, profile_revision: str, probe: Probe) -> str:
    """The scan's key: the same style set (references), profile and probe always give the same id."""
    payload = {"v": SCAN_VERSION, "style": style.style_id, "refs": references_key(style), "profile": profile,
               "revision": profile_revision, "probe": probe.as_dict()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


@dataclass(frozen=True)
class ScanChoice:
    """The latest committed scan of a style set and profile: the scale `auto` takes from it."""

    scan_id: str
    recommended: float


def auto_style_ids(campaign: Campaign, styles: Sequence[StyleSet]) -> list[str]:
    """The style sets whose IP-Adapter scale a run takes from a scan (`ip_scale: auto`).

    The campaign's `generation.ip_scale: auto` applies to every style set; without a scale in the
    campaign, a style set's own `ip_scale: auto` (style.yaml) applies. An `ip_scale` matrix axis
    sets every cell's scale, so then no scan is needed.
    """
    if "ip_scale" in campaign.matrix.axes:
        return []
    gen = campaign.generation
    if "ip_scale" in gen.model_fields_set:
        return [s.style_id for s in styles] if gen.ip_scale == "auto" else []
    return [s.style_id for s in styles if s.ip_scale == "auto"]


def apply_auto_scales(campaign: Campaign, styles: Sequence[StyleSet], choices: Mapping[str, ScanChoice | None],
                      profile: str) -> list[StyleSet]:
    """The style sets with every `auto` scale replaced by its scan's recommended scale and the scan's id.

    `choices` holds the latest scan of each style set `auto_style_ids` names (None: never scanned).
    The campaign keeps its `ip_scale: auto` (the runs table shows what was asked for); planning
    then takes each style set's resolved scale (`tasks.plan.job_params`).

    Raises:
        ValueError: a style set that needs a scan has none, naming the command that makes one.
    """
    wanted = auto_style_ids(campaign, styles)
    missing = [i for i in wanted if choices.get(i) is None]
    if missing:
        raise ValueError(f"campaign {campaign.name!r}: ip_scale auto needs a style scan of {missing} with profile "
                         f"{profile!r} for their current references; run `stylematrix style scan "
                         f"{' '.join(missing)} --profile {profile}` first")
    chosen = []
    for style in styles:
        choice = choices.get(style.style_id) if style.style_id in wanted else None
        if choice is not None:
            style = style.model_copy(update={"ip_scale": choice.recommended, "ip_scale_scan": choice.scan_id})
        elif style.ip_scale == "auto":
            style = style.model_copy(update={"ip_scale": None})  # the campaign's scale or an axis decides
        chosen.append(style)
    return chosen


def scan_rows(scan: Mapping[str, object], scales: Sequence[float], means: Mapping[str, Sequence[float | None]],
              verdict: Threshold, images_per_scale: int) -> list[dict]:
    """The scan's `style_scans` rows: one per scale, each with the scan's own columns (`scan`) and verdict."""
    from tasks.tables import SCHEMA_VERSION, to_frame

    rows = [{
        "schema_version": SCHEMA_VERSION, **scan, "ip_scale": float(scale), "images": images_per_scale,
        **{f"mean_{m}": means[m][i] for m in MEASURES},
        "threshold": verdict.threshold, "recommended_scale": verdict.recommended,
        "threshold_measure": verdict.measure, "threshold_reason": verdict.reason,
    } for i, scale in enumerate(scales)]
    to_frame("style_scans", rows)  # checks the column names now, not at write time
    return rows
