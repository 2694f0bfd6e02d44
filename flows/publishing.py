"""Scoring on the GPU worker; selection and publishing in the campaign flow.

A shard scores what it made (`score_batch`). After gathering, the campaign decides every
image's outcome and rewrites the run's `generations` parts with it (`select_run`), then
writes the per-cell metrics, the contact sheets and the gallery, and reports to Prefect.
None of it counts until the campaign writes its manifest.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from uuid import UUID

import numpy as np
from PIL import Image
from prefect import get_run_logger
from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.exceptions import MissingContextError

from adapters import catalog_io, publish
from adapters.engine import StyleInput
from adapters.scorers import ClipScorer
from adapters.storage import ObjectStore
from catalogs.models import Product, Selection, StyleSet
from tasks.canny import control_name, fit_to_canvas
from tasks.gallery import render_gallery
from tasks.masks import product_mask
from tasks.scores import edge_map, is_blank, pixel_scores, product_mask_on_canvas
from tasks.select import OUTCOME, cell_metrics, select_images
from tasks.sheets import contact_sheet, tile_for

ARTIFACT_ROWS_PER_PRODUCT = 10  # the top-images table stays small whatever top_k is


def _log() -> logging.Logger | logging.LoggerAdapter:
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(__name__)


def artifact_key(campaign: str, what: str) -> str:
    """A Prefect artifact key (lowercase letters, digits, dashes) for one of a campaign's artifacts."""
    return re.sub(r"[^a-z0-9-]+", "-", f"{campaign}-{what}".lower()).strip("-")


# --------------------------------------------------------------------------- on the GPU worker


def score_batch(store: ObjectStore, rows: list[dict], images: Sequence[Image.Image], *, product: Product,
                control: Image.Image | None, style: StyleSet, style_input: StyleInput,
                clip: ClipScorer | None) -> list[dict]:
    """The batch's rows with every score filled in; a blank image is marked failed.

    Fidelity is measured against the product photo as the control images placed it, inside the
    product's mask (its mask file, alpha channel or plain background; else the whole photo).
    `control` is the batch's canny control image; without one (a profile with other
    ControlNets) the fitted product's edges are computed here with the same thresholds.
    A photo or mask that cannot be read any more leaves the fidelity scores and `product_mask` null.
    """
    first = rows[0]
    width, height, low, high = (int(first[k]) for k in ("width", "height", "canny_low", "canny_high"))
    try:
        photo = catalog_io.load_image(store, product.image_key, product.sha256)  # the photo the images were made from
        mask_file = catalog_io.load_image(store, product.mask_key) if product.mask_key else None
        mask, source = product_mask(photo, mask_file)
    except (FileNotFoundError, ValueError) as exc:
        # Gone, overwritten or broken since the run read it: fidelity cannot be measured, every
        # other score can. A connection error is not caught: the shard's retry reads it again.
        _log().warning("fidelity scores of %s x %s left null: the product photo or mask cannot be read: %s",
                       product.product_id, style.style_id, exc)
        photo, source = None, None
    if photo is not None:
        region = product_mask_on_canvas(photo, width, height, mask)
        canvas = fit_to_canvas(photo, width, height)
        control_edges = np.asarray(control.convert("L")) > 127 if control is not None else edge_map(canvas, low, high)
    else:  # no product region known: the background hash covers the whole image
        region, canvas, control_edges = np.zeros((height, width), dtype=bool), None, None
    clip_scores: list[tuple[float | None, float | None]] = [(None, None)] * len(images)
    if clip is not None:
        try:
            clip_scores = clip.score(images, [r["prompt"] for r in rows], style_key=style_input.key,
                                     references=style_input.images, weights=style_input.weights)
        except Exception as exc:  # a scorer's failure costs its columns, never the images
            _log().warning("CLIP scores of %s x %s failed: %s: %s", product.product_id, style.style_id,
                           type(exc).__name__, exc)
            clip = None
    for row, image, (clip_text, clip_style) in zip(rows, images, clip_scores, strict=True):
        scores, problems = pixel_scores(image, product_canvas=canvas, control_edges=control_edges, mask=region,
                                        canny_low=low, canny_high=high)
        for problem in problems:
            _log().warning("image %s: score %s", row["asset_id"], problem)
        row.update(scores, product_mask=source, clip_text=clip_text, clip_style=clip_style,
                   clip_model=clip.name if clip is not None else None)
        if is_blank(image):
            row.update(status="failed", status_reason="blank image: every pixel is the same colour")
    return rows


def start_progress(campaign: str, run_id: str) -> str:
    """A progress artifact for the run's batches; its id goes to the shards."""
    return str(create_progress_artifact(0.0, key=artifact_key(campaign, "progress"),
                                        description=f"run {run_id}: share of batches generated"))


def advance_progress(progress: str | None, share: float) -> None:
    """Move the run's progress artifact to `share` (0..1) of its batches; a no-op without one."""
    if progress:
        update_progress_artifact(UUID(progress), round(100.0 * min(max(share, 0.0), 1.0), 1))


# --------------------------------------------------------------------------- in the campaign flow


def select_run(store: ObjectStore, parts: Sequence[dict], selection: Selection) -> tuple[list[dict], list[dict]]:
    """Decide every image's outcome across the run and rewrite each `generations` part with it.

    Returns the run's rows, with outcomes, and the parts' new manifest entries.
    """
    per_part = [publish.read_table(store, {"parts": [p]}, "generations").to_dict("records") for p in parts]
    rows = [r for part_rows in per_part for r in part_rows]
    for row, outcome in zip(rows, select_images(rows, selection), strict=True):
        row.update({k: outcome[k] for k in OUTCOME})
    new_parts = [publish.rewrite_table_part(store, p, part_rows) for p, part_rows in zip(parts, per_part, strict=True)]
    return rows, new_parts


def write_cell_metrics(store: ObjectStore, assets: str, run_date: str, run_id: str, campaign: str,
                       rows: Sequence[dict]) -> dict:
    """The run's `cell_metrics` part; returns its manifest entry."""
    return publish.put_table_part(store, assets, "cell_metrics", run_date, run_id,
                                  cell_metrics(rows, run_id=run_id, campaign=campaign))


def write_sheets(store: ObjectStore, assets: str, run_id: str, rows: Sequence[dict], products: Sequence[Product],
                 styles: Sequence[StyleSet], controls: dict[str, str]) -> dict[str, str]:
    """One contact sheet per product x style set, stored under the run's `sheets/`; file name -> URI."""
    by_product = {p.product_id: p for p in products}
    by_style = {s.style_id: s for s in styles}
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["product_id"], r["style_id"]), []).append(r)
    sheets = {}
    for (product_id, style_id), members in groups.items():
        product, style = by_product[product_id], by_style[style_id]
        first = members[0]
        header = [(product_id, catalog_io.load_image(store, product.image_key))]
        control = controls.get(control_name(product_id, first))
        if control:
            header.append(("canny", catalog_io.load_image(store, control)))
        header += [(ref.key.rsplit("/", 1)[-1].rsplit(".", 1)[0], catalog_io.load_image(store, ref.key))
                   for ref in style.references]
        tiles = [tile_for(r, catalog_io.load_image(store, r["output_key"]) if r.get("output_key") else None)
                 for r in sorted(members, key=lambda r: (r["cell_index"], r["seed"]))]
        selected = sum(bool(r.get("selected")) for r in members)
        sheet = contact_sheet(tiles, title=f"{product_id} x {style_id}",
                              subtitle=f"run {run_id} · {len(members)} images · {selected} selected", header=header)
        name = f"{product_id}__{style_id}.jpg"
        sheets[name] = publish.run_uri(assets, run_id, "sheets", name)
        store.put(sheets[name], publish.encode_jpeg(sheet), content_type="image/jpeg")
    return sheets


def write_gallery(store: ObjectStore, assets: str, run_id: str, campaign: str, rows: Sequence[dict],
                  sheets: dict[str, str], tables: Sequence[str]) -> str:
    """The run's `index.html`; returns its URI."""
    uri = publish.run_uri(assets, run_id, "index.html")
    links = {name.removesuffix(".jpg").replace("__", " x "): f"sheets/{name}" for name in sheets}
    publish.put_text(store, uri, render_gallery(run_id, campaign, rows, sheets=links, tables=tables),
                     "text/html; charset=utf-8")
    return uri


def top_images(rows: Sequence[dict], per_product: int = ARTIFACT_ROWS_PER_PRODUCT) -> list[dict]:
    """The selected images, product by product, best first, as rows for a table artifact."""
    chosen = sorted((r for r in rows if r.get("selected")), key=lambda r: (r["product_id"], r["rank_in_product"]))
    return [
        {"product": r["product_id"], "rank": int(r["rank_in_product"]), "style": r["style_id"],
         "cell": ", ".join(f"{k}={v}" for k, v in r["cell"]), "seed": int(r["seed"]),
         "score": round(float(r["score"]), 3), "edge_f1": _round(r.get("edge_f1")),
         "clip_text": _round(r.get("clip_text")), "clip_style": _round(r.get("clip_style")), "image": r["output_key"]}
        for r in chosen if int(r["rank_in_product"]) <= per_product
    ]


def _round(value: object) -> float | None:
    return None if value is None or (isinstance(value, float) and np.isnan(value)) else round(float(value), 3)


def report_run(campaign: str, run_id: str, rows: Sequence[dict], *, gallery: str | None, sheets: dict[str, str],
               tables: Sequence[str], manifest: str) -> None:
    """Prefect artifacts for the run: the top images per product, a summary, a link to the gallery."""
    counts = {s: sum(r.get("status") == s for r in rows) for s in ("ok", "gated", "duplicate", "failed")}
    selected = sum(bool(r.get("selected")) for r in rows)
    lines = [f"# {campaign} · run {run_id}", "",
             f"{len(rows)} images: {counts['ok']} ok ({selected} selected), {counts['gated']} gated, "
             f"{counts['duplicate']} duplicate, {counts['failed']} failed.", ""]
    if rows:
        lines += ["| product | images | selected | best score |", "|---|---|---|---|"]
        for product in sorted({r["product_id"] for r in rows}):
            mine = [r for r in rows if r["product_id"] == product]
            scores = [float(r["score"]) for r in mine if r.get("status") == "ok"]
            lines.append(f"| {product} | {len(mine)} | {sum(bool(r.get('selected')) for r in mine)} | "
                         f"{max(scores):.3f} |" if scores else f"| {product} | {len(mine)} | 0 | - |")
        lines.append("")
    lines += [f"- gallery: `{gallery}`" if gallery else "- gallery: none (nothing new)",
              *(f"- contact sheet: `{uri}`" for uri in sheets.values()),
              *(f"- table: `{uri}`" for uri in tables),
              f"- manifest: `{manifest}`"]
    create_markdown_artifact("\n".join(lines), key=artifact_key(campaign, "summary"), description=f"run {run_id}")
    if rows:
        create_table_artifact(top_images(rows), key=artifact_key(campaign, "top-images"),
                              description=f"run {run_id}: selected images per product, best first")
    if gallery:
        create_link_artifact(gallery, link_text=f"{campaign} gallery ({run_id})", key=artifact_key(campaign, "gallery"),
                             description="the run's gallery page, beside its images")
