"""The `stylematrix` command line."""

from __future__ import annotations

import contextlib
import gc as pygc  # `gc` is a command below
import sys
import threading
import time
from pathlib import Path
from typing import Annotated

import typer

from adapters.infra.settings import export_s3_endpoint, get_settings, prepare_runtime_env
from catalogs.models import RunRequest, RunSummary
from flows.cli_catalog import catalog_app
from flows.cli_errors import ASSETS_URI, CATALOG_URI, USER_ERRORS, fail
from flows.cli_style import style_app
from flows.cli_tables import tables_app
from flows.progress import terminal_progress
from tasks.layout import GALLERY, AssetsLayout

prepare_runtime_env()  # before Prefect is imported anywhere below

# rich_markup_mode=None: help text is plain text, so `s3://bucket[/prefix]` is not read as a markup tag.
app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None, help="Style-matrix image campaigns: IP-Adapter + ControlNet on S3 catalogs.")
app.add_typer(catalog_app, name="catalog")
app.add_typer(style_app, name="style")
app.add_typer(tables_app, name="tables")


def _start_prefect_api() -> threading.Thread:
    """Start Prefect's temporary API server in the background, when no PREFECT_API_URL names one.

    A flow run outside a Prefect server starts that server first (several seconds: a new process
    imports Prefect's server and opens its database). Started here, it boots in its own process
    while this one imports torch and reads the campaign; `join()` the thread before the flow
    starts. A server that fails to start here is started again by the flow, which reports why.
    """

    def start() -> None:
        from prefect.settings import get_current_settings

        prefect = get_current_settings()
        if prefect.api.url or not prefect.server.ephemeral.enabled:
            return
        from prefect.server.api.server import SubprocessASGIServer

        with contextlib.suppress(Exception):
            SubprocessASGIServer().start()

    thread = threading.Thread(target=start, name="prefect-api", daemon=True)
    thread.start()
    return thread


def _finish(summary: RunSummary, out_dir: Path, elapsed: float) -> None:
    for line in summary.lines():
        typer.echo(line)
    if summary.local_copy:
        typer.echo(f"  local copy: {summary.local_copy}/ (also {out_dir / 'latest'})")
        if summary.gallery:
            typer.echo(f"  open:     {Path(summary.local_copy) / GALLERY}")
    if not summary.dry_run:
        typer.echo(f"  wall time: {elapsed:.1f} s")


@app.command()
def run(
    campaign: Annotated[str, typer.Option(help="campaign YAML: a local path, an s3:// URI, or a name under <catalog>/campaigns/")],
    catalog: Annotated[str | None, typer.Option(callback=CATALOG_URI, help="s3://bucket[/prefix] of the catalog (default STYLEMATRIX_CATALOG)")] = None,
    assets: Annotated[str | None, typer.Option(callback=ASSETS_URI, help="s3://bucket[/prefix] for outputs (default STYLEMATRIX_ASSETS)")] = None,
    profile: Annotated[str | None, typer.Option(help="model profile, overriding the campaign's (tiny, sd15, ...)")] = None,
    snapshot: Annotated[str | None, typer.Option(help="catalog snapshot id to read (default: the latest)")] = None,
    dry_run: Annotated[bool, typer.Option(help="plan only: images to make and an estimate of their generation time")] = False,
) -> None:
    """Run a campaign against the configured S3 endpoint and model profile."""
    from adapters.catalog import campaigns
    from adapters.infra.storage import S3Store

    start = time.perf_counter()
    settings = get_settings()
    catalog, assets = settings.catalog_uri(catalog), assets or settings.assets
    try:
        store = S3Store.from_settings(settings)
        store.check_reachable(catalog)  # an endpoint that is down fails here, before Prefect starts
        store.check_reachable(assets)
        request = RunRequest(campaign=campaigns.campaign_uri(campaign, catalog), catalog=catalog, assets=assets,
                             profile=profile, snapshot=snapshot, dry_run=dry_run, local_copy=str(settings.out_dir),
                             triggered_by="cli")
        campaigns.resolve_campaign(store, request, catalog, settings.profile)  # a bad spec fails before Prefect starts
        api = _start_prefect_api()  # it boots while torch, diffusers and the flow are imported
        from flows.campaign import run_campaign

        api.join()
        with terminal_progress():  # a live bar in a terminal; plain log lines elsewhere
            summary = run_campaign(request)
    except USER_ERRORS as exc:
        fail(exc)
    _finish(summary, settings.out_dir, time.perf_counter() - start)


@app.command()
def demo() -> None:
    """Start an embedded S3 server, seed the sample catalog, run the sample campaign, stop the server."""
    from adapters.catalog.sample import seed_sample_catalog
    from adapters.infra.local_s3 import LocalS3Server
    from adapters.infra.storage import S3Store, split_uri
    from adapters.model.kit import ensure_tiny_kit

    start = time.perf_counter()
    api = _start_prefect_api()
    with LocalS3Server() as server:
        export_s3_endpoint(server.endpoint)
        settings = get_settings()
        typer.echo(f"embedded S3 server: {server.endpoint}")
        store = S3Store.from_settings(settings)
        for uri in (settings.catalog, settings.assets):
            store.ensure_bucket(split_uri(uri)[0])
        counts = seed_sample_catalog(store, settings.catalog)
        typer.echo(f"sample catalog: {counts} at {settings.catalog}")
        kit = ensure_tiny_kit(settings.model_cache)
        typer.echo(f"model kit 'tiny': {kit}")
        from flows.campaign import run_campaign

        api.join()
        try:
            with terminal_progress():
                summary = run_campaign(RunRequest(campaign="sample", catalog=settings.catalog, assets=settings.assets,
                                                  profile="tiny", local_copy=str(settings.out_dir),
                                                  triggered_by="demo"))
        except USER_ERRORS as exc:
            fail(exc)
        _finish(summary, settings.out_dir, time.perf_counter() - start)
    typer.echo("embedded S3 server stopped")


@app.command()
def seed(catalog: Annotated[str | None, typer.Option(callback=CATALOG_URI, help="s3://bucket[/prefix] to seed (default STYLEMATRIX_CATALOG)")] = None) -> None:
    """Write the sample catalog (products, style sets, the sample campaign) to an S3 catalog."""
    from adapters.catalog.sample import seed_sample_catalog
    from adapters.infra.storage import S3Store

    settings = get_settings()
    catalog = settings.catalog_uri(catalog)
    try:
        store = S3Store.from_settings(settings)
        store.check_reachable(catalog)
        typer.echo(f"sample catalog: {seed_sample_catalog(store, catalog)} at {catalog}")
    except USER_ERRORS as exc:
        fail(exc)


@app.command()
def gc(
    assets: Annotated[str | None, typer.Option(callback=ASSETS_URI, help="s3://bucket[/prefix] of the outputs (default STYLEMATRIX_ASSETS)")] = None,
    older_than_hours: Annotated[float, typer.Option(min=0, help="only runs that have written nothing for this long")] = 24.0,
    dry_run: Annotated[bool, typer.Option(help="list what would be removed; remove nothing")] = False,
) -> None:
    """Remove what runs that never committed left behind (images no later run took over, staged rows, claims).

    A committed run's objects are never touched; nor is an image whose row is committed (a later run took it
    over), nor anything a committed manifest names: those are listed as kept.
    """
    from datetime import timedelta

    from adapters.infra.storage import S3Store
    from adapters.steps.gc import collect_garbage

    settings = get_settings()
    assets = assets or settings.assets
    try:
        store = S3Store.from_settings(settings)
        store.check_reachable(assets)
        report = collect_garbage(store, AssetsLayout.at(assets), older_than=timedelta(hours=older_than_hours), dry_run=dry_run)
    except USER_ERRORS as exc:
        fail(exc)
    verb = "would remove" if dry_run else "removed"
    for uri in report.objects:
        typer.echo(f"  {verb}: {uri}")
    for uri in report.kept:
        typer.echo(f"  kept: {uri} (a committed row records it)")
    typer.echo(f"{assets}: {len(report.runs)} abandoned runs ({', '.join(report.runs) or 'none'}); {verb} "
               f"{len(report.objects)} objects, {report.bytes / 1e6:.1f} MB; kept {len(report.kept)} objects of "
               "those runs that committed rows record (images another run took over)")


@app.command()
def report(
    run_id: Annotated[str, typer.Argument(help="a committed run's id")],
    assets: Annotated[str | None, typer.Option(callback=ASSETS_URI, help="s3://bucket[/prefix] of the outputs (default STYLEMATRIX_ASSETS)")] = None,
) -> None:
    """Make a committed run's contact sheets and gallery again from its tables (after a report failed)."""
    from adapters.infra.storage import S3Store
    from flows.reports import remake_reports

    settings = get_settings()
    assets = assets or settings.assets
    try:
        store = S3Store.from_settings(settings)
        store.check_reachable(assets)
        made = remake_reports(store, AssetsLayout.at(assets).run(run_id))
    except USER_ERRORS as exc:
        fail(exc)
    typer.echo(f"run {run_id}: {len(made['sheets'])} contact sheets and the gallery made again")
    typer.echo(f"  gallery:  {made['gallery']}")


def deployment_names() -> list[str]:
    """The deployments `serve` registers: every one in prefect.yaml, in its order."""
    import yaml

    spec = yaml.safe_load((Path(__file__).resolve().parents[1] / "prefect.yaml").read_text())
    return [d["name"] for d in spec.get("deployments") or []]


@app.command()
def serve(
    gpus: Annotated[int, typer.Option(min=1, help="GPU workers to start (one per GPU, each keeping its model loaded)")] = 1,
    port: Annotated[int, typer.Option(help="port of the Prefect server and UI on 127.0.0.1")] = 4200,
    home: Annotated[Path, typer.Option(help="PREFECT_HOME of the local server: its PostgreSQL cluster (unless PREFECT_API_DATABASE_CONNECTION_URL names a database) and logs")] = Path(".prefect"),
) -> None:
    """Start a local Prefect server with the UI, the work pools, every deployment and the workers.

    Without an S3 endpoint configured, an embedded S3 server is started and seeded with the sample catalog.
    """
    from adapters.catalog.sample import seed_sample_catalog
    from adapters.infra.local_s3 import LocalS3Server
    from adapters.infra.settings import child_env
    from adapters.infra.storage import S3Store, split_uri
    from flows.serve import PrefectStack, start_stack

    settings = get_settings()
    with contextlib.ExitStack() as stack:
        if settings.s3_endpoint is None:
            server = stack.enter_context(LocalS3Server())
            export_s3_endpoint(server.endpoint)
            settings = get_settings()
            store = S3Store.from_settings(settings)
            for uri in (settings.catalog, settings.assets):
                store.ensure_bucket(split_uri(uri)[0])
            seed_sample_catalog(store, settings.catalog)
            typer.echo(f"embedded S3 server: {server.endpoint} (sample catalog at {settings.catalog})")
        try:
            database = settings.prefect_database_url or _start_postgres(stack, home.resolve() / "postgres")
            prefect = start_stack(PrefectStack(home=home.resolve(), port=port, env=child_env(),
                                               log_dir=home.resolve() / "logs", database_url=database),
                                  gpus=gpus, task_storage=AssetsLayout.at(settings.assets).task_storage)
        except (RuntimeError, TimeoutError, OSError) as exc:
            fail(exc)
        stack.callback(prefect.stop)
        typer.echo(f"Prefect UI: http://127.0.0.1:{port}  (deployments: {', '.join(deployment_names())})")
        typer.echo(f"workers: cpu-1, {', '.join(f'gpu-{i + 1}' for i in range(gpus))}, gpu-scans; logs in {home / 'logs'}")
        typer.echo("press Ctrl-C to stop (SIGTERM and SIGHUP stop it too)")
        try:
            while all(p.poll() is None for p in prefect.processes.values()):
                time.sleep(1)
            dead = [n for n, p in prefect.processes.items() if p.poll() is not None]
            fail(RuntimeError(f"{', '.join(dead)} exited; see {home / 'logs'}"))
        except KeyboardInterrupt:
            typer.echo("stopping")


def _start_postgres(stack: contextlib.ExitStack, folder: Path) -> str:
    """The project's own PostgreSQL cluster under `folder` (created on first use), stopped with `stack`."""
    from adapters.infra.local_s3 import free_port
    from adapters.infra.postgres import LocalPostgres

    postgres = LocalPostgres(folder, free_port())
    stack.callback(postgres.stop)
    postgres.start()
    typer.echo(f"PostgreSQL: {folder} on 127.0.0.1:{postgres.port}")
    return postgres.url


def main() -> None:
    from adapters.infra.processes import signals_interrupt

    try:
        with signals_interrupt():  # SIGTERM, SIGHUP: the same way out as Ctrl-C, stopping what we started
            app()
    except KeyboardInterrupt:
        typer.echo("stylematrix: interrupted", err=True)
        sys.exit(130)
    finally:
        # The process ends here: spare the interpreter's last collections over every object torch,
        # diffusers and Prefect made (about 2 s after a run; the OS takes the memory back anyway).
        pygc.freeze()


if __name__ == "__main__":
    main()
