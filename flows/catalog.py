"""The catalog refresh flow: list, read only what changed, commit a snapshot, tell Prefect.

A deployment (prefect.yaml: `catalog-refresh`) runs it on a schedule; campaign runs read the
snapshot it commits. When a refresh commits a new snapshot it emits the Prefect event
`stylematrix.catalog.updated`, which an automation or a deployment trigger can react to.
`stylematrix catalog import` emits `stylematrix.catalog.imported` when it uploaded files, and
the `catalog-refresh` deployment triggers on it, so a refresh follows an import at once.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.events import emit_event

from adapters.infra.settings import get_settings
from adapters.infra.storage import S3Store
from catalogs.uris import CatalogUri
from flows import steps
from tasks.catalog_build import CatalogState

CATALOG_UPDATED = "stylematrix.catalog.updated"
CATALOG_IMPORTED = "stylematrix.catalog.imported"


def catalog_resource(catalog: str) -> dict[str, str]:
    """The Prefect resource of a catalog (as `Settings.catalog_uri` writes it): one id per catalog, whatever event
    is about it."""
    return {"prefect.resource.id": f"stylematrix.catalog.{catalog}", "prefect.resource.name": catalog}


def announce_import(catalog: str, payload: dict) -> bool:
    """Tell the Prefect server that files were imported into `catalog`; False when none is configured.

    Without PREFECT_API_URL there is no server whose deployments could react, and emitting
    would start an ephemeral API only to drop the event.
    """
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        return False
    emit_event(event=CATALOG_IMPORTED, resource=catalog_resource(catalog), payload=payload)
    return True


@flow(name="refresh-catalog")
def refresh_catalog(catalog: CatalogUri | None = None, full: bool = False) -> dict:
    """Refresh the catalog's snapshot (default: the STYLEMATRIX_CATALOG setting).

    `full` reads every object again instead of trusting the latest snapshot's records.
    """
    logger = get_run_logger()
    settings = get_settings()
    catalog = settings.catalog_uri(catalog)  # one catalog, one event resource id
    store = S3Store.from_settings(settings)

    previous = steps.previous_snapshot(store, catalog, full=full)
    scan = steps.scan_catalog(store, catalog, previous.records if previous else None)
    report = steps.write_snapshot(store, catalog, scan, previous)

    for q in scan.state.quarantine:
        logger.warning("quarantined %s: %s", q.key, q.reason)
    logger.info("catalog %s: listed %d objects, fetched %d, skipped %d unchanged, %d unread, %d removed; "
                "%d products, %d style sets, %d quarantined, %d duplicates",
                catalog, report.listed, report.fetched, report.skipped, report.unread, report.removed,
                report.products, report.styles, report.quarantined, report.duplicates)
    if not report.written:
        logger.info("catalog %s: unchanged since snapshot %s", catalog, report.snapshot_id)
        return report.payload()

    logger.info("catalog %s: committed snapshot %s", catalog, report.snapshot_id)
    emit_event(event=CATALOG_UPDATED, resource=catalog_resource(catalog), payload=report.payload())
    create_markdown_artifact(key="catalog-snapshot", markdown=_summary(report.payload(), scan.state),
                             description=f"catalog snapshot {report.snapshot_id}")
    return report.payload()


def catalog_for_run(store: S3Store, catalog: str, snapshot: str | None) -> CatalogState:
    """The catalog state a run reads: the named snapshot, else the latest, else (none yet) a fresh refresh's.

    A product or style set whose images were overwritten or deleted since the snapshot is
    quarantined for this run, like any bad input: reading the new bytes under the old sha256
    would make the run irreproducible.
    """
    if snapshot in (None, "", "latest") and steps.latest_snapshot(store, catalog) is None:
        refresh_catalog(catalog=catalog)
    return steps.load_snapshot(store, catalog, snapshot, verify=True)


def _summary(counts: dict, state: CatalogState) -> str:
    lines = [f"# Catalog snapshot `{counts['snapshot_id']}`", "",
             "| listed | fetched | skipped | unread | removed | products | style sets | quarantined | duplicates |",
             "|---|---|---|---|---|---|---|---|---|",
             "| " + " | ".join(str(counts[k]) for k in ("listed", "fetched", "skipped", "unread", "removed",
                                                       "products", "styles", "quarantined", "duplicates")) + " |"]
    if state.quarantine:
        lines += ["", "## Quarantine", "", "| object | reason |", "|---|---|"]
        lines += [f"| `{q.key}` | {q.reason.replace('|', '/')} |" for q in state.quarantine[:200]]
    return "\n".join(lines) + "\n"
