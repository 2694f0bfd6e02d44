"""The campaign flow: catalog -> plan -> controls -> shards -> selection, tables, sheets, gallery -> manifest (last)."""

from __future__ import annotations

import contextlib
import hashlib
import secrets
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from adapters.catalog import campaigns
from adapters.infra import lake
from adapters.infra.settings import get_settings
from adapters.infra.storage import S3Store
from adapters.model.engine import load_in_background
from adapters.steps import claims, conditioning
from adapters.steps.run_outputs import Reports
from catalogs.models import CHANNEL_AXIS, Campaign, Product, RunRequest, RunSummary, StyleSet
from flows import reports, steps
from flows.catalog import catalog_for_run
from flows.dispatch import Generated, run_shards
from flows.review import start_review
from tasks.catalog_build import CatalogState
from tasks.consistency import spread_columns
from tasks.estimate import estimate_generation
from tasks.finish import with_finishes
from tasks.layout import AssetsLayout, CatalogLayout, RunLayout
from tasks.plan import ShardContext, maskless_products
from tasks.request import narrow
from tasks.review import ReviewRequest, channel_formats, channel_marketplaces
from tasks.select import cell_metrics
from tasks.tables import channels_as_written, run_parameters, run_row


@dataclass(frozen=True)
class Published:
    """What the gather hands to the commit: the rows of the run's tables (each image with its outcome, the cell
    metrics, the finished images) and the reports made, or why each that failed did."""

    rows: list[dict] = field(default_factory=list)
    metrics: list[dict] = field(default_factory=list)
    finishes: list[dict] = field(default_factory=list)
    sheets: dict[str, str] = field(default_factory=dict)
    gallery: str | None = None
    failed: dict[str, str] = field(default_factory=dict)


def new_run_id(campaign: str, now: datetime) -> str:
    return f"{campaign}-{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


@flow(name="run-campaign")
def run_campaign(request: RunRequest) -> RunSummary:
    """Run a campaign: plan every image, generate what is not yet published, publish, commit."""
    logger = get_run_logger()
    settings = get_settings()
    store = S3Store.from_settings(settings)
    started, clock = datetime.now(UTC), time.perf_counter()
    catalog, assets = request.catalog or settings.catalog, AssetsLayout.at(request.assets or settings.assets)

    spec, profile = campaigns.resolve_campaign(store, request, catalog, settings.profile)  # before the catalog or any weight
    if not request.dry_run and not settings.shard_workers:  # the shards run here: load their engine meanwhile
        load_in_background(spec.generation.profile, settings)
    state = catalog_for_run(store, catalog, request.snapshot)
    products, styles, left_out = campaign_inputs(store, spec, request, state, catalog)
    styles = steps.auto_scales(store, assets, spec, styles)  # `ip_scale: auto`: each style set's latest scan
    cells = steps.expand(spec.matrix)
    revision, dtype, device = steps.identity(spec.generation.profile, settings)
    jobs = steps.plan(spec, products, styles, cells, profile_revision=revision, dtype=dtype, profile=profile)
    done = steps.published(store, assets)
    todo = [j for j in jobs if j.asset_id not in done]
    logger.info("%s: %d products x %d style sets x %d cells x %d seeds = %d images; %d already published, %d to make",
                spec.name, len(products), len(styles), len(cells), len(spec.matrix.seed_list), len(jobs),
                len(jobs) - len(todo), len(todo))
    if request.dry_run:
        g = spec.generation
        estimate = estimate_generation(steps.run_history(store, assets), images=len(todo), profile=g.profile,
                                       width=g.width, height=g.height, steps=g.steps,
                                       channels=channels_as_written(spec))
        return RunSummary(run_id=None, campaign=spec.name, title=spec.title, dry_run=True, images_planned=len(jobs),
                          images_skipped=len(jobs) - len(todo), images_to_generate=len(todo),
                          quarantined=len(state.quarantine), left_out=left_out,
                          estimated_seconds=estimate.seconds, estimate_basis=estimate.basis)

    run = assets.run(new_run_id(spec.name, started), f"{started:%Y-%m-%d}")
    run_id = run.run_id
    batches = steps.batch(todo, spec.generation.batch_size)
    ctx = ShardContext(
        run=run, campaign=spec.name, batch_total=len(batches),
        controls=steps.controls(store, run, products, batches, profile.control_types,
                                profile.adapter_images) if batches else {},
        clip_model=spec.selection.clip_model,
        progress=steps.start_progress(spec.name, run_id) if batches else None,
        claim_lease_seconds=settings.claim_lease_seconds,
        local_copy=request.local_copy,
        sim_seconds=request.sim_seconds,
    )
    shards = steps.shard(batches, products, styles, images_per_shard=settings.images_per_shard)
    # Stopped before its commit (SIGTERM, Ctrl-C, an error), the run hands its claims back on the way out.
    with claims_handed_back(store, run, [j.asset_id for j in todo]):
        generated = run_shards(shards, ctx, store, settings)
        # Record only what this run holds the claim of as it commits: another run may have taken one over.
        owner = steps.claim_owners(store, run, [j.asset_id for j in todo],
                                   [i["asset_id"] for i in generated.images], since=started,
                                   lease=timedelta(seconds=settings.claim_lease_seconds)) if todo else {}
        generated = generated.owned_by(run_id, owner)
        left_to = {a: o for a, o in owner.items() if o not in ("", run_id)}
        out = publish_outputs(store, ctx, spec, products, styles, generated, left_out)
        rows = out.rows
        made = sum(r["made_by_run"] == run_id for r in rows)

        row = run_row(
            run_id=run_id, campaign=spec.name, title=spec.title, campaign_sha256=hashlib.sha256(spec.model_dump_json().encode()).hexdigest(),
            parameters=run_parameters(request, spec, products=[p.product_id for p in products],
                                      styles=[s.style_id for s in styles]),
            triggered_by=request.triggered_by, flow_run_id=str(flow_run.get_id() or ""), catalog=catalog,
            snapshot_id=state.snapshot_id, assets=assets.root, profile=spec.generation.profile, profile_revision=revision,
            device=device, dtype=dtype, started_at=started, finished_at=datetime.now(UTC),
            duration_seconds=time.perf_counter() - clock, products=len(products), styles=len(styles), cells=len(cells),
            images_planned=len(jobs), images_generated=made, images_skipped=len(jobs) - len(todo),
            images_taken_over=len(rows) - made, images_left_to_others=len(left_to), left_to_runs=sorted(set(left_to.values())),
            images_selected=sum(bool(r["selected"]) for r in rows), images_failed=sum(r["status"] == "failed" for r in rows),
            batches=len(batches), generation_wall_seconds=generated.wall_seconds if batches else 0.0,
            images_per_second=made / generated.wall_seconds if batches and generated.wall_seconds else 0.0,
            quarantined=len(state.quarantine), left_out=list(left_out.items()), status="completed" if rows else "nothing-new",
            **spread_columns(rows),
        )
        tables = {"generations": rows, "cell_metrics": out.metrics, "finishes": out.finishes, "runs": [row]}
        summary = RunSummary(
            run_id=run_id, campaign=spec.name, title=spec.title, images_to_generate=len(todo), sheets=out.sheets, gallery=out.gallery,
            channels=tuple(spec.matrix.axes.get(CHANNEL_AXIS, ())),
            tables=tuple(assets.table(t) for t in lake.RUN_TABLES),
            manifest=run.manifest,
            **{k: row[k] for k in ("images_planned", "images_generated", "images_skipped", "images_selected",
                                   "images_failed", "batches", "quarantined", "duration_seconds", "images_per_second",
                                   "images_taken_over", "images_left_to_others", "left_to_runs")},
            left_out=left_out,
        )
        failed = out.failed
        reports.attempt("artifacts", failed, steps.report_run, spec.name, run_id, rows, gallery=out.gallery,
                        sheets=out.sheets, tables=summary.tables, manifest=summary.manifest, left_out=left_out,
                        title=spec.title, default=None)
        summary = summary.model_copy(update={"reports_failed": failed})
        commit_run(store, summary, tables, generated, ctx, finished=row["finished_at"])
    if request.local_copy:
        copied = steps.copy_run(store, run, Path(request.local_copy))
        summary = summary.model_copy(update={"local_copy": str(copied)})
    if spec.review.required and rows:  # after the commit: a review reads the committed run, in its own flow run
        summary = summary.model_copy(update={"review": start_review(ReviewRequest(
            run_id=run_id, campaign=spec.name, title=spec.title, assets=assets.root, run_date=run.run_date,
            gallery=out.gallery,
            review=spec.review, delivery=spec.delivery, channel_delivery=channel_formats(spec),
            channel_marketplace=channel_marketplaces(spec)),
            settings.review_deployment)})
    logger.info(summary.lines()[0])
    return summary


@contextlib.contextmanager
def claims_handed_back(store: S3Store, run: RunLayout, asset_ids: Sequence[str]) -> Iterator[None]:
    """Hand the run's claims back when it stops before committing (SIGTERM, Ctrl-C, an error), so the next
    run takes those images over at once instead of waiting out the lease."""
    try:
        yield
    except BaseException:
        try:
            released = claims.release_all(store, run, asset_ids)
            get_run_logger().warning("run %s stopped before its commit: handed back %d claims", run.run_id, released)
        except Exception as exc:  # the run is stopping anyway: say so, and let the lease expire
            get_run_logger().warning("run %s: claims not handed back (%s); they expire with their lease", run.run_id,
                                     exc)
        raise


def campaign_inputs(store: S3Store, spec: Campaign, request: RunRequest, state: CatalogState,
                    catalog: str) -> tuple[list[Product], list[StyleSet], dict[str, str]]:
    """The products and style sets the run makes images of, with the campaign's negative reference, and
    those the campaign names that are left out (missing or quarantined), with why.

    Raises ValueError when the run is strict and something named is left out, or when nothing is left.
    """
    logger = get_run_logger()
    for q in state.quarantine:
        logger.warning("quarantined %s: %s", q.key, q.reason)
    strict = spec.strict if request.strict is None else request.strict
    products, styles, left_out = steps.choose(spec, state.products, state.styles, state.quarantine, strict=strict)
    for what, why in left_out.items():
        logger.warning("left out %s: %s", what, why)
    products, styles = narrow(request, products, styles)
    for reason in maskless_products(spec, products).values():
        logger.warning(reason)
    if spec.generation.negative_reference:
        negative = steps.read_reference(store, spec.generation.negative_reference, CatalogLayout.at(catalog))
        styles = conditioning.with_negative_reference(styles, negative)
    return products, styles, left_out


def publish_outputs(store: S3Store, ctx: ShardContext, spec: Campaign, products: Sequence[Product],
                    styles: Sequence[StyleSet], generated: Generated,
                    left_out: dict[str, str]) -> Published:
    """Gates, duplicates and ranks across the run; then the finished images, cell metrics, sheets and gallery
    built on them. A sheet or gallery that fails never stops the commit (flows/reports.py): it is named in
    `Published.failed`."""
    failed: dict[str, str] = {}
    if not generated.parts:
        return Published()
    rows = steps.select_run(store, generated.parts, spec.selection, [i["asset_id"] for i in generated.images])
    if not rows:
        return Published()
    metrics = cell_metrics(rows, run_id=ctx.run_id, campaign=spec.name)
    # After selection: the chosen images to their delivery size, products pasted back, marketplace checks.
    finishes = steps.finish_images(store, ctx, spec, products, rows)
    shown = with_finishes(rows, finishes)
    made = Reports(run=ctx.run, campaign=spec.name, title=spec.title, local_copy=ctx.local_copy)
    sheets = reports.attempt("contact-sheets", failed, steps.write_sheets, store, made, shown, products, styles,
                             ctx.controls, default={})
    sheets |= reports.attempt("overview", failed, steps.write_overview, store, made, rows, default={})
    gallery = reports.attempt("gallery", failed, steps.write_gallery, store, made, shown, sheets, left_out=left_out,
                              default=None)
    return Published(rows, metrics, finishes, sheets, gallery, failed)


def commit_run(store: S3Store, summary: RunSummary, tables: dict[str, list[dict]], generated: Generated,
               ctx: ShardContext, *, finished: datetime) -> None:
    """The commit: the run's rows into the Delta tables, one commit per table (`runs` last), each named for
    the run so a retry never lands twice; then the manifest, which records the run's files (its finished
    images included) and the table versions its commits made."""
    committed = steps.commit_tables(lake.Lake.of(store, ctx.run.assets), summary.run_id, ctx.run.run_date, tables)
    finished_images = [{"asset_id": f["asset_id"], "uri": f["output_key"], "sha256": f["sha256"]}
                       for f in tables.get("finishes", ())]
    steps.write_manifest(store, ctx.run, {
        "schema_version": 3, "run_id": summary.run_id, "campaign": summary.campaign, "created_at": finished.isoformat(),
        "assets": ctx.run.assets.root, "run_date": ctx.run.run_date, "left_out": summary.left_out,
        "tables": [c.entry() for c in committed.values()], "images": [*generated.images, *finished_images],
        "gallery": summary.gallery, "sheets": summary.sheets, "controls": ctx.controls,
        "reports_failed": summary.reports_failed,
        "counts": summary.model_dump(include={"images_planned", "images_generated", "images_skipped",
                                              "images_selected", "images_failed", "batches", "quarantined"}),
    })
