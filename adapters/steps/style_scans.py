"""Style scans: render a style set's probe grid over an IP-Adapter scale sweep, measure every image,
and publish the curves, the probe sheet and the `style_scans` rows; then find the latest scan of
a style set for `ip_scale: auto`.

A scan is stored in its folder (`AssetsLayout.scan`: `scans/<style_id>/<scan_id>/`, curves and sheet) with its
rows committed to the `style_scans` Delta table (one commit named `scan:<scan_id>`: a scan's rows land
once, whoever gets there first), and counts once its record (`ScanLayout.commit`) is written, last, with a
conditional put.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

import numpy as np
from PIL import Image

from adapters.infra import lake
from adapters.infra.fonts import sheet_font
from adapters.infra.storage import ObjectStore
from adapters.model.clip import ClipScorer
from adapters.model.draws import Draw
from adapters.model.engine import Engine
from adapters.steps import conditioning, publish
from catalogs.models import Campaign, StyleSet
from tasks import layout
from tasks.canny import canvas_images, canvas_kinds, fit_to_canvas
from tasks.layout import AssetsLayout
from tasks.scan_report import curves_plot, scan_sheet
from tasks.scores import edge_map, pixel_scores, product_mask_on_canvas
from tasks.style_scan import (
    PROBE_NEGATIVE,
    Probe,
    ScanChoice,
    apply_auto_scales,
    auto_style_ids,
    copy_scores,
    find_threshold,
    probe_prompt,
    probe_shape,
    references_key,
    scale_means,
    scan_rows,
)

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class ScanOrder:
    """Which scan to make and what its rows record: its id, where it is stored, the catalog snapshot its style
    set came from, and who asked for it."""

    scan_id: str
    assets: AssetsLayout
    catalog: str
    snapshot_id: str
    triggered_by: str
    flow_run_id: str = ""


@dataclass(frozen=True)
class ScanResult:
    """What one style set's scan left: scanned now, or found already committed."""

    style_id: str
    scan_id: str
    status: str  # scanned | unchanged
    threshold: float | None
    recommended: float
    reason: str
    plot: str
    sheet: str
    table: str
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        found = f"threshold {self.threshold:g}" if self.threshold is not None else "no threshold in the range"
        return (f"style {self.style_id}: {self.status} (scan {self.scan_id}): {found}, recommended ip_scale "
                f"{self.recommended:g}")


def committed_scan(store: ObjectStore, assets: AssetsLayout, style_id: str, scan_id: str) -> ScanResult | None:
    """The committed scan of this id, or None when it was never made (or never finished)."""
    try:
        record = json.loads(store.get(assets.scan(style_id, scan_id).commit))
    except FileNotFoundError:
        return None
    return _result(record, "unchanged")


def latest_scans(store: ObjectStore, assets: AssetsLayout, styles: Sequence[StyleSet], style_ids: Sequence[str],
                 profile: str) -> dict[str, ScanChoice | None]:
    """Per style set named, the latest committed scan with this profile of its current references
    (sha256s, weights, combine rule, preset); None when there is none."""
    by_id = {s.style_id: s for s in styles}
    choices: dict[str, ScanChoice | None] = {}
    for style_id in style_ids:
        key = references_key(by_id[style_id])
        best = None
        for info in store.list(assets.scans(style_id)):
            if not info.uri.endswith("/" + layout.SCAN_COMMIT):
                continue
            record = json.loads(store.get(info.uri))
            if record["profile"] == profile and record["references_key"] == key and \
                    (best is None or record["created_at"] > best["created_at"]):
                best = record
        choices[style_id] = None if best is None else ScanChoice(scan_id=best["scan_id"],
                                                                 recommended=float(best["recommended"]))
    return choices


def auto_scales(store: ObjectStore, assets: AssetsLayout, campaign: Campaign, styles: Sequence[StyleSet]) -> list[StyleSet]:
    """The style sets with `ip_scale: auto` replaced by each one's latest scan's recommended scale
    (`tasks.style_scan.apply_auto_scales`); unchanged when nothing is `auto`.

    Raises ValueError naming the command to run when a style set that needs a scan has none.
    """
    wanted = auto_style_ids(campaign, styles)
    profile = str(campaign.generation.profile)
    choices = latest_scans(store, assets, styles, wanted, profile) if wanted else {}
    return apply_auto_scales(campaign, styles, choices, profile)


def run_scan(engine: Engine, clip: ClipScorer | None, store: ObjectStore, style: StyleSet, probe: Probe,
             order: ScanOrder) -> ScanResult:
    """Render the probe grid at every scale of the sweep, measure it, publish the scan and commit it."""
    start = time.perf_counter()
    scan_id, assets = order.scan_id, order.assets
    folder = assets.scan(style.style_id, scan_id)
    style_input = conditioning.style_input(store, style)
    first = probe.params(probe.scales[0], style.preset)
    kinds = canvas_kinds(first, engine.control_types, engine.adapter_images)
    width, height = probe.width, probe.height
    shapes = {}
    for name in probe.shapes:
        cut = probe_shape(name)
        canvases = canvas_images(cut, None, first, kinds)
        fitted = fit_to_canvas(cut, width, height)
        edges = np.asarray(canvases["canny"].convert("L")) > 127 if "canny" in canvases else \
            edge_map(fitted, probe.canny_low, probe.canny_high)
        shapes[name] = (canvases, fitted, edges, product_mask_on_canvas(cut, width, height))
    rows: list[dict] = []
    images: list[Image.Image] = []
    for scale in probe.scales:
        params = probe.params(scale, style.preset)
        for name, (canvases, fitted, edges, mask) in shapes.items():
            prompts = [probe_prompt(t, name) for t in probe.prompts for _ in probe.seeds]
            seeds = [s for _ in probe.prompts for s in probe.seeds]
            made = engine.generate(canvases=canvases, style=style_input, params=params,
                                   draws=[Draw(p, PROBE_NEGATIVE, s) for p, s in zip(prompts, seeds, strict=True)])
            clip_scores = [(None, None)] * len(made)
            if clip is not None:
                clip_scores = clip.score(made, prompts, style_key=style_input.key, references=style_input.images,
                                         weights=style_input.weights)
            for image, prompt, seed, (clip_text, clip_style) in zip(made, prompts, seeds, clip_scores, strict=True):
                pixels, problems = pixel_scores(image, product_canvas=fitted, control_edges=edges, mask=mask,
                                                canny_low=probe.canny_low, canny_high=probe.canny_high)
                for problem in problems:
                    log.warning("style scan %s: score %s", style.style_id, problem)
                rows.append({"ip_scale": float(scale), "shape": name, "prompt": prompt, "seed": seed,
                             "clip_style": clip_style, "clip_text": clip_text, "edge_f1": pixels["edge_f1"],
                             "product_ssim": pixels["product_ssim"], **copy_scores(image, style_input.images)})
                images.append(image)
        log.info("style scan %s: ip_scale %g done (%d images)", style.style_id, scale, probe.images_per_scale)

    means = scale_means(rows, probe.scales)
    verdict = find_threshold(probe.scales, means)
    title = f"style scan of {style.style_id} · profile {engine.profile} · scan {scan_id}"
    plot, sheet = folder.curves, folder.sheet
    store.put(plot, curves_plot(probe.scales, means, verdict, title=title), content_type="image/png")
    picture = scan_sheet(rows, images, verdict, title=title, references=style_input.images, font=sheet_font())
    store.put(sheet, publish.encode_jpeg(picture), content_type="image/jpeg")

    now = datetime.now(UTC)
    seconds = time.perf_counter() - start
    common = {
        "scan_id": scan_id, "style_id": style.style_id, "reference_keys": [r.key for r in style.references],
        "reference_sha256s": [r.sha256 for r in style.references], "combine": style.combine,
        "ip_preset": style.preset, "profile": engine.profile, "profile_revision": engine.revision,
        "device": engine.device_name, "dtype": engine.dtype_name, "catalog": order.catalog,
        "snapshot_id": order.snapshot_id, "probe": json.dumps(probe.as_dict(), sort_keys=True), "plot_key": plot,
        "sheet_key": sheet, "triggered_by": order.triggered_by, "flow_run_id": order.flow_run_id, "created_at": now,
        "duration_seconds": seconds,
    }
    part = lake.commit(lake.Lake.of(store, assets), "style_scans",
                       scan_rows(common, probe.scales, means, verdict, probe.images_per_scale),
                       run_date=f"{now:%Y-%m-%d}", txn=f"scan:{scan_id}")
    record = {
        "scan_id": scan_id, "style_id": style.style_id, "profile": engine.profile,
        "profile_revision": engine.revision, "references_key": references_key(style),
        "reference_sha256s": common["reference_sha256s"], "threshold": verdict.threshold,
        "recommended": verdict.recommended, "measure": verdict.measure, "reason": verdict.reason,
        "plot": plot, "sheet": sheet, "table": part.uri, "table_version": part.version, "created_at": now.isoformat(), "seconds": seconds,
        "probe": probe.as_dict(), "curves": {"scales": list(probe.scales), **means},
    }
    try:
        store.put(folder.commit, json.dumps(record, indent=1).encode(),
                  content_type="application/json", if_absent=True)
    except FileExistsError:  # another run made the same scan at the same time and committed first
        log.info("style scan %s: scan %s was committed by another run meanwhile", style.style_id, scan_id)
        return committed_scan(store, assets, style.style_id, scan_id) or _result(record, "unchanged")
    return _result(record, "scanned")


def report_pictures(store: ObjectStore, result: ScanResult) -> tuple[bytes, bytes]:
    """A scan's pictures for its report: its curves (PNG, as stored) and a small preview of its probe sheet (JPEG)."""
    return store.get(result.plot), sheet_preview(store, result.sheet)


def sheet_preview(store: ObjectStore, uri: str, width: int = 900) -> bytes:
    """The stored sheet shrunk to `width` pixels, as JPEG bytes small enough to embed in a report."""
    from adapters.catalog.images import load_image

    image = load_image(store, uri)
    if image.width > width:
        image = image.resize((width, max(1, round(image.height * width / image.width))), Image.Resampling.LANCZOS)
    return publish.encode_jpeg(image, quality=70)


def _result(record: dict, status: str) -> ScanResult:
    return ScanResult(style_id=record["style_id"], scan_id=record["scan_id"], status=status,
                      threshold=record["threshold"], recommended=float(record["recommended"]), reason=record["reason"],
                      plot=record["plot"], sheet=record["sheet"], table=record["table"],
                      seconds=float(record.get("seconds", 0.0)))
