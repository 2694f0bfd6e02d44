"""Runs that overlap or die: claims make every asset once; a rerun takes over what a dead run made; gc
removes what nobody recorded and never a committed run's objects."""

from __future__ import annotations

import hashlib
import json
import signal
import time
from datetime import UTC, datetime, timedelta

import pytest

from adapters.steps import claims, publish
from adapters.steps.gc import collect_garbage
from catalogs.models import RunRequest
from tasks.gc import Stored, garbage, run_of
from tasks.layout import AssetsLayout
from tests.helpers import ReadLog, start_cli

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
RUN_A, RUN_B = "spring-20261201T100000Z-aaaaaa", "spring-20261201T110000Z-bbbbbb"


def test_gc_rule_takes_only_abandoned_runs_and_keeps_what_a_manifest_names():
    old, new = NOW - timedelta(hours=30), NOW - timedelta(minutes=5)
    objects = [
        Stored(f"s3://a/runs/{RUN_A}/images/x.png", old),
        Stored(f"s3://a/runs/{RUN_A}/images/y.png", old),  # taken over by RUN_B: named by its manifest
        Stored(f"s3://a/tables/generations/run_date=2026-12-01/{RUN_A}-00000.parquet", old),
        Stored(f"s3://a/runs/{RUN_B}/_MANIFEST.json", old),
        Stored(f"s3://a/runs/{RUN_B}/images/z.png", old),
        Stored("s3://a/runs/spring-20261201T115500Z-cccccc/images/w.png", new),  # still running
    ]
    claims_held = {"s3://a/claims/x.json": (RUN_A, old), "s3://a/claims/z.json": (RUN_B, old),
                   "s3://a/claims/w.json": ("spring-20261201T115500Z-cccccc", new)}
    dead, doomed = garbage(objects, {RUN_B}, {f"s3://a/runs/{RUN_A}/images/y.png"}, claims_held,
                           now=NOW, older_than=timedelta(hours=24))
    assert dead == {RUN_A}
    assert doomed == sorted([f"s3://a/runs/{RUN_A}/images/x.png",
                             f"s3://a/tables/generations/run_date=2026-12-01/{RUN_A}-00000.parquet",
                             "s3://a/claims/x.json", "s3://a/claims/z.json"])
    assert run_of("s3://a/catalog/products/x.png") is None


def test_claims_keep_an_asset_with_the_live_run_and_pass_an_abandoned_one_on(store, fresh_bucket):
    assets = f"s3://{fresh_bucket}"
    lease = timedelta(minutes=15)
    first = claims.claim_one(store, AssetsLayout.at(assets).run(RUN_A), "a1", lease=lease, now=NOW)
    assert first.new and first.run_id == RUN_A
    assert claims.claim_one(store, AssetsLayout.at(assets).run(RUN_A), "a1", lease=lease, now=NOW).run_id == RUN_A  # a retried shard
    held = claims.claim_one(store, AssetsLayout.at(assets).run(RUN_B), "a1", lease=lease, now=NOW + timedelta(minutes=1))
    assert held.run_id == RUN_A and not held.new  # alive: left to it
    taken = claims.claim_one(store, AssetsLayout.at(assets).run(RUN_B), "a1", lease=lease, now=NOW + timedelta(hours=1))
    assert (taken.run_id, taken.replaced) == (RUN_B, RUN_A)  # abandoned: passed on
    assert claims.owners(store, AssetsLayout.at(assets), ["a1", "a2"]) == {"a1": RUN_B, "a2": ""}



def test_a_committing_run_reads_only_the_claims_that_changed_hands_however_long_it_ran(store, fresh_bucket):
    assets, lease = f"s3://{fresh_bucket}", timedelta(minutes=15)
    for asset in ("a1", "a2"):
        claims.claim_one(store, AssetsLayout.at(assets).run(RUN_A), asset, lease=lease, now=NOW)
    claims.claim_one(store, AssetsLayout.at(assets).run(RUN_B), "a3", lease=lease, now=NOW)  # left to RUN_B
    run_a = AssetsLayout.at(assets).run(RUN_A)
    # Nobody took a claim of RUN_A's over: one listing of its notices, and only a3's claim (left to RUN_B) is read.
    counting = ReadLog(store)
    assert claims.owners_at_commit(counting, run_a, ["a1", "a2", "a3"], {"a1", "a2"}) == {
        "a1": RUN_A, "a2": RUN_A, "a3": RUN_B}
    assert counting.reads == [AssetsLayout.at(assets).claim("a3")]
    # RUN_A ran past its lease and RUN_B took a2 over: the notice it left names a2, whose claim is read too.
    claims.claim_one(store, AssetsLayout.at(assets).run(RUN_B), "a2", lease=lease, now=NOW + timedelta(minutes=16))
    assert [o.uri for o in store.list(run_a.taken_notices)] == [run_a.taken("a2")]
    counting = ReadLog(store)
    assert claims.owners_at_commit(counting, run_a, ["a1", "a2", "a3"], {"a1", "a2"}) == {
        "a1": RUN_A, "a2": RUN_B, "a3": RUN_B}
    assert sorted(counting.reads) == sorted(AssetsLayout.at(assets).claim(a) for a in ("a2", "a3"))


CAMPAIGN = (
    "name: {name}\nproducts: {{ids: [rocket, coffee-cup]}}\nstyles: {{ids: [space-age]}}\n"
    "matrix: {{template: '{{product}} on {{surface}}', axes: {{surface: [sand, slate]}}, seeds: 4}}\n"
    "generation: {{profile: tiny, width: 64, height: 64, steps: 2, batch_size: 2}}\n"
)
IMAGES = 2 * 2 * 4


def _images(store, assets) -> list[str]:
    return [o.uri for o in store.list(f"{assets}/runs/") if "/images/" in o.uri]


def _recorded(store, assets):
    import pandas as pd

    manifests = publish.read_manifests(store, AssetsLayout.at(assets))
    return pd.concat([publish.read_table(store, m, "generations") for m in manifests]), manifests


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_a_killed_run_is_taken_over_by_the_rerun_and_gc_leaves_nothing_unrecorded(
        campaign_env, store, prefect_api_env, tmp_path, monkeypatch, sig):
    from adapters.infra.settings import get_settings
    from flows.campaign import run_campaign

    assets = campaign_env["assets"]
    spec = tmp_path / "killed.yaml"
    spec.write_text(CAMPAIGN.format(name="killed"))
    monkeypatch.setenv("STYLEMATRIX_CLAIM_LEASE_SECONDS", "1")
    get_settings.cache_clear()
    first = start_cli(["run", "--campaign", str(spec)], prefect_api_env, tmp_path, timeout=300)
    try:
        deadline = time.monotonic() + 240
        while len(_images(store, assets)) < 4 and first.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        first.proc.send_signal(sig)  # the machine goes away partway
        first.proc.wait(timeout=30)
    finally:
        first.stop()
    made_before = set(_images(store, assets))
    assert 4 <= len(made_before) < IMAGES and publish.read_manifests(store, AssetsLayout.at(assets)) == []
    dead_run = made_before.pop().split("/runs/")[1].split("/")[0]
    time.sleep(1.5)  # its claims are now older than the lease

    summary = run_campaign(RunRequest(campaign=str(spec), triggered_by="test"))
    gens, _ = _recorded(store, assets)
    assert len(gens) == IMAGES and gens["asset_id"].is_unique
    taken = gens[gens["made_by_run"] == dead_run]
    assert summary.images_taken_over == len(taken) == len(made_before) + 1
    assert summary.images_generated == IMAGES - len(taken) == (gens["made_by_run"] == summary.run_id).sum()
    assert set(taken["output_key"]) <= set(_images(store, assets))
    assert len(_images(store, assets)) == IMAGES  # every asset was generated once in all
    for row in gens.itertuples():
        assert hashlib.sha256(store.get(row.output_key)).hexdigest() == row.sha256

    # Nothing is left unrecorded: gc removes the dead run's other objects, never a recorded one.
    dry = collect_garbage(store, AssetsLayout.at(assets), older_than=timedelta(0), dry_run=True)
    assert dry.runs == (dead_run,) and dry.objects and all(store.exists(u) for u in dry.objects if "/claims/" not in u)
    report = collect_garbage(store, AssetsLayout.at(assets), older_than=timedelta(0), dry_run=False)
    assert report.objects == dry.objects
    committed = {summary.run_id}
    named = {i["uri"] for m in publish.read_manifests(store, AssetsLayout.at(assets)) for i in m["images"]}
    for obj in store.list(f"{assets}/runs/"):
        run = obj.uri.split("/runs/")[1].split("/")[0]
        assert run in committed or obj.uri in named, obj.uri
    for row in gens.itertuples():
        assert store.exists(row.output_key)
    assert collect_garbage(store, AssetsLayout.at(assets), older_than=timedelta(0), dry_run=False).objects == ()


@pytest.mark.slow
def test_two_runs_started_together_make_every_asset_once(campaign_env, store, prefect_api_env, tmp_path):
    assets = campaign_env["assets"]
    spec = tmp_path / "twice.yaml"
    spec.write_text(CAMPAIGN.format(name="twice"))
    runs = [start_cli(["run", "--campaign", str(spec)], prefect_api_env, tmp_path, timeout=400) for _ in range(2)]
    try:
        results = [r.result() for r in runs]
    finally:
        for r in runs:
            r.stop()
    for result in results:
        assert result.returncode == 0, result.stderr[-3000:]
    gens, manifests = _recorded(store, assets)
    assert len(manifests) == 2
    assert len(gens) == IMAGES and gens["asset_id"].is_unique  # one row per asset across both runs
    assert len(_images(store, assets)) == IMAGES  # and each made once
    rows = {m["run_id"]: publish.read_table(store, m, "runs").iloc[0] for m in manifests}
    left = {run: int(r["images_left_to_others"]) for run, r in rows.items()}
    assert sum(int(r["images_generated"]) for r in rows.values()) == IMAGES
    assert sum(left.values()) >= 1
    for run, count in left.items():
        if count:  # the run that left images says so, naming the other run
            (other,) = set(rows) - {run}
            assert list(rows[run]["left_to_runs"]) == [other]
            # each run's own summary starts with its id (both may name the other, where each left images)
            out = next(r.stdout for r in results if f"run {run}:" in r.stdout)
            assert f"left to:  {count} images that run {other} was making at the same time" in out
    assert all(json.loads(store.get(AssetsLayout.at(assets).run(m["run_id"]).manifest))["run_id"] == m["run_id"]
               for m in manifests)
