"""A campaign stopped with SIGTERM after some shards, run again at once: every reader sees each asset once,
and gc after the takeover removes nothing committed."""

from __future__ import annotations

import signal
import time
from datetime import timedelta

import pytest

from adapters.infra import lake
from adapters.infra.parquet_io import read_parquet_bytes
from adapters.steps import claims, lake_ops, publish
from adapters.steps.gc import collect_garbage
from catalogs.models import RunRequest
from tasks.layout import AssetsLayout
from tests.helpers import start_cli

CAMPAIGN = (
    "name: stopped\nproducts: {ids: [rocket, coffee-cup]}\nstyles: {ids: [space-age]}\n"
    "matrix: {template: '{product} on {surface}', axes: {surface: [sand, slate]}, seeds: 16}\n"
    "generation: {profile: tiny, width: 64, height: 64, steps: 4, batch_size: 4}\n"
)
IMAGES = 2 * 2 * 16
PER_SHARD = 8


def staged(store, assets) -> list[str]:
    return [o.uri for o in store.list(f"{assets}/runs/") if "/staging/generations/" in o.uri]


def every_file_reader(store, assets) -> int:
    """A reader of every parquet file under tables/generations/ (what a glob over the folder reads)."""
    files = [o.uri for o in store.list(f"{assets}/tables/generations/") if o.uri.endswith(".parquet")]
    return sum(read_parquet_bytes(store.get(uri)).num_rows for uri in files)


@pytest.mark.slow
def test_a_run_stopped_with_sigterm_is_taken_over_at_once_and_every_reader_sees_each_asset_once(
        campaign_env, store, prefect_api_env, tmp_path, monkeypatch):
    from deltalake import DeltaTable

    from adapters.infra.settings import get_settings
    from flows.campaign import run_campaign

    assets = campaign_env["assets"]
    spec = tmp_path / "stopped.yaml"
    spec.write_text(CAMPAIGN)
    monkeypatch.setenv("STYLEMATRIX_IMAGES_PER_SHARD", str(PER_SHARD))  # the default lease (900 s) stays
    get_settings.cache_clear()
    first = start_cli(["run", "--campaign", str(spec)], {**prefect_api_env, "STYLEMATRIX_IMAGES_PER_SHARD": str(PER_SHARD)},
                      tmp_path, timeout=300)
    try:
        deadline = time.monotonic() + 240
        while len(staged(store, assets)) < 2 and first.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        first.proc.send_signal(signal.SIGTERM)  # after two shards wrote their rows
        code = first.proc.wait(timeout=60)
    finally:
        first.stop()
    shards_done = len(staged(store, assets))
    assert code != 0 and 2 <= shards_done < IMAGES // PER_SHARD
    tables = lake.Lake.of(store, AssetsLayout.at(assets))
    assert lake.read(tables, "generations").num_rows == 0 and publish.read_manifests(store, AssetsLayout.at(assets)) == []
    dead = staged(store, assets)[0].split("/runs/")[1].split("/")[0]
    held = [claims.read_claim(store, AssetsLayout.at(assets), o.key.rsplit("/", 1)[-1].removesuffix(".json"))
            for o in store.list(f"{assets}/claims/")]
    assert held and all(c.run_id == dead and c.released for c in held)  # handed back on the way out

    summary = run_campaign(RunRequest(campaign=str(spec), triggered_by="test"))  # at once: no lease to wait out
    assert summary.images_left_to_others == 0
    assert summary.images_taken_over >= shards_done * PER_SHARD
    assert summary.images_taken_over + summary.images_generated == IMAGES

    def readers() -> dict[str, tuple[int, int]]:
        sql = lake_ops.query(tables, "SELECT count(*), count(DISTINCT asset_id) FROM generations").rows[0]
        frame = DeltaTable(tables.uri("generations"), storage_options=tables.options).to_pandas()
        manifests = [publish.read_table(store, m, "generations") for m in publish.read_manifests(store, AssetsLayout.at(assets))]
        every = every_file_reader(store, assets)
        return {"duckdb": sql, "pandas": (len(frame), frame["asset_id"].nunique()),
                "manifests": (sum(len(m) for m in manifests), len({a for m in manifests for a in m["asset_id"]})),
                "every file": (every, every)}

    assert readers() == dict.fromkeys(("duckdb", "pandas", "manifests", "every file"), (IMAGES, IMAGES))
    gens = lake.read(tables, "generations").to_pandas()
    assert (gens["made_by_run"] == dead).sum() == summary.images_taken_over

    # gc after the takeover: the dead run's staged rows and claims go, no image a committed row records.
    report = collect_garbage(store, AssetsLayout.at(assets), older_than=timedelta(0), dry_run=False)
    assert report.runs == (dead,) and len(report.kept) == summary.images_taken_over
    assert not any("/images/" in uri for uri in report.objects)
    assert all(store.exists(uri) for uri in gens["output_key"])
    assert readers() == dict.fromkeys(("duckdb", "pandas", "manifests", "every file"), (IMAGES, IMAGES))


def test_a_claim_handed_back_is_taken_over_at_once_and_only_its_holder_hands_it_back(store, fresh_bucket):
    assets, lease = f"s3://{fresh_bucket}", timedelta(minutes=15)
    claims.claim_one(store, AssetsLayout.at(assets).run("run-a"), "a1", lease=lease)
    claims.claim_one(store, AssetsLayout.at(assets).run("run-b"), "a2", lease=lease)
    assert claims.release_all(store, AssetsLayout.at(assets).run("run-a"), ["a1", "a2", "a3"]) == 1  # only its own; a3 is nobody's
    assert claims.release_all(store, AssetsLayout.at(assets).run("run-a"), ["a1"]) == 0
    assert claims.claim_one(store, AssetsLayout.at(assets).run("run-a"), "a1", lease=lease).released  # its own late worker: still handed back
    taken = claims.claim_one(store, AssetsLayout.at(assets).run("run-c"), "a1", lease=lease)
    assert (taken.run_id, taken.replaced, taken.released) == ("run-c", "run-a", False)
    assert claims.claim_one(store, AssetsLayout.at(assets).run("run-c"), "a2", lease=lease).run_id == "run-b"  # alive: left to it
