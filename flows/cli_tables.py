"""`stylematrix tables ...`: the Delta tables as the data team reads and keeps them (adapters/steps/lake_ops.py)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import typer

from adapters.infra.settings import get_settings
from flows.cli_errors import ASSETS_URI, USER_ERRORS, fail

tables_app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,  # plain help: see cli.py
                         help="The metadata tables (Delta Lake under <assets>/tables/): query, history, compact, "
                              "vacuum, migrate.")

ASSETS_HELP = "s3://bucket[/prefix] of the outputs (default STYLEMATRIX_ASSETS)"


def _lake(assets: str | None):
    from adapters.infra import lake
    from adapters.infra.storage import S3Store
    from tasks.layout import AssetsLayout

    settings = get_settings()
    layout = AssetsLayout.at(assets or settings.assets)
    store = S3Store.from_settings(settings)
    store.check_reachable(layout.root)
    return store, layout, lake.Lake.of(store, layout)


def _tables(table: str | None) -> list[str]:
    from tasks.tables import TABLES

    if table is not None and table not in TABLES:
        raise ValueError(f"--table {table!r}: not one of {', '.join(TABLES)}")
    return [table] if table else list(TABLES)


@tables_app.command()
def query(
    sql: Annotated[str, typer.Argument(help="DuckDB SQL over the tables, each by its name: generations, cell_metrics, "
                                            "runs, reviews, deliveries, style_scans")],
    as_of_run: Annotated[str | None, typer.Option(help="read the tables as that run's commit left them")] = None,
    as_of: Annotated[str | None, typer.Option(help="read the tables as they were at this UTC time (ISO 8601)")] = None,
    assets: Annotated[str | None, typer.Option(callback=ASSETS_URI, help=ASSETS_HELP)] = None,
) -> None:
    """Run SQL over the committed rows and print them tab-separated, with a header line."""
    from adapters.steps import lake_ops

    try:
        if as_of_run and as_of:
            raise ValueError("--as-of-run and --as-of: give one of them")
        store, assets, tables = _lake(assets)
        versions, when = lake_ops.versions_of_run(store, assets.run(as_of_run)) if as_of_run else ({}, None)
        moment = datetime.fromisoformat(as_of) if as_of else when
        result = lake_ops.query(tables, sql, versions=versions, as_of=moment)
    except USER_ERRORS as exc:
        fail(exc)
    if result.columns:
        typer.echo(lake_ops.describe(result.columns))
    for row in result.rows:
        typer.echo(lake_ops.describe(row))


@tables_app.command()
def history(
    table: Annotated[str, typer.Argument(help="table name")],
    limit: Annotated[int, typer.Option(min=1, help="newest commits to show")] = 20,
    assets: Annotated[str | None, typer.Option(callback=ASSETS_URI, help=ASSETS_HELP)] = None,
) -> None:
    """The table's newest commits: version, time, operation, the commit's name (run:<run_id>, ...) and rows added."""
    from adapters.steps import lake_ops

    try:
        (name,) = _tables(table)
        _, _, tables = _lake(assets)
        entries = lake_ops.history(tables, name, limit)
    except USER_ERRORS as exc:
        fail(exc)
    typer.echo(lake_ops.describe(("version", "timestamp", "operation", "commit", "rows")))
    for e in entries:
        typer.echo(lake_ops.describe(e.values()))


@tables_app.command()
def compact(
    table: Annotated[str | None, typer.Option(help="one table (default: every table)")] = None,
    target_mb: Annotated[float, typer.Option(min=1, help="target file size in MB")] = 128.0,
    assets: Annotated[str | None, typer.Option(callback=ASSETS_URI, help=ASSETS_HELP)] = None,
) -> None:
    """Rewrite small files into files of about --target-mb, per run_date partition, in one commit per table."""
    from adapters.steps import lake_ops

    try:
        names = _tables(table)
        _, _, tables = _lake(assets)
        for name in names:
            done = lake_ops.compact(tables, name, int(target_mb * 1e6))
            typer.echo(f"{name}: {done.files_before} files -> {done.files_after} in {done.partitions} partitions"
                       + (f" (version {done.version})" if done.version is not None else " (no table yet)"))
    except USER_ERRORS as exc:
        fail(exc)


@tables_app.command()
def vacuum(
    retention_hours: Annotated[int, typer.Option(min=0, help="keep every file a version younger than this needs: time "
                                                            "travel reaches back this far (default a week)")] = 168,
    table: Annotated[str | None, typer.Option(help="one table (default: every table)")] = None,
    dry_run: Annotated[bool, typer.Option(help="list what would be deleted; delete nothing")] = False,
    assets: Annotated[str | None, typer.Option(callback=ASSETS_URI, help=ASSETS_HELP)] = None,
) -> None:
    """Delete files no recent version needs: those compaction replaced and those of commits that never landed."""
    from adapters.steps import lake_ops

    verb = "would delete" if dry_run else "deleted"
    try:
        names = _tables(table)
        _, _, tables = _lake(assets)
        for name in names:
            gone = lake_ops.vacuum(tables, name, retention_hours, dry_run=dry_run)
            typer.echo(f"{name}: {verb} {len(gone)} files older than {retention_hours} h that no newer version needs")
    except USER_ERRORS as exc:
        fail(exc)


@tables_app.command()
def migrate(assets: Annotated[str | None, typer.Option(callback=ASSETS_URI, help=ASSETS_HELP)] = None) -> None:
    """Convert a schema-7 bucket (parquet parts and manifests) to Delta tables in place; safe to run again."""
    from adapters.steps import lake_ops

    try:
        store, assets, _ = _lake(assets)
        done = lake_ops.migrate(store, assets)
    except USER_ERRORS as exc:
        fail(exc)
    for name in done.commits:
        typer.echo(f"{name}: {done.commits[name]} commits, {done.rows[name]} rows")
    typer.echo(f"{assets.root}: migrated; removed {len(done.removed)} parts now in the tables; left {len(done.left)} parts "
               "of runs that never committed (`stylematrix gc` removes them)")
