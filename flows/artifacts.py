"""Prefect artifacts of a campaign run: its progress bar, a summary, the top images, a link to the gallery.

Artifacts are reports: they never stop a run and are never retried.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from uuid import UUID

from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from catalogs.models import RunSummary
from tasks.values import is_missing

ARTIFACT_ROWS_PER_PRODUCT = 10  # the top-images table stays small whatever top_k is


def artifact_key(campaign: str, what: str) -> str:
    """A Prefect artifact key (lowercase letters, digits, dashes) for one of a campaign's artifacts."""
    return re.sub(r"[^a-z0-9-]+", "-", f"{campaign}-{what}".lower()).strip("-")


def start_progress(campaign: str, run_id: str) -> str:
    """A progress artifact for the run's images; returns its id (`ProgressArtifact` moves it)."""
    return str(create_progress_artifact(0.0, key=artifact_key(campaign, "progress"),
                                        description=f"run {run_id}: share of images generated"))


class ProgressArtifact:
    """A listener of the run's `Progress` (flows/progress.py): the run's progress artifact in the Prefect UI,
    the share of its images made, in percent.

    Never back: a shard that failed and runs again reports its first batches again.
    """

    def __init__(self, artifact_id: str) -> None:
        self.artifact_id = artifact_id
        self.value = 0.0  # the artifact starts at 0

    def update(self, done: int, total: int) -> None:
        value = round(100.0 * min(max(done / total, 0.0), 1.0), 1) if total else 0.0
        if value > self.value:
            self.value = value
            update_progress_artifact(UUID(self.artifact_id), value)


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
    return None if is_missing(value) else round(float(value), 3)


def report_run(summary: RunSummary, rows: Sequence[dict]) -> None:
    """Prefect artifacts for the run its `summary` tells of (with its `generations` rows): the top images per
    product, a summary (what was left out, first), a link to the gallery. The campaign's title (any language)
    heads them where it has one."""
    campaign, run_id, title, gallery = summary.campaign, summary.run_id, summary.title, summary.gallery
    sheets, tables, manifest, left_out = summary.sheets, summary.tables, summary.manifest, summary.left_out
    counts = {s: sum(r.get("status") == s for r in rows) for s in ("ok", "gated", "duplicate", "failed")}
    selected = sum(bool(r.get("selected")) for r in rows)
    named = f"{title} ({campaign})" if title else campaign
    lines = [f"# {named} · run {run_id}", "",
             f"{len(rows)} images: {counts['ok']} ok ({selected} selected), {counts['gated']} gated, "
             f"{counts['duplicate']} duplicate, {counts['failed']} failed.", ""]
    if left_out:
        lines += ["> **Warning: left out of this run**", ">",
                  *(f"> - {what}: {why}" for what, why in left_out.items()), ""]
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
        create_link_artifact(gallery, link_text=f"{named} gallery ({run_id})", key=artifact_key(campaign, "gallery"),
                             description="the run's gallery page, beside its images")
