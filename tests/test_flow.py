"""The whole campaign flow under prefect_test_harness against the local S3 server.

The sample campaign runs once for the module (`sample_run`); the tests that only read a finished
run inspect that one.
"""

from __future__ import annotations

import hashlib
import io
import json
from types import SimpleNamespace

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from adapters.infra.parquet_io import read_parquet_bytes
from adapters.infra.settings import Settings, get_settings
from adapters.infra.storage import S3Store
from adapters.steps import publish
from catalogs.models import RunRequest
from tasks.layout import AssetsLayout
from tasks.tables import GENERATIONS, RUNS
from tests.helpers import ARTIFACTS, campaign_settings_env, seed_campaign_buckets, small_campaign


def objects(store: S3Store, prefix: str) -> set[str]:
    return {o.uri for o in store.list(prefix)}


@pytest.fixture(scope="module")
def sample_run(s3_server, model_cache, prefect_harness) -> SimpleNamespace:
    """The sample campaign, run once by the real flow in a campaign_env of its own: 64 images."""
    from flows.campaign import run_campaign

    store = S3Store.from_settings(Settings(s3_endpoint=s3_server.endpoint, s3_region="us-east-1"))
    catalog, assets = seed_campaign_buckets(store)
    env = campaign_settings_env(s3_server, catalog, assets, model_cache)
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        get_settings.cache_clear()
        try:
            summary = run_campaign(RunRequest(campaign="sample", triggered_by="test"))
        finally:
            get_settings.cache_clear()
    return SimpleNamespace(catalog=catalog, assets=assets, env=env, summary=summary)


def test_campaign_publishes_traceable_images_and_a_rerun_publishes_nothing_new(sample_run, store, monkeypatch):
    from flows.campaign import run_campaign

    catalog, assets, summary = sample_run.catalog, sample_run.assets, sample_run.summary

    expected = 4 * 2 * 4 * 2  # products x style sets x cells x seeds
    assert summary.images_generated == expected
    assert summary.images_skipped == 0
    assert summary.quarantined == 1

    manifest = json.loads(store.get(summary.manifest))
    assert len(manifest["images"]) == expected
    gens = publish.read_table(store, manifest, "generations")
    assert list(gens.columns) == [c.name for c in GENERATIONS]
    assert len(gens) == expected and gens["asset_id"].is_unique
    assert set(gens["product_id"]) == {"coffee-cup", "rocket", "alarm-clock", "brand-logo"}
    assert set(gens["style_id"]) == {"space-age", "earthy-textures"}
    assert set(gens["seed"]) == {11, 42}
    assert {tuple(sorted(dict(c).items())) for c in gens["cell"]} == {
        (("lighting", light), ("surface", surface))
        for surface in ("a marble counter", "a sunny beach")
        for light in ("soft morning light", "warm evening glow")
    }
    row = gens[gens["product_id"] == "coffee-cup"].iloc[0]
    assert row["prompt"].startswith("a product photo of cup of coffee on ")
    assert row["negative_prompt"] == "blurry, low quality, watermark, text"
    assert row["profile"] == "tiny" and len(row["profile_revision"]) >= 12
    assert row["dtype"] == "float32" and row["device"].startswith("cpu")
    assert row["torch_version"] and row["diffusers_version"] and row["transformers_version"]
    assert len(row["reference_keys"]) == len(row["reference_sha256s"])
    three = gens[gens["style_id"] == "earthy-textures"].iloc[0]
    assert len(three["reference_keys"]) == 3

    # Every row's object exists, is a PNG of the recorded size, and has the recorded sha256.
    for r in gens.itertuples():
        data = store.get(r.output_key)
        assert hashlib.sha256(data).hexdigest() == r.sha256
        assert r.output_key == f"{assets}/runs/{summary.run_id}/images/{r.asset_id}.png"
        assert Image.open(io.BytesIO(data)).size == (r.width, r.height) == (128, 128)
        assert store.exists(r.control_key)

    runs = publish.read_table(store, manifest, "runs")
    assert list(runs.columns) == [c.name for c in RUNS]
    assert runs.iloc[0]["images_generated"] == expected and runs.iloc[0]["triggered_by"] == "test"
    assert summary.gallery and b"<figure" in store.get(summary.gallery)
    # One commit per table, its version and rows in the manifest; the staged rows stay under the run.
    assert [(t["table"], t["uri"], t["rows"]) for t in manifest["tables"]] == [
        (name, f"{assets}/tables/{name}", rows) for name, rows in
        (("generations", expected), ("cell_metrics", 4 * 2 * 4), ("finishes", 0), ("runs", 1))]
    assert all(t["version"] is not None for t in manifest["tables"] if t["rows"])
    assert sum(read_parquet_bytes(store.get(o.uri)).num_rows
               for o in store.list(f"{assets}/runs/{summary.run_id}/staging/generations/")) == expected

    # Every image is scored; gates, near-duplicates and top k decide its outcome.
    for column in ("edge_f1", "product_ssim", "sharpness", "colourfulness", "background_hash", "clip_text", "clip_style"):
        assert gens[column].notna().all(), column
    assert gens["clip_model"].str.startswith("builtin:tiny/clip@").all()
    assert set(gens["status"]) <= {"ok", "gated", "duplicate", "failed"}
    gated = gens[gens["status"] == "gated"]
    assert all(len(g) > 0 and "fails" in r for g, r in zip(gated["gates_failed"], gated["status_reason"], strict=True))
    ok = gens[gens["status"] == "ok"]
    assert set(gens.loc[gens["status"] == "duplicate", "duplicate_of"]) <= set(ok["asset_id"])
    for _, mine in gens.groupby("product_id"):
        chosen = mine[mine["selected"]]
        assert len(chosen) == min(3, (mine["status"] == "ok").sum())  # top_k 3 in the sample campaign
        assert sorted(chosen["rank_in_product"]) == list(range(1, len(chosen) + 1))
    assert runs.iloc[0]["images_selected"] == gens["selected"].sum() > 0
    # Per-cell metrics, one contact sheet per product x style set, the gallery marks the selected.
    assert len(publish.read_table(store, manifest, "cell_metrics")) == 4 * 2 * 4
    assert sorted(manifest["sheets"]) == sorted([*(f"{p}__{s}.jpg" for p in set(gens["product_id"])
                                                   for s in set(gens["style_id"])), "overview.jpg"])
    assert all(Image.open(io.BytesIO(store.get(uri))).format == "JPEG" for uri in manifest["sheets"].values())
    page = store.get(summary.gallery).decode()
    assert page.count("<figure") == expected and page.count('data-selected="1"') == gens["selected"].sum()
    # Prefect artifacts: top images, a summary, the gallery link, and progress at 100%.
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    this_run = ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[runs.iloc[0]["flow_run_id"]]))
    with get_client(sync_client=True) as client:
        found = {a.key: a for a in client.read_artifacts(artifact_filter=this_run)}
    assert set(found) == {f"sample-spring-{k}" for k in ("top-images", "summary", "gallery", "progress")}
    assert found["sample-spring-progress"].data == 100.0
    assert summary.run_id in found["sample-spring-summary"].data

    # A rerun of the same campaign generates nothing and publishes no image or generations row.
    for name, value in sample_run.env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    before = objects(store, f"{assets}/runs/") | objects(store, f"{assets}/tables/generations/")
    try:
        again = run_campaign(RunRequest(campaign=f"{catalog}/campaigns/sample.yaml", triggered_by="test"))
    finally:
        get_settings.cache_clear()
    after = objects(store, f"{assets}/runs/") | objects(store, f"{assets}/tables/generations/")
    assert again.images_generated == 0 and again.images_skipped == expected
    assert again.gallery is None
    assert after - before == {again.manifest}
    assert publish.published_asset_ids(store, AssetsLayout.at(assets)) == set(gens["asset_id"])


def test_mirror_writes_out_dir_with_latest_link(sample_run, store, tmp_path):
    summary = sample_run.summary
    local = publish.copy_run(store, AssetsLayout.at(sample_run.assets).run(summary.run_id), tmp_path / "out")
    assert (tmp_path / "out" / "latest").resolve() == local.resolve()
    assert summary.images_generated == 64
    assert len(list((local / "images").glob("*.png"))) == 64
    assert pq.read_table(local / "generations.parquet").num_rows == 64
    assert json.loads((local / "_MANIFEST.json").read_text())["run_id"] == summary.run_id
    assert (local / "index.html").read_text().count("<figure") == 64


def test_bad_campaign_fails_before_any_image(campaign_env, store, tmp_path):
    from flows.campaign import run_campaign

    spec = tmp_path / "bad.yaml"
    spec.write_text("name: bad\nmatrix: {template: '{product} on {surface}', axes: {surface: []}}\n")
    with pytest.raises(ValueError, match="axis 'surface' is empty"):
        run_campaign(RunRequest(campaign=str(spec), triggered_by="test"))
    assert objects(store, f"{campaign_env['assets']}/") == set()


def test_a_pinned_run_quarantines_a_product_overwritten_since_its_snapshot(campaign_env, store, tmp_path):
    from adapters.catalog.sample import sample_png
    from flows.campaign import run_campaign
    from flows.catalog import refresh_catalog

    catalog = campaign_env["catalog"]
    spec = small_campaign(tmp_path, "pinned", 5)
    pinned = refresh_catalog(catalog=catalog)["snapshot_id"]
    store.put(f"{catalog}/products/rocket/image.png", sample_png("coffee", 300, "keep"))

    summary = run_campaign(RunRequest(campaign=str(spec), snapshot=pinned, triggered_by="test"))
    # The rocket is refused like any bad input (beside the broken mug); the other products are made.
    assert summary.quarantined == 2 and summary.images_generated == 3
    manifest = json.loads(store.get(summary.manifest))
    gens = publish.read_table(store, manifest, "generations")
    assert set(gens["product_id"]) == {"coffee-cup", "alarm-clock", "brand-logo"}
    runs = publish.read_table(store, manifest, "runs").iloc[0]
    assert runs["snapshot_id"] == pinned and runs["products"] == 3 and runs["quarantined"] == 2


def test_consistency_lands_in_the_tables_the_overview_and_the_gallery(sample_run, store):
    """Each image's look is measured where it is scored and its distance to its style set's look decided at the
    gather: the columns are filled in every table, the overview sheet and the gallery show them."""
    manifest = json.loads(store.get(sample_run.summary.manifest))
    gens = publish.read_table(store, manifest, "generations")
    live = gens[gens["status"] != "failed"]
    for column in ("background_palette", "background_lightness", "background_cct", "clip_embedding",
                   "consistency_distance", "palette_distance", "lighting_distance", "embedding_distance"):
        assert live[column].notna().all(), column
    assert set(live["consistency_within"]) == {"style_set"}
    assert all(len(e) == len(live.iloc[0]["clip_embedding"]) and abs(float(np.linalg.norm(e)) - 1) < 1e-3
               for e in live["clip_embedding"])
    assert all(1 <= len(p) <= 5 and p[0].startswith("#") for p in live["background_palette"])
    cells = publish.read_table(store, manifest, "cell_metrics")
    assert cells["mean_consistency_distance"].notna().all()
    assert cells["consistency_outliers"].sum() == gens["consistency_outlier"].sum()
    (run,) = publish.read_table(store, manifest, "runs").to_dict("records")
    spreads = dict(run["consistency_spreads"])
    assert set(spreads) == {"space-age", "earthy-textures", "campaign"}
    assert run["consistency_spread"] == pytest.approx(np.mean([float(spreads[s]) for s in ("space-age", "earthy-textures")]),
                                                      abs=1e-3)
    overview = Image.open(io.BytesIO(store.get(manifest["sheets"]["overview.jpg"])))
    assert overview.format == "JPEG" and overview.width > 4 * 160
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    overview.save(ARTIFACTS / "overview-sample.jpg")  # looked at by a person: the sample campaign's overview
    page = store.get(sample_run.summary.gallery).decode()
    assert page.count('data-distance="') == len(gens) and 'id="f-sort"' in page
