"""Shards: a retried shard resumes; dry runs and run-request overrides through the flow."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from adapters.model.engine import Engine
from adapters.steps import publish
from catalogs.models import RunRequest
from tasks.layout import AssetsLayout
from tests.helpers import ReadLog

SMALL = (
    "name: small\nproducts: {ids: [rocket, coffee-cup]}\nstyles: {ids: [space-age]}\n"
    "matrix: {template: '{product} on {surface}', axes: {surface: [sand, slate]}, seeds: 2}\n"
    "generation: {profile: tiny, width: 64, height: 64, steps: 2, batch_size: 4}\n"
)


@pytest.fixture
def small_campaign(campaign_env, store):
    uri = f"{campaign_env['catalog']}/campaigns/small.yaml"
    store.put(uri, SMALL.encode())
    return uri


@pytest.fixture
def generated(monkeypatch):
    """Counts the prompts the engine really renders."""
    seen: list[str] = []
    real = Engine.generate

    def counting(self, **kwargs):
        seen.extend(d.prompt for d in kwargs["draws"])
        return real(self, **kwargs)

    monkeypatch.setattr(Engine, "generate", counting)
    return seen


def test_dry_run_plans_without_writing(campaign_env, store, small_campaign, generated):
    from flows.campaign import run_campaign

    summary = run_campaign(RunRequest(campaign="small", dry_run=True, triggered_by="test"))
    assert summary.dry_run and summary.images_planned == 8 and summary.images_to_generate == 8
    assert summary.run_id is None and summary.lines()[0].startswith("dry run of small: 8 images planned")
    assert summary.estimated_seconds is None
    assert summary.lines()[1] == "  estimate: none (no earlier run of profile tiny at 64x64, 2 steps to estimate from)"
    assert generated == []
    assert store.list(f"{campaign_env['assets']}/") == []


def test_overrides_narrow_the_run(campaign_env, store, small_campaign, generated):
    from flows.campaign import run_campaign

    summary = run_campaign(RunRequest(campaign="small", products=("rocket",), axes={"surface": ("slate",)},
                                      seeds=(9,), triggered_by="test"))
    manifest = json.loads(store.get(summary.manifest))
    gens = publish.read_table(store, manifest, "generations")
    assert summary.images_generated == 1
    assert gens[["product_id", "seed"]].values.tolist() == [["rocket", 9]]
    assert dict(gens.iloc[0]["cell"]) == {"surface": "slate"}
    # A dry run after it estimates its generation time from that run's recorded speed.
    (speed,) = publish.read_table(store, manifest, "runs")["images_per_second"]
    plan = run_campaign(RunRequest(campaign="small", dry_run=True, triggered_by="test"))
    assert plan.images_to_generate == 8 and plan.estimated_seconds == pytest.approx(8 / speed)  # seed 9 is not its own
    assert plan.lines()[1].startswith("  estimate: ") and "the median of the latest 1 runs of profile tiny" in plan.lines()[1]


def test_retried_shard_skips_images_it_already_wrote(campaign_env, store, small_campaign, generated):
    from prefect import flow

    from flows.campaign import run_campaign
    from flows.progress import Progress
    from flows.shard import ShardRuntime, run_shard, shard_part_name

    first = run_campaign(RunRequest(campaign="small", triggered_by="test"))
    manifest = json.loads(store.get(first.manifest))
    assert len(generated) == 8
    gens = publish.read_table(store, manifest, "generations")

    # Simulate a shard that died after writing some images: drop one image and the shard's staged part.
    part = {"table": "generations", "uri": AssetsLayout.at(campaign_env["assets"]).run(first.run_id).staged_part("generations",
                                                                   shard_part_name(first.run_id, 0))}
    lost = gens.iloc[3]
    lost_image = Image.open(io.BytesIO(store.get(lost["output_key"])))
    lost_image.load()
    store.delete(lost["output_key"])
    store.delete(part["uri"])
    generated.clear()

    from tasks.plan import Shard, ShardContext

    # Re-run the very shard the campaign ran (its spec is stored with the run), as a retry would.
    shard = Shard.model_validate_json(store.get(AssetsLayout.at(campaign_env["assets"]).run(first.run_id).uri("shards", "00000.json")))
    ctx = ShardContext(run=AssetsLayout.at(campaign_env["assets"]).run(first.run_id, manifest["run_date"]),
                       campaign="small", controls=manifest["controls"], batch_total=2)
    flow(name="retried-shard")(run_shard)(shard, ctx, ShardRuntime(Progress()))
    assert generated == [lost["prompt"]]  # only the missing image was rendered again
    again = publish.read_staged(store, [publish.part_entry(store, "generations", part["uri"])], "generations")
    assert sorted(again["asset_id"]) == sorted(gens["asset_id"])
    before, after = dict(zip(gens["asset_id"], gens["sha256"], strict=False)), dict(zip(again["asset_id"], again["sha256"], strict=False))
    assert {a: h for a, h in after.items() if a != lost["asset_id"]} == {a: h for a, h in before.items() if a != lost["asset_id"]}
    # The re-rendered image ran alone instead of in a batch of 4: the same pixels within 1/255.
    redone = np.asarray(Image.open(io.BytesIO(store.get(lost["output_key"]))), dtype=np.int16)
    original = np.asarray(lost_image, dtype=np.int16)
    assert np.abs(redone - original).max() <= 1
    assert part["uri"].endswith(shard_part_name(first.run_id, 0) + ".parquet")


def _progress_of(artifact_id: str) -> float:
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterId

    with get_client(sync_client=True) as client:
        (found,) = client.read_artifacts(artifact_filter=ArtifactFilter(id=ArtifactFilterId(any_=[UUID(artifact_id)])))
    return float(found.data)


def test_progress_moves_forward_across_shards_in_process_and_ends_at_100_and_throughput_is_wall_time(campaign_env, store, small_campaign,
                                                                          monkeypatch):
    from adapters.infra.settings import get_settings
    from flows import artifacts
    from flows.campaign import run_campaign

    monkeypatch.setenv("STYLEMATRIX_IMAGES_PER_SHARD", "4")  # 2 batches of 4 images: one shard each
    get_settings.cache_clear()
    heard: list[tuple[int, int]] = []
    artifact_ids: list[str] = []

    class Artifact(artifacts.ProgressArtifact):
        def update(self, done: int, total: int) -> None:
            heard.append((done, total))
            artifact_ids.append(self.artifact_id)
            super().update(done, total)

    monkeypatch.setattr("flows.campaign.ProgressArtifact", Artifact)
    summary = run_campaign(RunRequest(campaign="small", triggered_by="test"))
    assert heard == [(0, 8), (4, 8), (8, 8), (8, 8)]  # begun; batch 1 of 2 (shard 0), batch 2 (shard 1); all done
    assert len(set(artifact_ids)) == 1 and _progress_of(artifact_ids[0]) == 100.0

    # Throughput is images per second of the generation phase's wall time, not of the summed shard times.
    manifest = json.loads(store.get(summary.manifest))
    (run,) = publish.read_table(store, manifest, "runs").to_dict("records")
    pipeline = publish.read_table(store, manifest, "generations")["generation_seconds"].sum()
    assert run["images_generated"] == 8 and run["batches"] == 2
    assert pipeline < run["generation_wall_seconds"] < run["duration_seconds"]
    assert run["images_per_second"] == summary.images_per_second == 8 / run["generation_wall_seconds"]


def test_pool_progress_counts_completed_shards_in_any_order_and_moves_the_artifact_forward(campaign_env, store):
    from flows import artifacts
    from flows.dispatch import PoolProgress
    from flows.progress import Progress
    from tasks.plan import group_batches, plan_shards
    from tests.helpers import PRODUCTS, STYLES, campaign, plan

    shards = plan_shards(group_batches(plan(campaign()), batch_size=4)[:4], PRODUCTS, STYLES, images_per_shard=4)
    artifact = artifacts.ProgressArtifact(artifacts.start_progress("pool", "pool-run"))
    progress = Progress(artifact)
    progress.begin(sum(len(b.jobs) for s in shards for b in s.batches))
    tracker = PoolProgress(progress, shards)
    assert tracker.update() == 0.0
    tracker.completed(shards[3].index)  # a parallel shard finishes the run's last batch first: a quarter done, not all
    assert tracker.update() == 0.25 and _progress_of(artifact.artifact_id) == 25.0
    tracker.completed(shards[0].index)
    tracker.completed(shards[1].index)
    assert tracker.update() == 0.75 and _progress_of(artifact.artifact_id) == 75.0
    tracker.completed(shards[2].index)
    assert tracker.update() == 1.0 and _progress_of(artifact.artifact_id) == 100.0


def test_ignored_controlnet_scale_axis_is_refused_before_the_catalog_is_read(campaign_env, store, generated):
    from flows.campaign import run_campaign

    uri = f"{campaign_env['catalog']}/campaigns/fixed.yaml"
    store.put(uri, SMALL.replace("name: small", "name: fixed")
              .replace("axes: {surface: [sand, slate]}", "axes: {surface: [sand, slate], controlnet_scale: [0.5, 1.0]}")
              .replace("batch_size: 4}", "batch_size: 4, control_scales: {canny: 0.8}}").encode())
    with pytest.raises(ValueError, match="campaign 'fixed': axis 'controlnet_scale' would change nothing"):
        run_campaign(RunRequest(campaign="fixed", triggered_by="test"))
    assert store.list(f"{campaign_env['catalog']}/_snapshots/") == []  # no catalog refresh, no snapshot
    assert generated == [] and store.list(f"{campaign_env['assets']}/") == []


def test_a_run_copies_itself_locally_as_it_makes_its_images(campaign_env, store, small_campaign, tmp_path, monkeypatch):
    import hashlib

    from flows import steps
    from flows.campaign import run_campaign

    copied: list[set[str]] = []  # the images in the local copy when the run starts copying what it lacks

    def watching(store, run, out_dir):
        copied.append({p.name for p in (out_dir / run.run_id / "images").glob("*.png")})
        return publish.copy_run(store, run, out_dir)

    monkeypatch.setattr(steps, "copy_run", steps.step(watching, name="local-copy"))
    out = tmp_path / "out"
    summary = run_campaign(RunRequest(campaign="small", local_copy=str(out), triggered_by="test"))
    manifest = json.loads(store.get(summary.manifest))
    local = out / summary.run_id
    assert summary.local_copy == str(local) and (out / "latest").resolve() == local.resolve()
    expected = {f"{i['asset_id']}.png": i["sha256"] for i in manifest["images"]}
    assert copied == [set(expected)]  # every image was written as it was made: none is read back
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (local / "images").glob("*.png")} == expected
    assert len(list((local / "sheets").glob("*.jpg"))) == 3 and (local / "index.html").is_file()

    # Copied again over a damaged copy: the damaged image is read again, a stray one removed, the rest kept.
    damaged = sorted(expected)[0]
    (local / "images" / damaged).write_bytes(b"not a png")
    (local / "images" / "stray.png").write_bytes(b"left by a run that lost its claim")
    log = ReadLog(store)
    publish.copy_run(log, AssetsLayout.at(campaign_env["assets"]).run(summary.run_id), out)
    assert [u for u in log.reads if "/images/" in u] == [next(i["uri"] for i in manifest["images"]
                                                              if f"{i['asset_id']}.png" == damaged)]
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (local / "images").glob("*.png")} == expected


def test_a_shard_whose_batch_fails_runs_again_and_makes_only_what_is_missing(campaign_env, store, small_campaign,
                                                                             generated, monkeypatch):
    from adapters.steps import rendering
    from flows.campaign import run_campaign

    real, calls = rendering.render_batch, []

    def flaky(*args, **kwargs):
        calls.append(args[2].jobs[0].asset_id)
        if len(calls) == 2:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")  # once, on the second batch
        return real(*args, **kwargs)

    monkeypatch.setattr(rendering, "render_batch", flaky)
    summary = run_campaign(RunRequest(campaign="small", triggered_by="test"))  # one shard of two batches of 4
    gens = publish.read_table(store, json.loads(store.get(summary.manifest)), "generations")
    assert len(calls) == 4 and calls[2] == calls[0]  # the whole shard ran again ...
    assert len(generated) == 8  # ... but its first batch's images were not made again
    assert summary.images_generated == 8 and len(gens) == 8 and gens["asset_id"].is_unique
