"""End to end with real parts on loopback: a Prefect server, deployments from prefect.yaml,
a cpu worker and two gpu workers, the S3 server; shards as child flow runs, one worker killed."""

from __future__ import annotations

import json
import signal
import time
import uuid

import psutil
import pytest

from adapters import publish
from adapters.kit import ensure_tiny_kit
from adapters.local_s3 import free_port
from adapters.parquet_io import read_parquet_bytes
from adapters.sample_catalog import seed_sample_catalog
from adapters.settings import child_env
from adapters.storage import S3Store

pytestmark = pytest.mark.e2e

CAMPAIGN = (
    "name: e2e\nproducts: {ids: [rocket, coffee-cup]}\nstyles: {ids: [space-age, earthy-textures]}\n"
    "matrix: {template: '{product} on {surface}', axes: {surface: [sand, slate]}, seeds: [1, 2]}\n"
    "generation: {profile: tiny, width: 64, height: 64, steps: 2, batch_size: 4}\n"
)
IMAGES = 2 * 2 * 2 * 2


@pytest.fixture(scope="module")
def stack(s3_server, tmp_path_factory):
    from flows.serve import start_stack

    tmp = tmp_path_factory.mktemp("e2e")
    suffix = uuid.uuid4().hex[:8]
    catalog, assets = f"s3://e2e-catalog-{suffix}", f"s3://e2e-assets-{suffix}"
    from adapters.settings import Settings

    store = S3Store.from_settings(Settings(s3_endpoint=s3_server.endpoint))
    for uri in (catalog, assets):
        store.ensure_bucket(uri.removeprefix("s3://"))
    seed_sample_catalog(store, catalog)
    store.put(f"{catalog}/campaigns/e2e.yaml", CAMPAIGN.encode())
    models = tmp / "models"
    ensure_tiny_kit(models)  # built once here, so the workers do not race to build it
    env = child_env({
        "AWS_ENDPOINT_URL_S3": s3_server.endpoint,
        "STYLEMATRIX_CATALOG": catalog,
        "STYLEMATRIX_ASSETS": assets,
        "STYLEMATRIX_MODEL_CACHE": str(models),
        "STYLEMATRIX_DEVICE": "cpu",
        "STYLEMATRIX_IMAGES_PER_SHARD": "4",  # 4 shards: enough for both gpu workers
        "STYLEMATRIX_SHARD_POLL_SECONDS": "1",
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
    })
    prefect = start_stack(tmp / "prefect", free_port(), gpus=2, env=env, log_dir=tmp / "logs")
    try:
        yield {"stack": prefect, "store": store, "catalog": catalog, "assets": assets}
    finally:
        prefect.stop()


def api(stack):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    return temporary_settings({PREFECT_API_URL: stack["stack"].api_url})


def start_campaign(stack, **request):
    from prefect.deployments import run_deployment

    with api(stack):
        return run_deployment("run-campaign/campaign", parameters={"request": {"campaign": "e2e", **request}},
                              timeout=0, as_subflow=False)


def wait_final(stack, flow_run_id, timeout: float):
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    with api(stack), get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            run = client.read_flow_run(flow_run_id)
            if run.state and run.state.is_final():
                return run
            time.sleep(1)
    raise AssertionError(f"flow run {flow_run_id} did not finish in {timeout:.0f} s; logs in {stack['stack'].log_dir}")


def shard_runs(stack, parent_id):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    with api(stack), get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent_id])))
    return [r for r in runs if "-shard-" in r.name]


def published(stack, run_id):
    store, assets = stack["store"], stack["assets"]
    manifest = json.loads(store.get(publish.run_uri(assets, run_id, publish.MANIFEST)))
    return manifest, publish.read_table(store, manifest, "generations")


def run_id_of(stack, flow_run_id) -> str:
    for m in publish.read_manifests(stack["store"], stack["assets"]):
        runs = publish.read_table(stack["store"], m, "runs")
        if str(flow_run_id) in set(runs["flow_run_id"]):
            return m["run_id"]
    raise AssertionError(f"no committed run for flow run {flow_run_id}")


def test_campaign_from_the_api_runs_shards_on_both_gpu_workers(stack):
    started = time.monotonic()
    parent = wait_final(stack, start_campaign(stack, triggered_by="api").id, timeout=600)
    elapsed = time.monotonic() - started
    assert parent.state.is_completed(), parent.state.message
    manifest, gens = published(stack, run_id_of(stack, parent.id))
    assert len(gens) == IMAGES and gens["asset_id"].is_unique
    assert set(gens["worker"]) == {"gpu-1", "gpu-2"}
    for r in gens.itertuples():
        assert stack["store"].exists(r.output_key)
    # Four shards, each completed once (a busy machine may make one retry, which is still correct).
    children = shard_runs(stack, parent.id)
    done = sorted(c.name.split("-shard-")[1].split("-try-")[0] for c in children if c.state.is_completed())
    assert done == ["00000", "00001", "00002", "00003"]
    print(f"two-worker campaign: {IMAGES} images in {elapsed:.1f} s")


def test_killed_worker_shard_is_retried_with_nothing_lost_or_duplicated(stack):
    parent_id = start_campaign(stack, seeds=[3, 4], triggered_by="api").id
    victim = None
    deadline = time.monotonic() + 300
    while victim is None and time.monotonic() < deadline:
        running = [c for c in shard_runs(stack, parent_id) if c.state and c.state.is_running()]
        if running and running[0].infrastructure_pid:
            time.sleep(3)  # let its first heartbeat reach the server
            victim = running[0]
        else:
            time.sleep(0.5)
    assert victim is not None, "no shard started running"
    child_pid = int(str(victim.infrastructure_pid).rsplit(":", 1)[-1])
    worker = psutil.Process(child_pid).parent()
    # A machine dying: the worker and the shard process vanish at once, with no goodbye.
    for proc in [worker, *worker.children(recursive=True)]:
        proc.send_signal(signal.SIGKILL)

    parent = wait_final(stack, parent_id, timeout=600)
    assert parent.state.is_completed(), parent.state.message
    _, gens = published(stack, run_id_of(stack, parent.id))
    assert len(gens) == IMAGES and gens["asset_id"].is_unique
    assert set(gens["seed"]) == {3, 4}
    states = {c.name: c.state.type.value for c in shard_runs(stack, parent.id)}
    assert states[victim.name] == "CRASHED"
    retry = victim.name.replace("-try-1", "-try-2")
    assert states.get(retry) == "COMPLETED", states


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
    import shutil
    import tempfile
    from pathlib import Path

    from prefect.client.orchestration import get_client

    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    with api(stack), get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("run-campaign/campaign")
    base = stack["stack"].api_url.removesuffix("/api")
    artifacts = Path(__file__).resolve().parents[1] / "out" / "test-artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    flags = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync"]
    with tempfile.TemporaryDirectory() as profile, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(profile, executable_path=chromium, headless=True, args=flags,
                                                        viewport={"width": 1280, "height": 1600})
        try:
            page = browser.new_page()
            page.goto(f"{base}/deployments/deployment/{deployment.id}/run", timeout=60_000)
            # Field descriptions come from RunRequest: the form was built from its schema.
            page.get_by_text("Plan and report counts", exact=False).first.wait_for(timeout=60_000)
            page.screenshot(path=str(artifacts / "prefect-run-form.png"), full_page=True)
            text = page.inner_text("body")
            for label in ("Campaign", "Triggered By", "Dry Run", "Only these product ids", "Replace the campaign's seeds",
                          "Model profile, overriding", "a name under the catalog's campaigns/"):
                assert label in text, label
            # Pre-filled with the deployment's parameters from prefect.yaml.
            values = page.locator("input, textarea").evaluate_all("els => els.map(e => e.value)")
            assert "sample" in values, values
        finally:
            browser.close()
    assert (artifacts / "prefect-run-form.png").stat().st_size > 20_000


def test_import_triggers_a_refresh_of_that_catalog(stack, tmp_path):
    """`stylematrix catalog import` against the server emits catalog.imported; catalog-refresh runs on it."""
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
