"""The campaign flow: catalog -> plan -> canny -> shards -> tables, gallery, manifest (last)."""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Sequence
from datetime import UTC, datetime

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from adapters import catalog_io, publish
from adapters.settings import get_settings
from adapters.storage import S3Store
from catalogs import parse_campaign
from catalogs.models import Product, RunRequest
from flows import steps
from flows.catalog import catalog_for_run
from flows.dispatch import run_shards
from tasks.canny import control_image, control_name
from tasks.gallery import render_gallery
from tasks.plan import Batch
from tasks.request import apply_request, narrow
from tasks.tables import run_row

def prepare_controls(store: S3Store, assets: str, run_id: str, products: Sequence[Product],
                     batches: Sequence[Batch]) -> dict[str, str]:
    """Canny control images, once per product and canvas: computed here, stored with the run."""
    by_id = {p.product_id: p for p in products}
    controls: dict[str, str] = {}
    for b in batches:
        name = control_name(b.product_id, b.params)
        if name in controls:
            continue
        photo = catalog_io.load_image(store, by_id[b.product_id].image_key)
        edges = control_image(photo, b.params["width"], b.params["height"], b.params["canny_low"], b.params["canny_high"])
        controls[name] = publish.run_uri(assets, run_id, "controls", name)
        store.put(controls[name], publish.encode_png(edges), content_type="image/png")
    return controls


controls_step = task(prepare_controls, name="canny-controls", retries=1, cache_policy=NO_CACHE)


def new_run_id(campaign: str, now: datetime) -> str:
    return f"{campaign}-{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


@flow(name="run-campaign")
def run_campaign(request: RunRequest) -> dict:
    """Run a campaign: plan every image, generate what is not yet published, publish, commit."""
    logger = get_run_logger()
    settings = get_settings()
    catalog, assets = request.catalog or settings.catalog, request.assets or settings.assets
    store = S3Store.from_settings(settings)
    started, clock = datetime.now(UTC), time.perf_counter()

    text = steps.read_campaign(store, catalog_io.campaign_uri(request.campaign, catalog))
    spec = apply_request(parse_campaign(text, origin=request.campaign), request, settings.profile)
    state = catalog_for_run(store, catalog, request.snapshot)
    for q in state.quarantine:
        logger.warning("quarantined %s: %s", q.key, q.reason)
    products, styles = narrow(request, *steps.choose(spec, state.products, state.styles))
    cells = steps.expand(spec.matrix)
    revision, dtype, device = steps.identity(spec.generation.profile, settings)
    jobs = steps.plan(spec, products, styles, cells, profile_revision=revision, dtype=dtype)
    done = steps.published(store, assets)
    todo = [j for j in jobs if j.asset_id not in done]
    run_id = new_run_id(spec.name, started)
    run_date = f"{started:%Y-%m-%d}"
    logger.info("run %s: %d products x %d style sets x %d cells x %d seeds = %d images; %d already published, %d to make",
                run_id, len(products), len(styles), len(cells), len(spec.matrix.seed_list), len(jobs),
                len(jobs) - len(todo), len(todo))
    if request.dry_run:
        return {"run_id": None, "dry_run": True, "images_planned": len(jobs), "images_skipped": len(jobs) - len(todo),
                "images_to_generate": len(todo), "quarantined": len(state.quarantine)}

    batches = steps.batch(todo, spec.generation.batch_size)
    shards = steps.shard(batches, products, styles, images_per_shard=settings.images_per_shard)
    controls = controls_step(store, assets, run_id, products, batches) if batches else {}
    results = run_shards(
        shards, store=store, deployment=settings.shard_deployment, attempts=settings.shard_attempts,
        poll_seconds=settings.shard_poll_seconds,
        run_id=run_id, campaign=spec.name, assets=assets, controls=controls, run_date=run_date, batch_total=len(batches),
    )
    gen_seconds = sum(r["seconds"] for r in results)
    images = [img for r in results for img in r["images"]]
    parts = [r["part"] for r in results]

    gallery = None
    if images:
        rows = publish.read_table(store, {"parts": parts}, "generations").to_dict("records")
        gallery = publish.run_uri(assets, run_id, "index.html")
        publish.put_text(store, gallery, render_gallery(run_id, spec.name, rows), "text/html; charset=utf-8")
    finished = datetime.now(UTC)
    row = run_row(
        run_id=run_id, campaign=spec.name,
        campaign_sha256=hashlib.sha256(spec.model_dump_json().encode()).hexdigest(),
        triggered_by=request.triggered_by, flow_run_id=str(flow_run.get_id() or ""),
        catalog=catalog, snapshot_id=state.snapshot_id, assets=assets, profile=spec.generation.profile,
        profile_revision=revision,
        device=device, dtype=dtype, started_at=started, finished_at=finished,
        duration_seconds=time.perf_counter() - clock,
        products=len(products), styles=len(styles), cells=len(cells),
        images_planned=len(jobs), images_generated=len(images), images_skipped=len(jobs) - len(todo),
        batches=len(batches), images_per_second=len(images) / gen_seconds if gen_seconds else 0.0,
        quarantined=len(state.quarantine), status="completed" if images else "nothing-new",
    )
    parts.append(publish.put_table_part(store, assets, "runs", run_date, run_id, [row]))
    manifest = {
        "schema_version": 1, "run_id": run_id, "campaign": spec.name, "created_at": finished.isoformat(),
        "parts": parts, "images": images, "gallery": gallery, "controls": controls,
        "counts": {k: row[k] for k in ("images_planned", "images_generated", "images_skipped", "batches", "quarantined")},
    }
    manifest_uri = publish.write_manifest(store, assets, run_id, manifest)
    if images:
        logger.info("run %s: published %d images in %.1f s (%.2f images/s of generation)",
                    run_id, len(images), row["duration_seconds"], row["images_per_second"])
    else:
        logger.info("run %s: nothing new: all %d images were already published", run_id, len(jobs))
    return {
        "run_id": run_id, "manifest": manifest_uri, "gallery": gallery,
        "tables": [p["uri"] for p in parts], **manifest["counts"],
        "duration_seconds": row["duration_seconds"], "images_per_second": row["images_per_second"],
    }


def summary_lines(summary: dict) -> list[str]:
    """What a person wants to read when a run ends."""
    lines = [f"run {summary['run_id']}: {summary['images_generated']} images generated, "
             f"{summary['images_skipped']} already published, {summary['quarantined']} catalog objects quarantined "
             f"({summary['duration_seconds']:.1f} s, {summary['images_per_second']:.2f} images/s)"]
    lines += [f"  table:    {t}" for t in summary["tables"]]
    if summary["gallery"]:
        lines.append(f"  gallery:  {summary['gallery']}")
    lines.append(f"  manifest: {summary['manifest']}")
    return lines

