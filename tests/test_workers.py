"""End to end with real parts on loopback: a Prefect server, deployments from prefect.yaml,
a cpu worker and two GPU task workers, the S3 server; shards as task runs, one worker killed.

The stack and its two campaigns start with the session and run in the background
(tests/e2e_stack.py); the first two tests wait for those campaigns and check what they did."""

from __future__ import annotations

import json
import time

import pytest

from adapters.infra import lake
from adapters.infra.parquet_io import read_parquet_bytes
from adapters.steps.heartbeats import read_beats
from tasks.layout import AssetsLayout
from tests.e2e_stack import IMAGES, LEASE, WAIT, api, published, run_id_of, shard_attempt, shard_runs, start_campaign
from tests.helpers import ARTIFACTS, CHROMIUM, chromium_page

pytestmark = pytest.mark.e2e


@pytest.fixture
def stack(worker_campaigns):
    return worker_campaigns.stack.result(timeout=WAIT)


@pytest.mark.early("worker_campaigns")
def test_campaign_from_the_api_runs_shards_on_both_gpu_workers(worker_campaigns, stack):
    parent, elapsed = worker_campaigns.on_both_workers.result(timeout=WAIT)
    assert parent.state.is_completed(), parent.state.message
    manifest, gens = published(stack, run_id_of(stack, parent.id))
    assert len(gens) == IMAGES and gens["asset_id"].is_unique
    assert set(gens["worker"]) == {"gpu-1", "gpu-2"}
    for r in gens.itertuples():
        assert stack["store"].exists(r.output_key)
    # Four shards, each completed once (a busy machine may make one retry, which is still correct).
    children = shard_runs(stack, run_id_of(stack, parent.id))
    done = sorted(shard_attempt(c)[0] for c in children if c.state.is_completed())
    assert done == ["00000", "00001", "00002", "00003"]
    print(f"two-worker campaign: {IMAGES} images in {elapsed:.1f} s")


@pytest.mark.early("worker_campaigns")
def test_each_gpu_worker_loads_its_engine_once_for_all_its_shards(worker_campaigns, stack):
    """Warm workers: every shard a worker ran came from one process, which had loaded the engine once."""
    parent, _ = worker_campaigns.on_both_workers.result(timeout=WAIT)
    beats = read_beats(stack["store"], AssetsLayout.at(stack["assets"]).run(run_id_of(stack, parent.id)))
    assert len(beats) >= 4 and all(b.state == "done" for b in beats)
    by_worker: dict[str, list] = {}
    for b in beats:
        by_worker.setdefault(b.worker, []).append(b)
    assert set(by_worker) == {"gpu-1", "gpu-2"}
    for worker, mine in by_worker.items():
        assert len({b.pid for b in mine}) == 1, f"{worker} ran its shards in several processes"
        assert {b.engine_loads for b in mine} == {1}, f"{worker} loaded its engine again: {mine}"
        assert sorted(b.shards_served for b in mine) == list(range(1, len(mine) + 1)), mine
    # Four shards over two workers: at least one worker served several, still with its one load.
    assert max(len(mine) for mine in by_worker.values()) >= 2


@pytest.mark.early("worker_campaigns")
def test_killed_worker_shard_is_retried_with_nothing_lost_or_duplicated(worker_campaigns, stack):
    parent, victim, after_kill = worker_campaigns.with_a_killed_worker.result(timeout=WAIT)
    assert parent.state.is_completed(), parent.state.message
    _, gens = published(stack, run_id_of(stack, parent.id))
    assert len(gens) == IMAGES and gens["asset_id"].is_unique
    assert set(gens["seed"]) == {3, 4}
    runs = shard_runs(stack, run_id_of(stack, parent.id))
    states = {shard_attempt(c): c.state.type.value for c in runs}
    shard, _ = shard_attempt(victim)
    assert states[(shard, 1)] == "CRASHED", states
    assert states.get((shard, 2)) == "COMPLETED", states
    # The other worker took the dead worker's shard over; the dead one's last beat says it never finished.
    beats = {b.task_run_id: b for b in read_beats(stack["store"], AssetsLayout.at(stack["assets"]).run(run_id_of(stack, parent.id)))}
    retried = next(c for c in runs if shard_attempt(c) == (shard, 2))
    dead, redo = beats[str(victim.id)], beats[str(retried.id)]
    assert dead.state == "running" and redo.state == "done"
    assert redo.worker != dead.worker and redo.pid != dead.pid
    print(f"killed worker: campaign finished {after_kill:.1f} s after the kill (lease {LEASE} s)")


def test_scheduled_deployment_and_parameter_validation(stack):
    from prefect.client.orchestration import get_client

    with api(stack), get_client(sync_client=True) as client:
        scheduled = client.read_deployment_by_name("run-campaign/campaign-scheduled")
        (schedule,) = scheduled.schedules
        assert schedule.schedule.cron == "0 6 * * 1" and schedule.schedule.timezone == "Europe/Paris"
        assert schedule.active
        ui = client.read_deployment_by_name("run-campaign/campaign")
        assert ui.enforce_parameter_schema
        assert "request" in ui.parameter_openapi_schema["properties"]
    with pytest.raises(Exception, match="(?i)validation|parameters") as err:
        start_campaign(stack, triggered_by="cron", top_k="many")
    assert "triggered_by" in str(err.value) or "top_k" in str(err.value)


def test_ui_shows_the_campaign_parameters_as_a_form(stack):
    """The Prefect UI's custom-run page for `campaign` renders RunRequest as form fields (screenshot kept)."""
    from pathlib import Path

    from prefect.client.orchestration import get_client

    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    with api(stack), get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("run-campaign/campaign")
    base = stack["stack"].api_url.removesuffix("/api")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with chromium_page(sync_api, viewport={"width": 1280, "height": 1600}) as page:
        page.goto(f"{base}/deployments/deployment/{deployment.id}/run", timeout=60_000)
        # Field descriptions come from RunRequest: the form was built from its schema.
        page.get_by_text("Plan and report counts", exact=False).first.wait_for(timeout=60_000)
        page.screenshot(path=str(ARTIFACTS / "prefect-run-form.png"), full_page=True)
        text = page.inner_text("body")
        for label in ("Campaign", "Triggered By", "Dry Run", "Only these product ids", "Replace the campaign's seeds",
                      "Model profile, overriding", "a name under the catalog's campaigns/"):
            assert label in text, label
        # Pre-filled with the deployment's parameters from prefect.yaml.
        values = page.locator("input, textarea").evaluate_all("els => els.map(e => e.value)")
        assert "sample" in values, values
    assert (ARTIFACTS / "prefect-run-form.png").stat().st_size > 20_000


def test_import_triggers_a_refresh_of_that_catalog(worker_campaigns, stack, tmp_path):
    """`stylematrix catalog import` against the server emits catalog.imported; catalog-refresh runs on it."""
    worker_campaigns.with_a_killed_worker.exception(timeout=WAIT)  # the cpu worker runs one flow at a time
    import subprocess
    import sys

    from PIL import Image
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from skimage import data as samples

    folder = tmp_path / "materials" / "products" / "astronaut-mug"
    folder.mkdir(parents=True)
    Image.fromarray(samples.astronaut()).resize((256, 256)).save(folder / "image.png")
    with api(stack), get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("refresh-catalog/catalog-refresh")
        before = {r.id for r in client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])))}
    env = {**stack["stack"].env, "PREFECT_API_URL": stack["stack"].api_url}
    result = subprocess.run([sys.executable, "-m", "flows.cli", "catalog", "import", str(tmp_path / "materials"),
                             "--catalog", stack["catalog"]], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "emitted stylematrix.catalog.imported" in result.stdout

    deadline = time.monotonic() + 240
    with api(stack), get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            runs = [r for r in client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])))
                    if r.id not in before]
            if runs and runs[0].state.is_final():
                break
            time.sleep(1)
    assert runs, "no catalog-refresh run was started by the import"
    (run,) = runs
    assert run.parameters == {"catalog": stack["catalog"]}
    assert run.state.is_completed(), run.state.message
    latest = stack["store"].get(f"{stack['catalog']}/_snapshots/LATEST").decode().strip()
    products = stack["store"].get(f"{stack['catalog']}/_snapshots/{latest}/products.parquet")
    assert "astronaut-mug" in set(read_parquet_bytes(products).column("product_id").to_pylist())


def test_catalog_refresh_starts_a_style_scan_of_new_style_sets(worker_campaigns, stack):
    """A committed refresh emits stylematrix.catalog.updated; the scan-style deployment scans what is new."""
    worker_campaigns.with_a_killed_worker.exception(timeout=WAIT)  # scans run on the gpu workers: after the campaigns
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.deployments import run_deployment

    from tests.helpers import encode, photo

    store, catalog, assets = stack["store"], stack["catalog"], stack["assets"]
    store.put(f"{catalog}/styles/e2e-tiles/tiles.png", encode(photo("chelsea", 96)), content_type="image/png")
    with api(stack), get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("scan-style/scan-style")
        before = {r.id for r in client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])))}
        run_deployment("refresh-catalog/catalog-refresh", parameters={"catalog": catalog}, timeout=0, as_subflow=False)

    def committed() -> list[str]:
        return [o.uri for o in store.list(f"{assets}/scans/e2e-tiles/") if o.uri.endswith("/_SCAN.json")]

    deadline = time.monotonic() + 480
    with api(stack), get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            runs = [r for r in client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])))
                    if r.id not in before]
            if committed() and any(r.state.is_final() for r in runs):
                break
            time.sleep(2)
    assert runs, "no scan-style run was started by the catalog refresh"
    mine = [r for r in runs if r.parameters.get("catalog") == catalog]
    assert mine and all(r.parameters.get("triggered_by") == "event" and r.parameters.get("all_styles") for r in mine)
    assert any(r.state.is_completed() for r in mine), [r.state for r in mine]
    (commit,) = committed()
    record = json.loads(store.get(commit))
    assert record["profile"] == "tiny" and len(record["curves"]["scales"]) == 13  # the default sweep, 0 .. 1.2
    rows = lake.read(lake.Lake.of(store, AssetsLayout.at(assets)), "style_scans", where=("scan_id", record["scan_id"])).to_pylist()
    assert {r["style_id"] for r in rows} == {"e2e-tiles"} and {r["triggered_by"] for r in rows} == {"event"}
