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

from adapters import catalog_io, conditioning, publish
from adapters.settings import get_settings
from adapters.storage import S3Store
from catalogs import load_profiles, parse_campaign
from catalogs.models import Product, RunRequest
from flows import steps
from flows.catalog import catalog_for_run
from flows.dispatch import run_shards
from tasks.canny import canvas_kinds, canvas_name
from tasks.plan import Batch, maskless_products
from tasks.request import apply_request, narrow
from tasks.tables import run_parameters, run_row


def prepare_controls(store: S3Store, assets: str, run_id: str, products: Sequence[Product], batches: Sequence[Batch],
                     control_types: Sequence[str] = ("canny",), adapter_images: Sequence[str] = ("style",)) -> dict[str, str]:
    """Control images (and preserve mode's canvas and keep-mask), once per product and canvas: computed
    here, stored with the run under their canvas names."""
    by_id = {p.product_id: p for p in products}
    controls: dict[str, str] = {}
    for b in batches:
        kinds = [k for k in canvas_kinds(b.params, control_types, adapter_images)
                 if canvas_name(b.product_id, b.params, k) not in controls]
        if not kinds:
            continue
        for kind, image in conditioning.product_canvases(store, by_id[b.product_id], b.params, kinds).items():
            name = canvas_name(b.product_id, b.params, kind)
            controls[name] = publish.run_uri(assets, run_id, "controls", name)
            store.put(controls[name], publish.encode_png(image), content_type="image/png")
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
    profile = load_profiles()[spec.generation.profile]
    steps.check_controls(spec, profile)  # before the catalog is read, let alone any weight
    state = catalog_for_run(store, catalog, request.snapshot)
    for q in state.quarantine:
        logger.warning("quarantined %s: %s", q.key, q.reason)
    products, styles = narrow(request, *steps.choose(spec, state.products, state.styles))
    cells = steps.expand(spec.matrix)
    revision, dtype, device = steps.identity(spec.generation.profile, settings)
    for reason in maskless_products(spec, products).values():
        logger.warning(reason)
    if spec.generation.negative_reference:
        negative = conditioning.read_reference(store, spec.generation.negative_reference, catalog)
        styles = conditioning.with_negative_reference(styles, negative)
    jobs = steps.plan(spec, products, styles, cells, profile_revision=revision, dtype=dtype, profile=profile)
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
    controls = controls_step(store, assets, run_id, products, batches, profile.control_types,
                             profile.adapter_images) if batches else {}
    progress = steps.start_progress(spec.name, run_id) if batches else None
    generation_clock = time.perf_counter()
    results = run_shards(
        shards, store=store, deployment=settings.shard_deployment, attempts=settings.shard_attempts,
        poll_seconds=settings.shard_poll_seconds,
        run_id=run_id, campaign=spec.name, assets=assets, controls=controls, run_date=run_date, batch_total=len(batches),
        clip_model=spec.selection.clip_model, progress=progress,
    )
    if progress:
        steps.advance_progress(progress, 1.0)  # every shard has finished, whatever order their batches ran in
    # Wall time of the whole generation phase, not the sum of the shards' times: parallel workers count once.
    gen_wall = time.perf_counter() - generation_clock
    images = [img for r in results for img in r["images"]]
    parts = [r["part"] for r in results]

    # Gates, duplicates and ranks across the run; then the tables, sheets and gallery built on them.
    rows, sheets, gallery = [], {}, None
    if images:
        rows, parts = steps.select_run(store, parts, spec.selection)
        parts.append(steps.write_cell_metrics(store, assets, run_date, run_id, spec.name, rows))
        sheets = steps.write_sheets(store, assets, run_id, rows, products, styles, controls)
        gallery = steps.write_gallery(store, assets, run_id, spec.name, rows, sheets, [p["uri"] for p in parts])
    finished = datetime.now(UTC)
    row = run_row(
        run_id=run_id, campaign=spec.name,
        campaign_sha256=hashlib.sha256(spec.model_dump_json().encode()).hexdigest(),
        parameters=run_parameters(request, spec, products=[p.product_id for p in products],
                                  styles=[s.style_id for s in styles]),
        triggered_by=request.triggered_by, flow_run_id=str(flow_run.get_id() or ""),
        catalog=catalog, snapshot_id=state.snapshot_id, assets=assets, profile=spec.generation.profile,
        profile_revision=revision,
        device=device, dtype=dtype, started_at=started, finished_at=finished,
        duration_seconds=time.perf_counter() - clock,
        products=len(products), styles=len(styles), cells=len(cells),
        images_planned=len(jobs), images_generated=len(images), images_skipped=len(jobs) - len(todo),
        images_selected=sum(bool(r["selected"]) for r in rows), images_failed=sum(r["status"] == "failed" for r in rows),
        batches=len(batches), generation_wall_seconds=gen_wall if batches else 0.0,
        images_per_second=len(images) / gen_wall if batches and gen_wall else 0.0,
        quarantined=len(state.quarantine), status="completed" if images else "nothing-new",
    )
    parts.append(publish.put_table_part(store, assets, "runs", run_date, run_id, [row]))
    manifest = {
        "schema_version": 2, "run_id": run_id, "campaign": spec.name, "created_at": finished.isoformat(),
        "parts": parts, "images": images, "gallery": gallery, "sheets": sheets, "controls": controls,
        "counts": {k: row[k] for k in ("images_planned", "images_generated", "images_skipped", "images_selected",
                                       "images_failed", "batches", "quarantined")},
    }
    steps.report_run(spec.name, run_id, rows, gallery=gallery, sheets=sheets, tables=[p["uri"] for p in parts],
                     manifest=publish.run_uri(assets, run_id, publish.MANIFEST))
    manifest_uri = publish.write_manifest(store, assets, run_id, manifest)
    if images:
        logger.info("run %s: published %d images in %.1f s (%.2f images/s over the generation phase)",
                    run_id, len(images), row["duration_seconds"], row["images_per_second"])
    else:
        logger.info("run %s: nothing new: all %d images were already published", run_id, len(jobs))
    return {
        "run_id": run_id, "manifest": manifest_uri, "gallery": gallery, "sheets": sheets,
        "tables": [p["uri"] for p in parts], **manifest["counts"],
        "duration_seconds": row["duration_seconds"], "images_per_second": row["images_per_second"],
    }


def summary_lines(summary: dict) -> list[str]:
    """What a person wants to read when a run ends."""
    lines = [f"run {summary['run_id']}: {summary['images_generated']} images generated, "
             f"{summary['images_skipped']} already published, {summary['quarantined']} catalog objects quarantined "
             f"({summary['duration_seconds']:.1f} s, {summary['images_per_second']:.2f} images/s)"]
    if summary["images_generated"]:
        lines.append(f"  selected: {summary['images_selected']} images (top k per product), "
                     f"{summary['images_failed']} failed; contact sheets: {len(summary['sheets'])}")
    lines += [f"  table:    {t}" for t in summary["tables"]]
    if summary["gallery"]:
        lines.append(f"  gallery:  {summary['gallery']}")
    lines.append(f"  manifest: {summary['manifest']}")
    return lines

