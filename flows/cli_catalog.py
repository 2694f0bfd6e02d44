"""`stylematrix catalog ...`: import materials, refresh the snapshot, list what the catalog holds."""

from __future__ import annotations

import time
from collections.abc import Sequence
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from adapters.infra.settings import get_settings
from flows.cli_errors import CATALOG_URI, USER_ERRORS, fail

catalog_app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,  # plain help: see cli.py
                          help="The catalog: import materials, refresh its snapshot, list products, styles and quarantine.")


class EntryKind(StrEnum):
    products = "products"
    styles = "styles"


CatalogOption = Annotated[str | None, typer.Option(callback=CATALOG_URI, help="s3://bucket[/prefix] of the catalog (default STYLEMATRIX_CATALOG)")]


def _store_for(catalog: str | None):
    """The S3 store and catalog URI, failing with one line when the catalog's bucket is unusable."""
    from adapters.infra.storage import S3Store

    settings = get_settings()
    catalog = settings.catalog_uri(catalog)
    store = S3Store.from_settings(settings)
    store.check_reachable(catalog)
    return store, catalog


@catalog_app.command("import")
def import_(
    source: Annotated[Path, typer.Argument(metavar="FOLDER", help="local folder: products/<id>/ and styles/<id>/, or loose images")],
    catalog: CatalogOption = None,
    as_kind: Annotated[EntryKind | None, typer.Option(
        "--as", help="for a folder of loose images: each image is one product, or one style set")] = None,
) -> None:
    """Upload a folder of materials; files already in the catalog unchanged are not uploaded again."""
    from adapters.catalog.importing import import_folder

    try:
        store, catalog = _store_for(catalog)
        report = import_folder(store, source, catalog, as_kind=as_kind.value if as_kind else None)
    except USER_ERRORS as exc:
        fail(exc)
    for line in report.refused:
        typer.echo(f"  refused: {line}", err=True)
    typer.echo(f"imported {source} into {catalog}: {report.products} products, {report.styles} style sets; "
               f"{len(report.uploaded)} files uploaded, {len(report.unchanged)} unchanged, {len(report.refused)} refused")
    if report.uploaded:
        from flows.catalog import CATALOG_IMPORTED, announce_import

        payload = {"uploaded": len(report.uploaded), "products": report.products, "styles": report.styles}
        if announce_import(catalog, payload):
            typer.echo(f"emitted {CATALOG_IMPORTED}: the catalog-refresh deployment commits a new snapshot")
        else:
            typer.echo("run `stylematrix catalog refresh` to commit a snapshot that campaigns will read")


@catalog_app.command()
def refresh(
    catalog: CatalogOption = None,
    full: Annotated[bool, typer.Option(help="read every object again, trusting nothing from the last snapshot")] = False,
) -> None:
    """Read what changed since the last snapshot, validate it, and commit a new snapshot (a Prefect flow run)."""

    start = time.perf_counter()
    try:
        _, catalog = _store_for(catalog)
        from flows.catalog import refresh_catalog

        report = refresh_catalog(catalog=catalog, full=full)
    except USER_ERRORS as exc:
        fail(exc)
    state = "committed" if report["written"] else "unchanged, still"
    typer.echo(f"catalog {catalog}: snapshot {report['snapshot_id']} {state} (previous: {report['previous_id'] or 'none'})")
    typer.echo("  objects: {listed} listed, {fetched} fetched, {skipped} skipped (unchanged), {unread} unread, "
               "{removed} removed".format(**report))
    typer.echo("  entries: {products} products, {styles} style sets, {quarantined} quarantined, "
               "{duplicates} duplicate images".format(**report))
    typer.echo(f"  wall time: {time.perf_counter() - start:.1f} s")


@catalog_app.command("ls")
def ls(
    catalog: CatalogOption = None,
    snapshot: Annotated[str | None, typer.Option(help="snapshot id (default: the latest)")] = None,
) -> None:
    """Print the products, style sets and quarantined objects of a snapshot."""
    from adapters.catalog import snapshots

    try:
        store, catalog = _store_for(catalog)
        chosen = snapshot or snapshots.latest_snapshot_id(store, catalog)
        if chosen is None:
            raise FileNotFoundError(f"catalog {catalog} has no snapshot yet: run `stylematrix catalog refresh`")
        info = snapshots.read_snapshot_info(store, catalog, chosen)
        rows = {t: snapshots.read_snapshot_rows(store, catalog, chosen, t) for t in ("products", "styles", "quarantine")}
    except USER_ERRORS as exc:
        fail(exc)
    root = catalog + "/"
    typer.echo(f"catalog {catalog}, snapshot {chosen} (committed {info['created_at']})")

    def rel(uri: str | None) -> str:
        return "-" if uri is None else uri.removeprefix(root)

    def duplicate(r: dict) -> str:
        return f"{r['duplicate_kind']} duplicate of {rel(r['duplicate_of'])}" if r["duplicate_of"] else "-"

    typer.echo(f"\nproducts ({len(rows['products'])})")
    typer.echo(_table(["id", "size", "mode", "mask", "title", "tags", "duplicate"], [
        [r["product_id"], f"{r['width']}x{r['height']}", r["mode"], r["mask_source"], r["title"],
         ",".join(r["tags"]) or "-", duplicate(r)] for r in rows["products"]]))
    typer.echo(f"\nstyles ({len({r['style_id'] for r in rows['styles']})} sets, {len(rows['styles'])} references)")
    typer.echo(_table(["id", "reference", "weight", "size", "mode", "duplicate"], [
        [r["style_id"], rel(r["key"]).rsplit("/", 1)[-1], f"{r['weight']:g}", f"{r['width']}x{r['height']}", r["mode"],
         duplicate(r)] for r in rows["styles"]]))
    typer.echo(f"\nquarantine ({len(rows['quarantine'])})")
    typer.echo(_table(["object", "reason"], [[rel(r["key"]), r["reason"]] for r in rows["quarantine"]]))


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Plain fixed-width columns; the last column is not padded, so long reasons wrap naturally."""
    if not rows:
        return "  (none)"
    widths = [max(len(str(x)) for x in column) for column in zip(headers, *rows, strict=True)]
    lines = []
    for row in [headers, *rows]:
        cells = [str(x).ljust(w) for x, w in zip(row[:-1], widths[:-1], strict=True)] + [str(row[-1])]
        lines.append("  " + "  ".join(cells).rstrip())
    return "\n".join(lines)
