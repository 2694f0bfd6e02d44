"""Nothing lost when the Prefect server restarts mid-campaign.

A server on PostgreSQL, one GPU task worker, and a campaign of three shards started with `stylematrix run`
against that server: the worker runs the first shard, the other two wait in the server's memory. The
server is killed (SIGKILL) while that shard runs and started again on the same port and database. The
shards it forgot are handed out again, and the campaign completes with every image once, each
matching its sha256. The API requires basic auth, as a fleet's does; no secret ends up in what was written.
"""

from __future__ import annotations

import base64
import hashlib
import signal
import subprocess
import time
import urllib.error
import urllib.request
import uuid

import psutil
import pytest

from adapters.catalog.sample import seed_sample_catalog
from adapters.catalog.snapshots import refresh
from adapters.infra.local_s3 import free_port
from adapters.steps import publish
from adapters.steps.heartbeats import read_beats
from tasks.layout import AssetsLayout
from tests.helpers import CLI, ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CAMPAIGN = (
    "name: restart\nproducts: {ids: [rocket, coffee-cup]}\nstyles: {ids: [space-age]}\n"
    "matrix: {template: '{product} on {surface}', axes: {surface: [sand, slate, grass]}, seeds: [1, 2]}\n"
    "generation: {profile: tiny, width: 64, height: 64, steps: 2, batch_size: 4}\n"
)
IMAGES = 2 * 3 * 2


def _kill_tree(proc: subprocess.Popen) -> None:
    """A crash: the process and everything it started vanish at once."""
    victims = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    for victim in victims:
        victim.send_signal(signal.SIGKILL)
    psutil.wait_procs(victims, timeout=10)


def _wait(condition, timeout: float, what: str, *, campaign: subprocess.Popen, log) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert campaign.poll() is None, f"the campaign exited ({campaign.returncode}) before {what}:\n{log()}"
        assert time.monotonic() < deadline, f"{what} not seen within {timeout:.0f} s:\n{log()}"
        time.sleep(0.3)


def test_a_server_restart_mid_campaign_loses_no_shard(s3_server, store, model_cache, postgres, tmp_path):
    from adapters.infra.settings import child_env
    from flows.serve import PrefectStack

    suffix = uuid.uuid4().hex[:8]
    catalog, assets = f"s3://restart-catalog-{suffix}", f"s3://restart-assets-{suffix}"
    for uri in (catalog, assets):
        store.ensure_bucket(uri.removeprefix("s3://"))
    seed_sample_catalog(store, catalog)
    store.put(f"{catalog}/campaigns/restart.yaml", CAMPAIGN.encode())
    refresh(store, catalog)
    env = {**child_env(), "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "AWS_ENDPOINT_URL_S3": s3_server.endpoint,
           "STYLEMATRIX_CATALOG": catalog, "STYLEMATRIX_ASSETS": assets, "STYLEMATRIX_MODEL_CACHE": str(model_cache),
           "STYLEMATRIX_DEVICE": "cpu", "STYLEMATRIX_IMAGES_PER_SHARD": "4", "STYLEMATRIX_SHARD_POLL_SECONDS": "0.5",
           "STYLEMATRIX_SHARD_HEARTBEAT_SECONDS": "1", "STYLEMATRIX_SHARD_LEASE_SECONDS": "15",
           "STYLEMATRIX_SHARD_FORGOTTEN_SECONDS": "5", "OMP_NUM_THREADS": "1"}
    secret = f"fleet:{uuid.uuid4().hex}"  # the API's basic auth, as a fleet's server requires
    stack = PrefectStack(home=tmp_path / "prefect", port=free_port(), env=env, log_dir=tmp_path / "logs",
                         database_url=postgres.database(f"restart_{suffix}"), auth_string=secret)
    campaign = None
    try:
        stack.start_server()
        _check_auth(stack.api_url, secret)
        stack.register_task_storage(f"{assets}/_prefect/tasks")
        stack.start_gpu_worker("gpu-1")
        log_file = tmp_path / "campaign.log"
        with open(log_file, "wb") as out:
            campaign = subprocess.Popen(
                [*CLI, "run", "--campaign", "restart"], cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
                env=stack._env({"STYLEMATRIX_SHARD_WORKERS": "true", "STYLEMATRIX_OUT_DIR": str(tmp_path / "out")}))

        def log() -> str:
            return log_file.read_text()[-4000:]

        def beats() -> list:
            runs = {o.key.split("/")[1] for o in store.list(f"{assets}/runs/") if "/workers/" in o.key}
            return [b for r in runs for b in read_beats(store, AssetsLayout.at(assets).run(r))]

        _wait(lambda: beats(), 300, "a shard running on the GPU worker", campaign=campaign, log=log)
        assert len(beats()) == 1  # one worker: the other two shards wait in the server's memory
        _kill_tree(stack.processes["server"])
        stack.start_server()
        _wait(lambda: len(beats()) >= 2, 180, "a forgotten shard handed out again", campaign=campaign, log=log)
        assert campaign.wait(timeout=300) == 0, log()
    finally:
        if campaign is not None and campaign.poll() is None:
            campaign.kill()
        stack.stop()
    assert "no longer queues it" in log()
    (manifest,) = publish.read_manifests(store, AssetsLayout.at(assets))
    rows = publish.read_table(store, manifest, "generations")
    assert len(rows) == IMAGES and rows["asset_id"].is_unique
    for row in rows.itertuples():
        assert hashlib.sha256(store.get(row.output_key)).hexdigest() == row.sha256
    # No secret in a log, a table, an artifact's source or anything else the run wrote.
    secrets = {secret.encode(), secret.split(":")[1].encode(), postgres.password.encode()}
    written = [p.read_bytes() for p in tmp_path.rglob("*.log")] + [store.get(o.uri) for o in store.list(f"{assets}/")]
    assert len(written) > IMAGES
    assert not [s for s in secrets for blob in written if s in blob]


def _check_auth(api_url: str, secret: str) -> None:
    """The API refuses a request without the auth string, and a wrong one; it takes the right one."""
    def status(headers: dict[str, str]) -> int:
        request = urllib.request.Request(f"{api_url}/flows/filter", data=b"{}", method="POST",
                                         headers={"Content-Type": "application/json", **headers})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code

    def basic(value: str) -> dict[str, str]:
        return {"Authorization": "Basic " + base64.b64encode(value.encode()).decode()}

    assert status({}) == 401
    assert status(basic("fleet:wrong")) == 401
    assert status(basic(secret)) == 200
