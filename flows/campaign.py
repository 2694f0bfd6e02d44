"""The campaign flow: catalog -> plan -> controls -> shards -> selection, tables, sheets, gallery -> manifest (last)."""

from __future__ import annotations

import contextlib
import hashlib
import secrets
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from adapters.catalog import campaigns
from adapters.infra import lake
from adapters.infra.settings import Settings, get_settings
from adapters.infra.storage import S3Store
from adapters.model.engine import load_in_background
from adapters.steps import claims, conditioning
from adapters.steps.run_outputs import Reports
from catalogs.models import CHANNEL_AXIS, Campaign, ModelProfile, Product, RunRequest, RunSummary, StyleSet
from flows import reports, steps
from flows.artifacts import ProgressArtifact
from flows.catalog import catalog_for_run
from flows.dispatch import Generated, run_shards
from flows.progress import Progress
from flows.review import start_review
from flows.shard import ShardRuntime
from tasks.catalog_build import CatalogState
from tasks.consistency import spread_columns
from tasks.estimate import RunShape, estimate_generation
from tasks.finish import with_finishes
from tasks.layout import AssetsLayout, CatalogLayout, RunLayout
from tasks.matrix import Cell
from tasks.plan import Job, ModelIdentity, ShardContext, maskless_products
from tasks.request import narrow
from tasks.review import ReviewRequest, channel_formats, channel_marketplaces
from tasks.runs import RunRow
from tasks.select import cell_metrics
from tasks.tables import run_parameters


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


@dataclass(frozen=True)
class RunPlan:
    """What planning settles before anything is generated: the campaign as run, what it reads, every image it
    asks for and those still to make."""

    request: RunRequest
    spec: Campaign
    profile: ModelProfile
    catalog: str
    assets: AssetsLayout
    state: CatalogState
    products: list[Product]
    styles: list[StyleSet]
    left_out: dict[str, str]
    cells: list[Cell]
    identity: tuple[str, str, str]  # profile revision, dtype, device
    jobs: list[Job]
    todo: list[Job]
    started: datetime
    began: datetime  # the flow run's expected start, which every attempt of it shares (`run_began`)
    flow_run_id: str | None
    clock: float  # perf_counter at the start

    @property
    def skipped(self) -> int:
        return len(self.jobs) - len(self.todo)

    @property
    def run_date(self) -> str:
        return f"{self.began:%Y-%m-%d}"


def new_run_id(campaign: str, now: datetime, flow_run_id: str | None = None) -> str:
    """`<campaign>-<UTC time>-<6 hex>`; in a flow run, the hex is its id's last six (random in every UUID version)."""
    return f"{campaign}-{now:%Y%m%dT%H%M%SZ}-{flow_run_id.replace('-', '')[-6:] if flow_run_id else secrets.token_hex(3)}"


def run_began(now: datetime) -> tuple[datetime, str | None]:
    """When the run began, and its flow run's id: the flow run's expected start, which every attempt of it shares.

    So a campaign whose worker died, crashed and rescheduled by its deployment (flows/zombies.py), runs again as
    the same run: its claims are its own, the images it wrote are reused, its table commits land once.
    """
    flow_run_id = flow_run.get_id()
    if not flow_run_id:
        return now, None
    expected = flow_run.get_scheduled_start_time()
    if expected is None:
        return now, flow_run_id
    return min(now, datetime.fromtimestamp(expected.timestamp(), UTC)), flow_run_id


@flow(name="run-campaign")
def run_campaign(request: RunRequest) -> RunSummary:
    """Run a campaign: plan every image, generate what is not yet published, publish, commit."""
    settings = get_settings()
    store = S3Store.from_settings(settings)
    plan = plan_run(store, request, settings)
    if request.dry_run:
        return estimate_run(store, plan)
    summary = after_commit(store, plan, generate_and_commit(store, plan, settings), settings)
    get_run_logger().info(summary.lines()[0])
    return summary


def plan_run(store: S3Store, request: RunRequest, settings: Settings) -> RunPlan:
    """Resolve the campaign (before the catalog or any weight), read its inputs, plan every image and find those
    not yet published; the shards' engine starts loading meanwhile when they run in this process."""
    started, clock = datetime.now(UTC), time.perf_counter()
    catalog, assets = settings.catalog_uri(request.catalog), AssetsLayout.at(request.assets or settings.assets)
    spec, profile = campaigns.resolve_campaign(store, request, catalog, settings.profile)
    if not request.dry_run and not settings.shard_workers:
        load_in_background(spec.generation.profile, settings)
    state = catalog_for_run(store, catalog, request.snapshot)
    products, styles, left_out = campaign_inputs(store, spec, request, state, catalog)
    styles = steps.auto_scales(store, assets, spec, styles)  # `ip_scale: auto`: each style set's latest scan
    cells = steps.expand(spec.matrix)
    revision, dtype, device = steps.identity(spec.generation.profile, settings)
    jobs = steps.plan(spec, products, styles, cells, ModelIdentity(revision=revision, dtype=dtype, profile=profile))
    done = steps.published(store, assets)
    began, flow_run_id = run_began(started)
    plan = RunPlan(request=request, spec=spec, profile=profile, catalog=catalog, assets=assets, state=state,
                   products=products, styles=styles, left_out=left_out, cells=cells, identity=(revision, dtype, device),
                   jobs=jobs, todo=[j for j in jobs if j.asset_id not in done], started=started, began=began, flow_run_id=flow_run_id, clock=clock)
    get_run_logger().info(
        "%s: %d products x %d style sets x %d cells x %d seeds = %d images; %d already published, %d to make",
        spec.name, len(products), len(styles), len(cells), len(spec.matrix.seed_list), len(jobs), plan.skipped,
        len(plan.todo))
    return plan


def estimate_run(store: S3Store, plan: RunPlan) -> RunSummary:
    """A dry run's summary: what a run would make, and its generation time estimated from earlier runs."""
    estimate = estimate_generation(steps.run_history(store, plan.assets), RunShape.of(plan.spec), images=len(plan.todo))
    return RunSummary(run_id=None, campaign=plan.spec.name, title=plan.spec.title, dry_run=True,
                      images_planned=len(plan.jobs), images_skipped=plan.skipped, images_to_generate=len(plan.todo),
                      quarantined=len(plan.state.quarantine), left_out=plan.left_out,
                      estimated_seconds=estimate.seconds, estimate_basis=estimate.basis)


def generate_and_commit(store: S3Store, plan: RunPlan, settings: Settings) -> RunSummary:
    """Generate the images still to make, gather and publish them, commit the run; its summary."""
    spec, todo = plan.spec, [j.asset_id for j in plan.todo]
    run = plan.assets.run(new_run_id(spec.name, plan.began, plan.flow_run_id), plan.run_date)
    run_id = run.run_id
    batches = steps.batch(plan.todo, spec.generation.batch_size)
    ctx = ShardContext(
        run=run, campaign=spec.name, batch_total=len(batches), clip_model=spec.selection.clip_model,
        controls=steps.controls(store, run, plan.products, batches, plan.profile.control_types,
                                plan.profile.adapter_images) if batches else {},
        claim_lease_seconds=settings.claim_lease_seconds, sim_seconds=plan.request.sim_seconds,
    )
    # The run's one progress reporter: its Prefect artifact and whoever listens where it started (the CLI's bar).
    progress = Progress.for_run(*([ProgressArtifact(steps.start_progress(spec.name, run_id))] if batches else []))
    shards = steps.shard(batches, plan.products, plan.styles, images_per_shard=settings.images_per_shard)
    # Stopped before its commit (SIGTERM, Ctrl-C, an error), the run hands its claims back on the way out.
    with claims_handed_back(store, run, todo):
        generated = run_shards(shards, ctx, store, settings, ShardRuntime(progress, local_copy=plan.request.local_copy))
        # Record only what this run holds the claim of as it commits: another run may have taken one over.
        owner = steps.claim_owners(store, run, todo, generated.asset_ids) if todo else {}
        generated = generated.owned_by(run_id, owner)
        out = publish_outputs(store, plan, ctx, generated)
        row = runs_row(plan, ctx, generated, out.rows, left_to={a: o for a, o in owner.items() if o not in ("", run_id)})
        summary = run_summary(store, plan, row, out)
        reports.attempt("artifacts", out.failed, steps.report_run, summary, out.rows, default=None)
        summary = summary.model_copy(update={"reports_failed": out.failed})
        tables = {"generations": out.rows, "cell_metrics": out.metrics, "finishes": out.finishes, "runs": [row.row()]}
        commit_run(store, summary, tables, generated, ctx, finished=row.finished_at)
    return summary


def runs_row(plan: RunPlan, ctx: ShardContext, generated: Generated, rows: list[dict],
             left_to: dict[str, str]) -> RunRow:
    """The run's `runs` row: what it was asked, read and ran on, and what it made (`left_to`: asset id -> the
    live run it was left to)."""
    spec, request = plan.spec, plan.request
    revision, dtype, device = plan.identity
    made = sum(r["made_by_run"] == ctx.run_id for r in rows)
    wall = generated.wall_seconds if ctx.batch_total else 0.0
    return RunRow(
        run_id=ctx.run_id, campaign=spec.name, title=spec.title,
        campaign_sha256=hashlib.sha256(spec.model_dump_json().encode()).hexdigest(),
        parameters=run_parameters(request, spec, products=[p.product_id for p in plan.products],
                                  styles=[s.style_id for s in plan.styles]),
        triggered_by=request.triggered_by, flow_run_id=str(flow_run.get_id() or ""), catalog=plan.catalog,
        snapshot_id=plan.state.snapshot_id, assets=plan.assets.root, profile=spec.generation.profile,
        profile_revision=revision, device=device, dtype=dtype, started_at=plan.started, finished_at=datetime.now(UTC),
        duration_seconds=time.perf_counter() - plan.clock, products=len(plan.products), styles=len(plan.styles),
        cells=len(plan.cells), images_planned=len(plan.jobs), images_generated=made, images_skipped=plan.skipped,
        images_taken_over=len(rows) - made, images_left_to_others=len(left_to),
        left_to_runs=tuple(sorted(set(left_to.values()))), images_selected=sum(bool(r["selected"]) for r in rows),
        images_failed=sum(r["status"] == "failed" for r in rows), batches=ctx.batch_total,
        generation_wall_seconds=wall, images_per_second=made / wall if wall else 0.0,
        quarantined=len(plan.state.quarantine), left_out=tuple(plan.left_out.items()),
        status="completed" if rows else "nothing-new", **spread_columns(rows),
    )


def run_summary(store: S3Store, plan: RunPlan, row: RunRow, out: Published) -> RunSummary:
    """What the run returns and the CLI prints: its counts as its `runs` row records them, and where it all is."""
    spec = plan.spec
    return RunSummary(
        run_id=row.run_id, campaign=spec.name, title=spec.title, images_to_generate=len(plan.todo), sheets=out.sheets,
        gallery=out.gallery, channels=tuple(spec.matrix.axes.get(CHANNEL_AXIS, ())),
        tables=tuple(plan.assets.table(t) for t in lake.RUN_TABLES),
        manifest=plan.assets.run(row.run_id, plan.run_date).manifest, left_out=plan.left_out,
        **row.summary_counts(),
    )


def after_commit(store: S3Store, plan: RunPlan, summary: RunSummary, settings: Settings) -> RunSummary:
    """After the commit: the run's local copy (`RunRequest.local_copy`), and its review, which reads the committed
    run in a flow run of its own."""
    spec, request = plan.spec, plan.request
    if request.local_copy:
        copied = steps.copy_run(store, plan.assets.run(summary.run_id, plan.run_date), Path(request.local_copy))
        summary = summary.model_copy(update={"local_copy": str(copied)})
    if spec.review.required and summary.images_generated + summary.images_taken_over:
        review = ReviewRequest(
            run_id=summary.run_id, campaign=spec.name, title=spec.title, assets=plan.assets.root,
            run_date=plan.run_date, gallery=summary.gallery, review=spec.review, delivery=spec.delivery,
            channel_delivery=channel_formats(spec), channel_marketplace=channel_marketplaces(spec))
        summary = summary.model_copy(update={"review": start_review(review, settings.review_deployment)})
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


def publish_outputs(store: S3Store, plan: RunPlan, ctx: ShardContext, generated: Generated) -> Published:
    """Gates, duplicates and ranks across the run; then the finished images, cell metrics, sheets and gallery
    built on them. A sheet or gallery that fails never stops the commit (flows/reports.py): it is named in
    `Published.failed`. What the run writes is also written into its local copy, where it has one."""
    spec, local_copy, failed = plan.spec, plan.request.local_copy, {}
    if not generated.parts:
        return Published()
    rows = steps.select_run(store, generated.parts, spec.selection, generated.asset_ids)
    if not rows:
        return Published()
    metrics = cell_metrics(rows, run_id=ctx.run_id, campaign=spec.name)
    # After selection: the chosen images to their delivery size, products pasted back, marketplace checks.
    finishes = steps.finish_images(store, ctx, spec, plan.products, rows, copy_to=local_copy)
    shown = with_finishes(rows, finishes)
    made = Reports(run=ctx.run, campaign=spec.name, title=spec.title, local_copy=local_copy)
    sheets = reports.attempt("contact-sheets", failed, steps.write_sheets, store, made, shown, plan.products, plan.styles,
                             ctx.controls, default={})
    sheets |= reports.attempt("overview", failed, steps.write_overview, store, made, rows, default={})
    gallery = reports.attempt("gallery", failed, steps.write_gallery, store, made, shown, sheets, left_out=plan.left_out,
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
        "tables": [c.entry() for c in committed.values()], "images": [*generated.images.to_pylist(), *finished_images],
        "gallery": summary.gallery, "sheets": summary.sheets, "controls": ctx.controls,
        "reports_failed": summary.reports_failed,
        "counts": summary.model_dump(include={"images_planned", "images_generated", "images_skipped",
                                              "images_selected", "images_failed", "batches", "quarantined"}),
    })
