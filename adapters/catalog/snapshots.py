"""Catalog snapshots: the catalog's state as parquet, written by a refresh, read by campaign runs.

Where they live is `tasks.layout.CatalogLayout`'s: one parquet file per snapshot table (products: one row
per catalogued product; styles: one row per reference image of a style set; quarantine: what was left
out, and why; objects: every listed object and what inspecting it found), then the snapshot's record
(the commit), then `LATEST`, the id of the newest committed snapshot.

A snapshot is immutable once committed, so a run that names one reads the catalog exactly as
it was. `objects.parquet` is what makes a refresh incremental: an object whose ETag and size
are unchanged keeps its record and is not downloaded again.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

import pyarrow as pa

from adapters.catalog.scan import Scan, list_catalog, scan_catalog
from adapters.infra.parquet_io import arrow_schema, parquet_bytes, read_parquet_bytes
from adapters.infra.storage import ObjectStore
from tasks import layout
from tasks.catalog_build import CatalogState, ObjectRecord, without_changed
from tasks.catalog_rules import RULES_VERSION
from tasks.layout import CatalogLayout
from tasks.snapshot_tables import (
    SNAPSHOT_TABLES,
    counts,
    new_snapshot_id,
    records_from_rows,
    snapshot_rows,
    state_from_rows,
)

__all__ = [
    "Previous",
    "RefreshReport",
    "changed_since",
    "latest_snapshot_id",
    "load_snapshot",
    "previous_snapshot",
    "read_snapshot_info",
    "read_snapshot_rows",
    "refresh",
    "snapshot_ids",
    "write_snapshot",
]

SNAPSHOT_SCHEMA_VERSION = 1

@dataclass(frozen=True)
class Previous:
    """The newest committed snapshot, and its object records when a refresh may trust them.

    `digest` is the inventory digest it committed (None when it was made under other rules):
    a full refresh that lists the same inventory commits nothing new.
    """

    snapshot_id: str
    records: dict[str, ObjectRecord] | None
    digest: str | None = None


@dataclass(frozen=True)
class RefreshReport:
    """What a refresh did. `written` is False when nothing changed since `previous_id`,
    in which case `snapshot_id` is that unchanged snapshot."""

    catalog: str
    snapshot_id: str
    previous_id: str | None
    written: bool
    listed: int
    fetched: int
    skipped: int
    unread: int
    removed: int
    products: int
    styles: int
    quarantined: int
    duplicates: int

    def payload(self) -> dict[str, object]:
        """The report as plain JSON-ready data (event payloads, flow results)."""
        return asdict(self)


# --------------------------------------------------------------------------- reading


def latest_snapshot_id(store: ObjectStore, catalog: str) -> str | None:
    """The id in `_snapshots/LATEST`, or None when the catalog has never been refreshed."""
    try:
        text = store.get(CatalogLayout.at(catalog).latest).decode("utf-8").strip()
    except FileNotFoundError:
        return None
    return text or None


def read_snapshot_info(store: ObjectStore, catalog: str, snapshot_id: str) -> dict:
    """The commit record of a snapshot; FileNotFoundError naming the known ids when there is none."""
    if "/" in snapshot_id or snapshot_id in ("", ".", ".."):
        raise ValueError(f"{snapshot_id!r} is not a snapshot id (e.g. 20261125T110356Z-1a2b3c4d)")
    try:
        return json.loads(store.get(CatalogLayout.at(catalog).snapshot_commit(snapshot_id)))
    except FileNotFoundError:
        known = snapshot_ids(store, catalog)
        hint = f"; known: {', '.join(known[-5:])}" if known else "; it has none yet (run `stylematrix catalog refresh`)"
        raise FileNotFoundError(f"catalog {catalog} has no snapshot {snapshot_id!r}{hint}") from None


def read_snapshot_rows(store: ObjectStore, catalog: str, snapshot_id: str, table: str) -> list[dict]:
    """The rows of one snapshot table as plain dicts."""
    data = store.get(CatalogLayout.at(catalog).snapshot(snapshot_id, table))
    return read_parquet_bytes(data).to_pylist()


def load_snapshot(store: ObjectStore, catalog: str, snapshot_id: str | None = None, *,
                  verify: bool = False) -> CatalogState:
    """The catalog state a snapshot recorded: the named one, else the latest.

    With `verify` (what a run reads), every product and style set whose images are no longer
    the bytes the snapshot recorded is moved to quarantine (see `changed_since`).

    Raises FileNotFoundError when there is no such snapshot (or none at all).
    """
    chosen = snapshot_id if snapshot_id not in (None, "", "latest") else latest_snapshot_id(store, catalog)
    if chosen is None:
        raise FileNotFoundError(f"catalog {catalog} has no snapshot yet: run `stylematrix catalog refresh`")
    read_snapshot_info(store, catalog, chosen)  # only committed snapshots are read
    rows = {table: read_snapshot_rows(store, catalog, chosen, table) for table in ("products", "styles", "quarantine")}
    state = state_from_rows(rows, catalog, chosen)
    return without_changed(state, changed_since(store, catalog, state)) if verify else state


def changed_since(store: ObjectStore, catalog: str, state: CatalogState) -> dict[str, str]:
    """The images of `state` (product photos, masks, references) that are no longer what its
    snapshot recorded, by URI, each with a one-line reason.

    One listing compares every ETag and size with the snapshot's `objects` records; only an
    object whose ETag or size moved is downloaded, and it counts as changed when its sha256
    differs (a re-upload of the same bytes is no change).
    """
    recorded = records_from_rows(read_snapshot_rows(store, catalog, state.snapshot_id, "objects"))
    listed = dict(list_catalog(store, catalog))
    root = catalog.rstrip("/") + "/"
    used = [u for p in state.products for u in (p.image_key, p.mask_key) if u]
    used += [r.key for s in state.styles for r in s.references]
    changed = {}
    for uri in used:
        key = uri.removeprefix(root)
        record, now = recorded.get(key), listed.get(key)
        if record is None or (now is not None and (now.etag, now.size) == (record.etag, record.size)):
            continue
        try:
            same = now is not None and hashlib.sha256(store.get(now.uri)).hexdigest() == record.sha256
        except FileNotFoundError:  # deleted since the listing
            same = False
        if not same:
            what = "changed" if now is not None else "was deleted"
            changed[uri] = f"{key} {what} since snapshot {state.snapshot_id}: refresh the catalog"
    return changed


def previous_snapshot(store: ObjectStore, catalog: str, *, full: bool = False) -> Previous | None:
    """The latest snapshot; its records are offered for reuse unless `full` or the rules changed since."""
    latest = latest_snapshot_id(store, catalog)
    if latest is None:
        return None
    info = read_snapshot_info(store, catalog, latest)
    if info.get("rules_version") != RULES_VERSION:
        return Previous(latest, None)
    digest = info.get("inventory_sha256")
    if full:
        return Previous(latest, None, digest)
    return Previous(latest, records_from_rows(read_snapshot_rows(store, catalog, latest, "objects")), digest)


# --------------------------------------------------------------------------- writing


def write_snapshot(store: ObjectStore, catalog: str, scan: Scan, previous: Previous | None, *,
                   now: datetime | None = None) -> RefreshReport:
    """Commit `scan` as a new snapshot and point LATEST at it, unless nothing changed since `previous`.

    Nothing changed when the scan's inventory digest (every key, ETag and size, and the rules
    version) is the one `previous` committed, however the scan was made (`--full` included).
    """
    now = now or datetime.now(UTC)
    if previous is None:
        written = True
    elif previous.records is not None:
        written = scan.changed
    else:  # a full refresh, or other rules: compare with what the previous snapshot committed
        written = previous.digest is None or scan.digest != previous.digest
    snapshot_id = previous.snapshot_id if previous and not written else new_snapshot_id(now, scan.digest)
    report = RefreshReport(
        catalog=catalog, snapshot_id=snapshot_id, previous_id=previous.snapshot_id if previous else None,
        written=written, listed=scan.listed, fetched=scan.fetched, skipped=scan.skipped, unread=scan.unread,
        removed=scan.removed, **counts(scan.state),
    )
    if not written:
        return report
    files = {}
    for table, rows in snapshot_rows(scan.state, scan.records).items():
        uri = CatalogLayout.at(catalog).snapshot(snapshot_id, table)
        store.put(uri, _parquet(table, rows), content_type="application/vnd.apache.parquet")
        files[table] = uri
    commit = {
        "schema_version": SNAPSHOT_SCHEMA_VERSION, "snapshot_id": snapshot_id, "catalog": catalog,
        "created_at": now.isoformat(), "rules_version": RULES_VERSION,
        "inventory_sha256": scan.digest, "files": files, **report.payload(),
    }
    try:
        store.put(CatalogLayout.at(catalog).snapshot_commit(snapshot_id), json.dumps(commit, indent=2, sort_keys=True).encode(),
                  content_type="application/json", if_absent=True)
    except FileExistsError:
        pass  # the same inventory committed within the same second: identical tables, same snapshot
    store.put(CatalogLayout.at(catalog).latest, f"{snapshot_id}\n".encode(), content_type="text/plain")
    return report


def refresh(store: ObjectStore, catalog: str, *, full: bool = False, workers: int = 8) -> RefreshReport:
    """List, diff against the latest snapshot, read what changed, and commit a new snapshot if anything did."""
    previous = previous_snapshot(store, catalog, full=full)
    scan = scan_catalog(store, catalog, previous.records if previous else None, workers=workers)
    return write_snapshot(store, catalog, scan, previous)


def _parquet(table: str, rows: list[dict]) -> bytes:
    return parquet_bytes(pa.Table.from_pylist(rows, schema=arrow_schema(SNAPSHOT_TABLES[table])))


def snapshot_ids(store: ObjectStore, catalog: str) -> list[str]:
    """Every committed snapshot id of the catalog, oldest first."""
    prefix = CatalogLayout.at(catalog).snapshots
    return sorted(o.uri[len(prefix):].split("/")[0] for o in store.list(prefix)
                  if o.uri.endswith("/" + layout.SNAPSHOT_COMMIT))
