"""Operating the Delta tables: SQL over them (DuckDB), time travel, compaction, vacuum, and the migration
of a schema-7 bucket (parquet parts + `_MANIFEST.json`) into Delta tables in place.

DuckDB reads each table through `deltalake`'s Arrow dataset of the chosen version: only the files that
version's log names, so nothing a dead run left and nothing a commit is still writing. No DuckDB
extension is needed (the `delta` extension is the alternative where it can be installed).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import pyarrow as pa

from adapters.infra import lake
from adapters.infra.parquet_io import read_parquet_bytes
from adapters.infra.storage import ObjectStore
from adapters.steps import publish
from tasks import layout
from tasks.layout import AssetsLayout, RunLayout
from tasks.tables import TABLES

DEFAULT_RETENTION_HOURS = 168  # a week, Delta's own default: time travel reaches back at least this far
DEFAULT_TARGET_BYTES = 128 << 20  # compaction's target file size (delta-rs's default is 100 MiB)


@dataclass(frozen=True)
class Result:
    """A query's answer: column names and rows."""

    columns: tuple[str, ...]
    rows: list[tuple]


def versions_of_run(store: ObjectStore, run: RunLayout) -> tuple[dict[str, int], datetime]:
    """The table versions a run's commit made (from its manifest) and when it committed.

    Raises FileNotFoundError (one line) for a run that never committed.
    """
    try:
        manifest = publish.read_manifest(store, run)
    except FileNotFoundError:
        raise FileNotFoundError(f"run {run.run_id!r}: not committed ({run.manifest} is missing)") from None
    versions = {t["table"]: t["version"] for t in manifest.get("tables", []) if t.get("version") is not None}
    return versions, datetime.fromisoformat(manifest["created_at"])


def query(tables: lake.Lake, sql: str, *, versions: dict[str, int] | None = None,
          as_of: datetime | None = None) -> Result:
    """Run `sql` in DuckDB with every table it names registered under that name (`generations`, `runs`, ...).

    `versions` pins tables to a version (the others are read `as_of`, else at their newest).
    Raises ValueError (one line) for SQL DuckDB refuses.
    """
    import duckdb

    con = duckdb.connect()
    for name in (t for t in TABLES if re.search(rf"\b{t}\b", sql)):  # only the tables the SQL names: each costs a log read
        version = (versions or {}).get(name)
        con.register(name, lake.dataset(tables, name, version=version, as_of=None if version is not None else as_of))
    try:
        cursor = con.execute(sql)
    except duckdb.Error as exc:
        raise ValueError(f"query: {str(exc).splitlines()[0]}") from None
    if cursor is None or cursor.description is None:
        return Result((), [])
    return Result(tuple(d[0] for d in cursor.description), cursor.fetchall())


def files_per_partition(tables: lake.Lake, table: str) -> dict[str, int]:
    """run_date -> the number of data files the table's newest version names there."""
    dt = lake.open_table(tables, table)
    if dt is None:
        return {}
    actions = pa.table(dt.get_add_actions(flatten=True))
    counts: dict[str, int] = defaultdict(int)
    for day in actions.column(f"partition.{lake.PARTITION}").to_pylist():
        counts[str(day)] += 1
    return dict(sorted(counts.items()))


@dataclass(frozen=True)
class Compacted:
    table: str
    files_before: int
    files_after: int
    partitions: int
    version: int | None


def compact(tables: lake.Lake, table: str, target_bytes: int = DEFAULT_TARGET_BYTES) -> Compacted:
    """Rewrite the table's small files into files of about `target_bytes`, partition by partition, in one
    commit (readers keep their version; the old files go at the next vacuum past the retention)."""
    before = files_per_partition(tables, table)
    dt = lake.open_table(tables, table)
    if dt is None:
        return Compacted(table, 0, 0, 0, None)
    dt.optimize.compact(target_size=target_bytes)
    after = files_per_partition(tables, table)
    return Compacted(table, sum(before.values()), sum(after.values()), len(after), lake.version(tables, table))


def vacuum(tables: lake.Lake, table: str, retention_hours: int = DEFAULT_RETENTION_HOURS,
           dry_run: bool = False) -> list[str]:
    """Delete the files no version younger than `retention_hours` needs (replaced by compaction, or written
    by a commit that never landed); returns them. Time travel to versions older than that stops working."""
    dt = lake.open_table(tables, table)
    if dt is None:
        return []
    return list(dt.vacuum(retention_hours=retention_hours, dry_run=dry_run, enforce_retention_duration=False,
                          full=True))


# --------------------------------------------------------------------------- migration from schema 7

_PART = re.compile(rf"/{layout.TABLES}/(?P<table>[a-z_]+)/run_date=(?P<day>\d{{4}}-\d{{2}}-\d{{2}})/(?P<name>[^/]+)\.parquet$")
_DELTA_FILE = re.compile(r"^part-\d{5}-")


@dataclass(frozen=True)
class Migrated:
    """What a migration committed (table -> commits) and removed, and the parts it left to `gc`."""

    commits: dict[str, int]
    rows: dict[str, int]
    removed: tuple[str, ...]
    left: tuple[str, ...]  # parts of runs that never committed: not table rows; `stylematrix gc` removes them


def legacy_parts(store: ObjectStore, assets: AssetsLayout) -> list[tuple[str, str, str, str]]:
    """The schema-7 parquet parts under the tables' root: (table, run_date, part name, URI)."""
    found = []
    for info in store.list(assets.tables + "/"):
        match = _PART.search(info.uri)
        if match and match["table"] in TABLES and not _DELTA_FILE.match(match["name"]):
            found.append((match["table"], match["day"], match["name"], info.uri))
    return found


def migrate(store: ObjectStore, assets: AssetsLayout) -> Migrated:
    """Commit every committed schema-7 part's rows to its Delta table, then remove the part.

    A run's parts are one commit per table named `run:<run_id>` (as a run commits today), a review's
    `review:<run_id>--<review_id>`, a scan's `scan:<scan_id>`: running the migration again, or after a
    failure half-way, commits nothing twice. Columns added since schema 7 are null in migrated rows.
    """
    tables = lake.Lake.of(store, assets)
    manifested = {p["uri"]: m["run_id"] for m in publish.read_manifests(store, assets) for p in m.get("parts", [])}
    groups: dict[tuple[str, str, str], list[str]] = defaultdict(list)
    left = []
    for table, day, name, uri in legacy_parts(store, assets):
        txn = _legacy_txn(store, assets, table, name, uri, manifested)
        if txn is None:
            left.append(uri)
        else:
            groups[(table, day, txn)].append(uri)
    commits: dict[str, int] = defaultdict(int)
    rows: dict[str, int] = defaultdict(int)
    removed = []
    for (table, day, txn), uris in sorted(groups.items()):
        part_rows = [_widened(table, r) for uri in uris for r in read_parquet_bytes(store.get(uri)).to_pylist()]
        done = lake.commit(tables, table, part_rows, run_date=day, txn=txn)
        commits[table] += not done.again
        rows[table] += 0 if done.again else len(part_rows)
        for uri in uris:
            store.delete(uri)
            removed.append(uri)
    return Migrated(dict(commits), dict(rows), tuple(removed), tuple(sorted(left)))


def _legacy_txn(store: ObjectStore, assets: AssetsLayout, table: str, name: str, uri: str,
                manifested: dict[str, str]) -> str | None:
    """The commit name a legacy part's rows take, or None for a part nobody committed."""
    if table in lake.RUN_TABLES:
        return lake.run_txn(manifested[uri]) if uri in manifested else None
    if table in ("reviews", "deliveries"):  # written once, complete, after the run committed
        return f"review:{name}"
    scan = read_parquet_bytes(store.get(uri)).to_pylist()[:1]
    if scan and store.exists(assets.scan(scan[0]["style_id"], name).commit):
        return f"scan:{name}"
    return None


def _widened(table: str, row: dict) -> dict:
    """A schema-7 row with every column the table has now (nulls for those added since)."""
    return {c.name: row.get(c.name) for c in TABLES[table]}


def history(tables: lake.Lake, table: str, limit: int = 20) -> list[dict]:
    """The table's newest commits: version, time, operation and the commit's name (`run:<run_id>`, ...)."""
    dt = lake.open_table(tables, table)
    if dt is None:
        return []
    return [{"version": e["version"], "timestamp": datetime.fromtimestamp(e["timestamp"] / 1000, tz=UTC).isoformat(),
             "operation": e.get("operation"), "commit": e.get(lake.TXN_KEY, ""),
             "rows": (e.get("operationMetrics") or {}).get("num_added_rows")}
            for e in dt.history(limit)]


def describe(values: Sequence) -> str:
    """A result row as one tab-separated line."""
    return "\t".join("" if v is None else str(v) for v in values)
