"""A whole style scan on the tiny kit through the `scan-style` flow, and `ip_scale: auto` in a campaign
that reads it. The tiny kit's random weights make the curves meaningless: these tests prove the
machinery (what is written, what is skipped, what a campaign takes from it)."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from adapters.infra import lake
from adapters.steps import publish
from catalogs.models import RunRequest
from tasks.layout import AssetsLayout
from tasks.tables import STYLE_SCANS
from tests.helpers import ARTIFACTS, encode, photo

SCALES = [0.0, 0.6, 1.2]  # a short sweep: 3 scales x 3 shapes x 2 prompts x 1 seed = 18 images at 64 px


def scan(**kwargs):
    from flows.style_scan import scan_style

    return scan_style(scales=SCALES, seeds=[0], triggered_by="test", **kwargs)


def keys(store, prefix: str) -> set[str]:
    return {o.uri for o in store.list(prefix)}


def test_scan_writes_table_plot_and_sheet_once_and_again_when_a_reference_changes(campaign_env, store):
    from flows.catalog import refresh_catalog

    catalog, assets = campaign_env["catalog"], campaign_env["assets"]
    (first,) = scan(styles=["space-age"])
    assert first["status"] == "scanned" and first["style_id"] == "space-age"
    assert first["recommended"] in SCALES
    assert first["threshold"] is None or first["threshold"] in SCALES[1:]

    ARTIFACTS.mkdir(parents=True, exist_ok=True)  # kept to look at: out/test-artifacts/style-scan-*
    (ARTIFACTS / "style-scan-curves.png").write_bytes(store.get(first["plot"]))
    (ARTIFACTS / "style-scan-sheet.jpg").write_bytes(store.get(first["sheet"]))
    plot = Image.open(io.BytesIO(store.get(first["plot"])))
    assert plot.format == "PNG" and plot.size[0] >= 600
    sheet = Image.open(io.BytesIO(store.get(first["sheet"])))
    assert sheet.format == "JPEG" and sheet.size[1] > 3 * 96  # one row of probe images per scale
    rows = lake.read(lake.Lake.of(store, AssetsLayout.at(assets)), "style_scans", where=("scan_id", first["scan_id"]))
    rows = sorted(rows.drop_columns([lake.PARTITION]).to_pylist(), key=lambda r: r["ip_scale"])
    assert [r["ip_scale"] for r in rows] == SCALES
    assert list(rows[0]) == [c.name for c in STYLE_SCANS]
    assert {r["scan_id"] for r in rows} == {first["scan_id"]} and {r["images"] for r in rows} == {6}
    assert {r["recommended_scale"] for r in rows} == {first["recommended"]}
    for measure in ("clip_style", "clip_text", "edge_f1", "product_ssim", "copy_ssim", "copy_patch"):
        assert all(r[f"mean_{measure}"] is not None for r in rows), measure
    assert json.loads(rows[0]["probe"])["scales"] == SCALES and rows[0]["triggered_by"] == "test"
    assert rows[0]["reference_sha256s"] and rows[0]["profile"] == "tiny"
    assert first["table"] == f"{assets}/tables/style_scans"

    # The scan's Prefect artifact shows the plot and the sheet, and says where they are stored.
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    this_run = ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[rows[0]["flow_run_id"]]))
    with get_client(sync_client=True) as client:
        (artifact,) = [a for a in client.read_artifacts(artifact_filter=this_run) if a.key == "space-age-style-scan"]
    assert "![curves](data:image/png;base64," in artifact.data and "![probe sheet](data:image/jpeg;base64," in artifact.data
    assert first["plot"] in artifact.data and first["sheet"] in artifact.data and len(artifact.data) < 1_500_000

    # Unchanged style set: read, not scanned; nothing new is written.
    before = keys(store, f"{assets}/")
    (again,) = scan(styles=["space-age"])
    assert again["status"] == "unchanged" and again["scan_id"] == first["scan_id"]
    assert keys(store, f"{assets}/") == before

    # A changed reference scans again under a new id.
    (ref,) = [o.uri for o in store.list(f"{catalog}/styles/space-age/") if not o.uri.endswith(".yaml")]
    store.put(ref, encode(photo("coffee", 96)), content_type="image/png")
    refresh_catalog(catalog=catalog)
    (changed,) = scan(styles=["space-age"])
    assert changed["status"] == "scanned" and changed["scan_id"] != first["scan_id"]


def test_scan_names_what_cannot_be_scanned(campaign_env):
    with pytest.raises(ValueError, match=r"style sets \['no-such-style'\] cannot be scanned \(no-such-style: not in the catalog\)"):
        scan(styles=["no-such-style"])
    with pytest.raises(ValueError, match="unknown model profile 'nope'"):
        scan(styles=["space-age"], profile="nope")


def test_campaign_with_auto_takes_the_scans_scale_and_records_it(campaign_env, store, tmp_path):
    from flows.campaign import run_campaign

    assets = campaign_env["assets"]
    spec = tmp_path / "auto.yaml"
    spec.write_text("name: auto\nproducts: {ids: [rocket]}\nstyles: {ids: [space-age, earthy-textures]}\n"
                    "matrix: {template: '{product} on sand', seeds: [1]}\n"
                    "generation: {profile: tiny, width: 64, height: 64, steps: 2, ip_scale: auto}\n")

    # No scan yet: the run fails before generating anything, naming the command.
    with pytest.raises(ValueError, match=r"run `stylematrix style scan (earthy-textures space-age|space-age earthy-textures) --profile tiny` first"):
        run_campaign(RunRequest(campaign=str(spec), triggered_by="test"))
    assert not keys(store, f"{assets}/runs/")

    results = {r["style_id"]: r for r in scan(all_styles=True)}
    assert set(results) == {"space-age", "earthy-textures"}
    summary = run_campaign(RunRequest(campaign=str(spec), triggered_by="test"))
    assert summary.images_generated == 2
    manifest = json.loads(store.get(summary.manifest))
    gens = publish.read_table(store, manifest, "generations")
    runs = publish.read_table(store, manifest, "runs")
    assert json.loads(runs.iloc[0]["parameters"])["generation"]["ip_scale"] == "auto"  # what was asked for
    for row in gens.itertuples():
        assert row.ip_scale == pytest.approx(results[row.style_id]["recommended"])
        assert row.ip_scale_scan_id == results[row.style_id]["scan_id"]
