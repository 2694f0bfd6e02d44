"""The metadata tables as Delta Lake tables: one commit per table per run, readers that see only commits.

Every table of `tasks.tables.TABLES` lives at `<assets>/tables/<name>/` (tasks/layout.py), a Delta table written with
delta-rs (`deltalake`: no JVM, no lock service; S3 conditional writes decide between writers that
commit at once) and partitioned by `run_date`. Why Delta and not our own parts + manifest: every
reader that speaks Delta (DuckDB, Spark, Athena, Trino, pandas through `deltalake`) sees exactly the
committed rows, and nothing a dead run left behind; a hand-written protocol is followed only by our
own code.

What makes a commit safe to repeat: each carries a Delta app transaction (`txn`) named for what it
commits (`run:<run_id>`, `review:<run_id>--<review_id>`, `scan:<scan_id>`). Before writing, the commit
looks the name up in the table; a commit whose answer was lost (it landed, the caller saw an error) is
found there and not written again. Two writers of the same name at once: Delta's conflict check lets
one land and refuses the other, which then finds the first. Writers of different names both land
(delta-rs retries the loser against the new version).

Schemas come from `tasks.tables` (the one source of truth) plus the `run_date` partition column.
Columns only ever get added: every append merges its schema into the table's (`schema_mode="merge"`),
so a column added to `tasks.tables` appears in the table with its first write, nulls before.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.dataset as ds
from deltalake import DeltaTable, WriterProperties, write_deltalake
from deltalake.exceptions import CommitFailedError, DeltaError, TableNotFoundError
from deltalake.transaction import CommitProperties, Transaction

from adapters.infra.parquet_io import arrow_schema
from tasks.layout import AssetsLayout
from tasks.rows import Rows
from tasks.tables import TABLES, to_frame

if TYPE_CHECKING:
    from adapters.infra.storage import S3Store

PARTITION = "run_date"
TXN_KEY = "stylematrix.txn"  # commit metadata: the app transaction a commit carried, to find its version
COMMIT_ATTEMPTS = 5
# What a commit names in the history it searches for its own version: far more than commit at once.
HISTORY_WINDOW = 200
BATCH_ROWS = 8192  # rows cast to the table's types at a time as a commit writes them, and per row group
# A commit's files are closed at this size: delta-rs holds a file's rows until it closes it, so a run's
# 100,000 rows in one file held them all (docs/benchmarks.md, "Memory after generation").
FILE_BYTES = 32 << 20


@dataclass(frozen=True)
class Lake:
    """Where the tables live (`AssetsLayout.table`) and how delta-rs reaches them."""

    assets: AssetsLayout
    options: dict[str, str]

    @classmethod
    def of(cls, store: S3Store, assets: AssetsLayout) -> Lake:
        """The lake under `assets`, reached through the same endpoint and region as `store`."""
        return cls(assets=assets, options=store.storage_options())

    def uri(self, table: str) -> str:
        if table not in TABLES:
            raise ValueError(f"table {table!r}: not one of {', '.join(TABLES)}")
        return self.assets.table(table)


@dataclass(frozen=True)
class Committed:
    """One table's commit of a run (or review, or scan): the version it made visible and its rows."""

    table: str
    uri: str
    version: int | None  # None: nothing to commit (no rows)
    rows: int
    again: bool = False  # the commit had landed before (a retry after a lost answer): nothing written now

    def entry(self) -> dict:
        """As `_MANIFEST.json` lists it."""
        return {"table": self.table, "uri": self.uri, "version": self.version, "rows": self.rows}


def table_schema(table: str) -> pa.Schema:
    """The Delta table's schema: the columns of `tasks.tables` and the `run_date` partition column."""
    return arrow_schema(TABLES[table]).append(pa.field(PARTITION, pa.date32()))


def arrow_rows(table: str, rows: Sequence[dict] | Rows, run_date: str | date) -> pa.Table:
    """`rows` as an Arrow table of `table`'s columns, every row in partition `run_date`.

    Rows already in Arrow (`tasks.rows.Rows`, as a run's `generations` rows are) are taken as they are, not
    copied through Python; their repeated strings stay dictionary-encoded (`commit_arrow` casts them to the
    table's schema a batch at a time)."""
    schema = arrow_schema(TABLES[table])
    if isinstance(rows, Rows):
        data = rows.table.select(schema.names)
    else:
        data = pa.Table.from_pandas(to_frame(table, rows), schema=schema, preserve_index=False)
    day = date.fromisoformat(run_date) if isinstance(run_date, str) else run_date
    return data.append_column(pa.field(PARTITION, pa.date32()), pa.array([day] * data.num_rows, pa.date32()))


def in_batches(data: pa.Table, schema: pa.Schema) -> pa.RecordBatchReader:
    """`data` in `schema`, cast a batch of BATCH_ROWS at a time: a run's rows are never copied whole."""
    return pa.RecordBatchReader.from_batches(
        schema, (batch.cast(schema) for batch in data.to_batches(max_chunksize=BATCH_ROWS)))


def open_table(lake: Lake, table: str, version: int | None = None, as_of: datetime | None = None) -> DeltaTable | None:
    """The Delta table (at `version`, or as it was at `as_of`), or None when nothing was ever committed to it."""
    try:
        dt = DeltaTable(lake.uri(table), storage_options=lake.options, version=version)
    except TableNotFoundError:
        return None
    if as_of is not None:
        moment = as_of if as_of.tzinfo else as_of.replace(tzinfo=UTC)
        if moment.timestamp() * 1000 < (dt.metadata().created_time or 0):  # nothing was committed yet then
            return None
        dt.load_as_version(moment)
    return dt


def landed_version(lake: Lake, table: str, txn: str) -> int | None:
    """The version a commit named `txn` made in `table`, or None when no such commit is in the table.

    delta-rs numbers `history()` from the snapshot it opened while it lists the log as it is now: a
    commit landing in between shifts every number. The answer counts only when the table's version
    is the same before and after the lookup.
    """
    for _ in range(COMMIT_ATTEMPTS * 2):
        dt = open_table(lake, table)
        if dt is None or dt.transaction_version(txn) is None:
            return None
        before = dt.version()
        found = next((int(e["version"]) for e in dt.history(HISTORY_WINDOW) if e.get(TXN_KEY) == txn), None)
        after = open_table(lake, table)
        if after is not None and after.version() == before:
            return found if found is not None else before  # older than the window: it landed, before now
    return found if found is not None else before


def commit(lake: Lake, table: str, rows: Sequence[dict] | Rows, *, run_date: str | date, txn: str) -> Committed:
    """Append `rows` to `table` in one Delta commit named `txn`, unless a commit of that name already landed.

    Raises ValueError for rows that do not fit the table's schema; CommitFailedError when the commit
    still conflicts after COMMIT_ATTEMPTS tries.
    """
    if not rows:
        return Committed(table, lake.uri(table), None, 0)
    return commit_arrow(lake, table, arrow_rows(table, rows, run_date), txn=txn)


def commit_arrow(lake: Lake, table: str, data: pa.Table, *, txn: str) -> Committed:
    """`commit` for rows already in Arrow, with `table_schema(table)`'s columns (the `run_date` column filled),
    in its types or types that cast to them."""
    uri = lake.uri(table)
    written = False
    for attempt in range(1, COMMIT_ATTEMPTS + 1):
        if (version := landed_version(lake, table, txn)) is not None:
            return Committed(table, uri, version, data.num_rows, again=not written)
        try:
            write_deltalake(uri, in_batches(data, table_schema(table)), mode="append", partition_by=[PARTITION], schema_mode="merge",
                            storage_options=lake.options, target_file_size=FILE_BYTES,
                            writer_properties=WriterProperties(max_row_group_size=BATCH_ROWS),
                            commit_properties=CommitProperties(app_transactions=[Transaction(app_id=txn, version=1)],
                                                               custom_metadata={TXN_KEY: txn}))
        except (CommitFailedError, DeltaError, OSError):
            # Someone committed the same name at once (then the next look finds it), or the table was
            # created under us; a lost answer looks the same. Look again before trying again.
            if attempt == COMMIT_ATTEMPTS:
                raise
            time.sleep(0.05 * attempt)
            continue
        written = True
        if (version := landed_version(lake, table, txn)) is not None:
            return Committed(table, uri, version, data.num_rows)
        # Written, yet not in the table's log: another writer's commit of the same version replaced its log
        # entry (a store whose conditional put is not atomic under concurrent writers, as the embedded S3
        # server's). Never report a commit without its version: look again, and write again if it is not there.
        time.sleep(0.2 * attempt)
    raise CommitFailedError(f"{table}: commit {txn} did not land in {COMMIT_ATTEMPTS} attempts")


def read(lake: Lake, table: str, *, version: int | None = None, as_of: datetime | None = None,
         where: tuple[str, str] | None = None) -> pa.Table:
    """The committed rows of `table` (at `version` or `as_of`), optionally only those whose column `where[0]`
    equals `where[1]`; an empty table of the schema when nothing was committed yet."""
    dt = open_table(lake, table, version, as_of)
    if dt is None:
        return table_schema(table).empty_table()
    # In the calling thread: see adapters/infra/parquet_io.py for the interpreter-exit abort a thread pool risks.
    return dt.to_pyarrow_dataset().to_table(filter=ds.field(where[0]) == where[1] if where else None,
                                            use_threads=False)


def dataset(lake: Lake, table: str, *, version: int | None = None, as_of: datetime | None = None) -> ds.Dataset:
    """An Arrow dataset over the committed files of `table` (what DuckDB and pandas scan); empty before any commit."""
    dt = open_table(lake, table, version, as_of)
    if dt is None:
        return ds.dataset(table_schema(table).empty_table())
    return dt.to_pyarrow_dataset()


def column(lake: Lake, table: str, name: str) -> list:
    """One column of every committed row of `table` (the newest version)."""
    dt = open_table(lake, table)
    if dt is None:
        return []
    return dt.to_pyarrow_dataset().to_table(columns=[name], use_threads=False).column(name).to_pylist()


def version(lake: Lake, table: str) -> int | None:
    """The table's newest version; None before its first commit."""
    dt = open_table(lake, table)
    return dt.version() if dt is not None else None


# The order a run commits its tables in: `runs` last, so a `runs` row means every table of the run landed.
RUN_TABLES = ("generations", "cell_metrics", "finishes", "runs")


def run_txn(run_id: str) -> str:
    """The app transaction of a run's commits (the same in every table, and for a migrated run)."""
    return f"run:{run_id}"


def commit_run(lake: Lake, run_id: str, run_date: str, rows: dict[str, Sequence[dict] | Rows]) -> dict[str, Committed]:
    """Commit a run's rows, one commit per table in RUN_TABLES order; safe to call again after any failure."""
    return {table: commit(lake, table, rows.get(table, ()), run_date=run_date, txn=run_txn(run_id))
            for table in RUN_TABLES}
