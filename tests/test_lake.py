"""The Delta tables against the local S3 server: one commit per run, never twice, concurrent writers,
readers that see a commit whole, time travel, schema evolution, compaction, vacuum, migration, gc."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
from typer.testing import CliRunner

from adapters.infra import lake
from adapters.steps import lake_ops, publish
from adapters.steps.gc import collect_garbage
from tasks.layout import AssetsLayout
from tasks.tables import TABLES, Column

DAY = "2026-12-07"


def run_id(n: int) -> str:
    return f"spring-20261207T0{n:05d}Z-{n:06x}"


def rows(table: str, run: str, count: int, **values) -> list[dict]:
    """`count` rows of `table` for `run`: every column present, nulls where the test does not care."""
    base = {c.name: None for c in TABLES[table]}
    return [base | {"schema_version": 7, "run_id": run, "asset_id": f"{run}-{i}", **values} if "asset_id" in base
            else base | {"schema_version": 7, "run_id": run, **values} for i in range(count)]


@pytest.fixture
def tables(store, fresh_bucket) -> lake.Lake:
    return lake.Lake.of(store, AssetsLayout.at(f"s3://{fresh_bucket}/team"))


@pytest.fixture
def cli_env(s3_server, monkeypatch):
    """The command line's settings pointing at the session's S3 server."""
    from adapters.infra.settings import get_settings

    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server.endpoint)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def count(tables: lake.Lake, table: str = "generations", **at) -> int:
    return lake.read(tables, table, **at).num_rows


def test_a_run_commits_once_per_table_and_a_retry_writes_nothing(tables):
    run = run_id(1)
    first = lake.commit_run(tables, run, DAY, {"generations": rows("generations", run, 5), "runs": rows("runs", run, 1)})
    assert {t: (c.version, c.rows, c.again) for t, c in first.items()} == {
        "generations": (0, 5, False), "cell_metrics": (None, 0, False), "finishes": (None, 0, False),
        "runs": (0, 1, False)}
    again = lake.commit_run(tables, run, DAY, {"generations": rows("generations", run, 5), "runs": rows("runs", run, 1)})
    assert again["generations"].again and again["generations"].version == 0
    assert count(tables) == 5 and count(tables, "runs") == 1 and lake.version(tables, "generations") == 0
    # The commit is named for the run in the table's history, and its rows carry the partition date.
    (entry,) = lake_ops.history(tables, "generations")
    assert entry["commit"] == f"run:{run}" and entry["rows"] == 5
    assert lake_ops.files_per_partition(tables, "generations") == {DAY: 1}


def test_a_large_commit_is_files_of_bounded_size_in_one_version(tables, monkeypatch):
    # delta-rs holds a file's rows until it closes the file: a run's rows in one file were all held at once.
    monkeypatch.setattr(lake, "FILE_BYTES", 64 << 10)
    monkeypatch.setattr(lake, "BATCH_ROWS", 500)
    run = run_id(9)
    big = [r | {"prompt": f"{i:08d} " + "a mug on marble " * 40} for i, r in enumerate(rows("generations", run, 3000))]
    committed = lake.commit(tables, "generations", big, run_date=DAY, txn=f"run:{run}")
    assert committed.version == 0 and committed.rows == 3000 and lake.version(tables, "generations") == 0
    files = lake_ops.files_per_partition(tables, "generations")[DAY]
    assert files > 2, files  # about 2 MB of rows, closed at 64 KB each
    assert sorted(lake.read(tables, "generations").column("asset_id").to_pylist()) == sorted(r["asset_id"] for r in big)


def test_a_commit_whose_answer_was_lost_lands_once(tables, monkeypatch):
    real = lake.write_deltalake
    calls = []

    def lost_answer(*args, **kwargs):
        calls.append(1)
        real(*args, **kwargs)  # it lands ...
        if len(calls) == 1:
            raise OSError("connection reset by peer")  # ... and the answer never arrives

    monkeypatch.setattr(lake, "write_deltalake", lost_answer)
    run = run_id(2)
    done = lake.commit(tables, "generations", rows("generations", run, 7), run_date=DAY, txn=lake.run_txn(run))
    assert done.again and done.version == 0 and len(calls) == 1
    # The caller's own retry (the commit step retries on an error) finds it too.
    assert lake.commit(tables, "generations", rows("generations", run, 7), run_date=DAY, txn=lake.run_txn(run)).again
    assert count(tables) == 7


def test_runs_committing_at_once_all_land_and_one_run_twice_at_once_lands_once(tables):
    runs = [run_id(10 + i) for i in range(4)]
    with ThreadPoolExecutor(4) as pool:
        done = list(pool.map(lambda r: lake.commit(tables, "generations", rows("generations", r, 3), run_date=DAY,
                                                   txn=lake.run_txn(r)), runs))
    assert sorted(c.version for c in done) == [0, 1, 2, 3] and count(tables) == 12
    same = run_id(20)
    with ThreadPoolExecutor(4) as pool:
        done = list(pool.map(lambda _: lake.commit(tables, "generations", rows("generations", same, 3), run_date=DAY,
                                                   txn=lake.run_txn(same)), range(4)))
    assert len({c.version for c in done}) == 1 and sum(not c.again for c in done) == 1
    assert count(tables) == 15


def test_a_reader_during_commits_sees_each_commit_whole(tables):
    lake.commit(tables, "generations", rows("generations", run_id(30), 100), run_date=DAY, txn="run:base")
    seen: set[int] = set()
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            seen.add(lake_ops.query(tables, "SELECT count(*) FROM generations").rows[0][0])

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(3):
            run = run_id(31 + i)
            lake.commit(tables, "generations", rows("generations", run, 5000), run_date=f"2026-12-0{i + 1}",
                        txn=lake.run_txn(run))
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join()
    assert seen <= {100, 5100, 10100, 15100} and len(seen) >= 2, seen


def test_time_travel_by_version_by_time_and_by_run(store, tables, cli_env):
    first, second = run_id(40), run_id(41)
    before = datetime.now(UTC)
    for run in (first, second):
        done = lake.commit_run(tables, run, DAY, {"generations": rows("generations", run, 2), "runs": rows("runs", run, 1)})
        publish.write_manifest(store, tables.assets.run(run), {
            "run_id": run, "created_at": datetime.now(UTC).isoformat(), "assets": tables.assets.root, "run_date": DAY,
            "tables": [c.entry() for c in done.values()], "images": []})
        if run == first:  # S3 keeps a commit's time to the second, and Delta takes a commit's time from there
            time.sleep(1.1)
            between = datetime.now(UTC)
            time.sleep(1.1)
    assert count(tables) == 4 and count(tables, version=0) == 2 and count(tables, as_of=between) == 2
    assert count(tables, as_of=before) == 0  # nothing was committed yet then
    versions, when = lake_ops.versions_of_run(store, tables.assets.run(first))
    assert versions == {"generations": 0, "runs": 0}
    assert lake_ops.query(tables, "SELECT DISTINCT run_id FROM generations", versions=versions).rows == [(first,)]
    # The manifest of the first run still reads its own rows, whatever came after.
    manifest = next(m for m in publish.read_manifests(store, tables.assets) if m["run_id"] == first)
    assert list(publish.read_table(store, manifest, "generations")["run_id"]) == [first, first]

    from flows.cli import app

    cli = CliRunner()
    out = cli.invoke(app, ["tables", "query", "SELECT count(*) FROM generations", "--as-of-run", first,
                           "--assets", tables.assets.root])
    assert out.exit_code == 0 and out.output.splitlines()[-1] == "2", out.output
    out = cli.invoke(app, ["tables", "query", "SELECT count(*) FROM generations", "--assets", tables.assets.root])
    assert out.output.splitlines()[-1] == "4"
    out = cli.invoke(app, ["tables", "query", "SELECT 1", "--as-of-run", "nobody", "--assets", tables.assets.root])
    assert out.exit_code == 2 and "run 'nobody': not committed" in out.output


def test_a_column_added_to_the_schema_merges_into_the_table(tables, monkeypatch):
    old = run_id(50)
    lake.commit(tables, "runs", rows("runs", old, 1), run_date=DAY, txn=lake.run_txn(old))
    monkeypatch.setitem(TABLES, "runs", (*TABLES["runs"], Column("consistency", "float64", "added later")))
    new = run_id(51)
    lake.commit(tables, "runs", rows("runs", new, 1, consistency=0.5), run_date=DAY, txn=lake.run_txn(new))
    got = lake_ops.query(tables, "SELECT run_id, consistency FROM runs ORDER BY run_id").rows
    assert got == [(old, None), (new, 0.5)]


def test_compaction_then_vacuum_leaves_one_file_per_partition_and_the_same_rows(tables, cli_env):
    for i in range(6):
        run = run_id(60 + i)
        lake.commit(tables, "generations", rows("generations", run, 10), run_date=DAY if i % 2 else "2026-12-06",
                    txn=lake.run_txn(run))
    assert lake_ops.files_per_partition(tables, "generations") == {"2026-12-06": 3, DAY: 3}
    done = lake_ops.compact(tables, "generations")
    assert (done.files_before, done.files_after, done.partitions) == (6, 2, 2)
    assert lake_ops.files_per_partition(tables, "generations") == {"2026-12-06": 1, DAY: 1}
    assert count(tables) == 60 and count(tables, version=5) == 60  # the version before compaction still reads
    assert lake_ops.vacuum(tables, "generations", retention_hours=DEFAULT_KEEP) == []  # all younger than a week
    gone = lake_ops.vacuum(tables, "generations", retention_hours=0)
    assert len(gone) == 6 and count(tables) == 60

    # The same through the command line, on the runs table.
    from flows.cli import app

    cli, where = CliRunner(), ["--assets", tables.assets.root]
    for i in range(3):
        lake.commit(tables, "runs", rows("runs", run_id(66 + i), 1), run_date=DAY, txn=lake.run_txn(run_id(66 + i)))
    out = cli.invoke(app, ["tables", "compact", "--table", "runs", *where])
    assert out.exit_code == 0 and "runs: 3 files -> 1 in 1 partitions (version 3)" in out.output, out.output
    out = cli.invoke(app, ["tables", "vacuum", "--retention-hours", "0", "--table", "runs", *where])
    assert "runs: deleted 3 files older than 0 h" in out.output, out.output
    out = cli.invoke(app, ["tables", "history", "runs", *where])
    assert out.output.splitlines()[0].split("\t") == ["version", "timestamp", "operation", "commit", "rows"]
    assert f"run:{run_id(66)}" in out.output and "OPTIMIZE" in out.output
    out = cli.invoke(app, ["tables", "compact", "--table", "nope", *where])
    assert out.exit_code == 2 and "--table 'nope': not one of generations" in out.output


DEFAULT_KEEP = lake_ops.DEFAULT_RETENTION_HOURS


def test_migration_converts_a_schema_7_bucket_in_place_and_is_idempotent(store, tables, cli_env):
    assets, committed, dead = tables.assets.root, run_id(70), run_id(71)
    legacy = f"{assets}/tables/%s/run_date={DAY}/%s.parquet"
    parts = []
    for table, name, run, n in [("generations", f"{committed}-00000", committed, 3),
                                ("generations", f"{committed}-00001", committed, 2),
                                ("runs", committed, committed, 1),
                                ("generations", f"{dead}-00000", dead, 4)]:
        uri = legacy % (table, name)
        store.put(uri, publish.table_bytes(table, rows(table, run, n)))
        parts.append({"table": table, "uri": uri})
    review = legacy % ("reviews", f"{committed}--r1")
    store.put(review, publish.table_bytes("reviews", rows("reviews", committed, 2)))
    store.put(AssetsLayout.at(assets).run(committed).manifest, json.dumps({
        "schema_version": 2, "run_id": committed, "created_at": datetime.now(UTC).isoformat(),
        "parts": parts[:3], "images": [], "gallery": f"{assets}/runs/{committed}/index.html"}).encode())

    done = lake_ops.migrate(store, AssetsLayout.at(assets))
    assert done.commits == {"generations": 1, "runs": 1, "reviews": 1} and done.rows["generations"] == 5
    assert done.left == (parts[3]["uri"],) and not store.exists(parts[0]["uri"]) and store.exists(parts[3]["uri"])
    assert count(tables) == 5 and count(tables, "reviews") == 2
    # A schema-7 manifest still reads its run's rows, now from the table.
    manifest = publish.read_manifests(store, AssetsLayout.at(assets))[0]
    assert len(publish.read_table(store, manifest, "generations")) == 5
    again = lake_ops.migrate(store, AssetsLayout.at(assets))
    assert again.commits == {} and again.left == done.left and count(tables) == 5
    from flows.cli import app

    out = CliRunner().invoke(app, ["tables", "migrate", "--assets", assets])
    assert out.exit_code == 0 and "removed 0 parts now in the tables; left 1 parts" in out.output, out.output
    # The dead run's part is what gc removes, as it always did.
    report = collect_garbage(store, AssetsLayout.at(assets), older_than=timedelta(0), dry_run=False)
    assert report.runs == (dead,) and parts[3]["uri"] in report.objects and count(tables) == 5


def test_gc_keeps_an_image_a_committed_row_records_and_says_so(store, tables):
    assets, dead, taker = tables.assets.root, run_id(80), run_id(81)
    image = AssetsLayout.at(assets).run(dead).uri("images", "a.png")
    store.put(image, b"png")
    store.put(AssetsLayout.at(assets).run(dead).uri("images", "b.png"), b"png")
    store.put(AssetsLayout.at(assets).run(dead).staged_part("generations", f"{dead}-00000"),
              publish.table_bytes("generations", rows("generations", dead, 2)))
    # The taker committed a's row (made by the dead run), but died before its manifest.
    lake.commit_run(tables, taker, DAY, {"generations": rows("generations", taker, 1, output_key=image, made_by_run=dead),
                                         "runs": rows("runs", taker, 1)})
    report = collect_garbage(store, AssetsLayout.at(assets), older_than=timedelta(0), dry_run=False)
    assert report.runs == (dead,) and report.kept == (image,) and store.exists(image)
    assert len(report.objects) == 2 and all(not store.exists(u) for u in report.objects)
    assert lake.read(tables, "generations").column("output_key").to_pylist() == [image]
