"""Nothing lost when a piece of the fleet restarts mid-campaign.

- The Prefect server, then its PostgreSQL. A server on PostgreSQL, one GPU task worker, and a campaign of
  four shards started with `stylematrix run` against that server: the worker runs the first shard, the other
  three wait in the server's memory. The server is killed (SIGKILL) while that shard runs and started again on
  the same port and database: the shards it forgot are handed out again. Then, while the second shard runs,
  PostgreSQL is stopped as a crash stops it (`pg_ctl stop -m immediate`: no checkpoint, recovery on start),
  left down longer than a shard takes, and started again on the same data and port: the server and the
  workers stay up and wait it out. The API requires basic auth, as a fleet's does; no secret ends up in
  what was written.
- The campaign's own worker: its cpu worker and flow-run process killed; the deployment reruns it.

Either way the campaign completes with every image once, each matching its sha256."""

from __future__ import annotations

import hashlib
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from adapters.catalog.sample import seed_sample_catalog
from adapters.catalog.snapshots import refresh
from adapters.infra.local_s3 import free_port
from adapters.steps import publish
from adapters.steps.heartbeats import read_beats
from tasks.layout import AssetsLayout
from tests.helpers import CLI, ROOT, check_api_auth

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CAMPAIGN = (
    "name: restart\nproducts: {ids: [rocket, coffee-cup]}\nstyles: {ids: [space-age]}\n"
    "matrix: {template: '{product} on {surface}', axes: {surface: [sand, slate, grass]}, seeds: [1, 2]}\n"
    "generation: {profile: tiny, width: 64, height: 64, steps: 2, batch_size: 4}\n"
)
IMAGES = 2 * 3 * 2
DATABASE_DOWN = 20  # seconds PostgreSQL stays down: longer than a shard takes, so one ends while it is down


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


def _buckets_and_env(store, s3_server, model_cache) -> tuple[str, str, dict[str, str]]:
    """A catalog with the restart campaign and a snapshot, an assets bucket, and the environment of the stack's
    processes: shards of 4 images, 1 s heartbeats, a 15 s lease."""
    from adapters.infra.settings import child_env

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
           "STYLEMATRIX_SHARD_FORGOTTEN_SECONDS": "5", "PREFECT_WORKER_QUERY_SECONDS": "1", "OMP_NUM_THREADS": "1",
           # One code version for every process of the test, as a deployment sets it: a file edited in the working
           # copy while it runs would otherwise give a rerun another version than its GPU worker (`-dirty`).
           "STYLEMATRIX_CODE_VERSION": f"restart-{suffix}"}
    return catalog, assets, env


def _beats(store, assets: str) -> list:
    """Every shard heartbeat of every run in `assets`: one per shard task run a GPU worker took."""
    runs = {o.key.split("/")[1] for o in store.list(f"{assets}/runs/") if "/workers/" in o.key}
    return [b for r in runs for b in read_beats(store, AssetsLayout.at(assets).run(r))]


def _every_image_once(store, assets: str) -> None:
    """One committed run, with every image of the campaign once, each matching its sha256."""
    (manifest,) = publish.read_manifests(store, AssetsLayout.at(assets))
    rows = publish.read_table(store, manifest, "generations")
    assert len(rows) == IMAGES and rows["asset_id"].is_unique
    for row in rows.itertuples():
        assert hashlib.sha256(store.get(row.output_key)).hexdigest() == row.sha256


@pytest.fixture
def own_postgres() -> Iterator:
    """A PostgreSQL cluster of this test's own: it is stopped mid-test, and the session's serves other servers."""
    from adapters.infra.postgres import LocalPostgres

    folder = Path(tempfile.mkdtemp(prefix="stylematrix-pg-restart-", dir="/tmp"))
    folder.chmod(0o711)
    cluster = LocalPostgres(folder / "cluster", free_port())
    try:
        yield cluster.start()
    finally:
        cluster.stop("immediate")
        shutil.rmtree(folder, ignore_errors=True)


def test_a_server_restart_then_a_database_restart_mid_campaign_lose_no_shard(s3_server, store, model_cache,
                                                                              own_postgres, tmp_path):
    from flows.serve import PrefectStack

    _, assets, env = _buckets_and_env(store, s3_server, model_cache)
    secret = f"fleet:{uuid.uuid4().hex}"  # the API's basic auth, as a fleet's server requires
    stack = PrefectStack(home=tmp_path / "prefect", port=free_port(), env=env, log_dir=tmp_path / "logs",
                         database_url=own_postgres.url, auth_string=secret)
    campaign = None
    log_file = tmp_path / "campaign.log"

    def log() -> str:
        return log_file.read_text()[-4000:]

    def shards_started() -> int:
        return len(_beats(store, assets))

    try:
        stack.start_server()
        check_api_auth(stack.api_url, secret)
        stack.register_task_storage(f"{assets}/_prefect/tasks")
        stack.start_gpu_worker("gpu-1")
        with open(log_file, "wb") as out:
            campaign = subprocess.Popen(
                [*CLI, "run", "--campaign", "restart"], cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
                env=stack._env({"STYLEMATRIX_SHARD_WORKERS": "true", "STYLEMATRIX_OUT_DIR": str(tmp_path / "out")}))
        _wait(lambda: shards_started(), 300, "a shard running on the GPU worker", campaign=campaign, log=log)
        assert shards_started() == 1  # one worker: the other shards wait in the server's memory
        _kill_tree(stack.processes["server"])  # the server, while the first shard runs
        stack.start_server()
        _wait(lambda: shards_started() >= 2, 180, "a forgotten shard handed out again", campaign=campaign, log=log)
        own_postgres.stop("immediate")  # its database, while the second runs: no checkpoint, recovery on start
        time.sleep(DATABASE_DOWN)
        own_postgres.start()
        assert stack.processes["server"].poll() is None  # the Prefect server waited it out
        _wait(lambda: shards_started() >= 3, 180, "the last shard started", campaign=campaign, log=log)
        assert campaign.wait(timeout=300) == 0, log()
    finally:
        if campaign is not None and campaign.poll() is None:
            campaign.kill()
        stack.stop()
    assert "no longer queues it" in log()
    _every_image_once(store, assets)
    # No secret in a log, a table, an artifact's source or anything else the run wrote.
    secrets = {secret.encode(), secret.split(":")[1].encode(), own_postgres.password.encode()}
    written = [p.read_bytes() for p in tmp_path.rglob("*.log")] + [store.get(o.uri) for o in store.list(f"{assets}/")]
    assert len(written) > IMAGES
    assert not [s for s in secrets for blob in written if s in blob]


def test_a_campaign_whose_worker_dies_is_rerun_by_its_deployment_and_makes_every_image_once(
        s3_server, store, model_cache, postgres, tmp_path):
    """The machine of the campaign's cpu worker dies mid-campaign: the worker and the campaign's flow-run process
    are SIGKILLed while a shard runs, and a new cpu worker starts (as systemd's `Restart=always` starts one).
    The silent run is crashed by `crash-silent-flow-runs`, rescheduled by `redo-crashed-campaigns`, and its
    rerun, the same run, completes: one commit, every image once, sha256 intact, nothing left to a dead run.

    The server runs as production runs it: the API and its background services in two processes, on Redis,
    with production's zombie window (Settings.zombie_seconds). The automations live in the services process
    and see the API's events only through Redis. A crash is not the end of a deployed campaign: the run is
    waited on until it completes, or ends for good (failed, cancelled, or crashed on its last allowed run)."""
    from prefect.deployments import run_deployment

    from adapters.infra.local_redis import LocalRedis
    from adapters.infra.settings import Settings
    from flows.serve import PrefectStack
    from flows.zombies import CAMPAIGN_RUNS
    from tests.e2e_stack import api, wait_final

    _, assets, env = _buckets_and_env(store, s3_server, model_cache)
    redis = LocalRedis(tmp_path / "redis", free_port())
    stack = PrefectStack(home=tmp_path / "prefect", port=free_port(), env=env, log_dir=tmp_path / "logs",
                         database_url=postgres.database(f"worker_{uuid.uuid4().hex[:8]}"))
    handle = {"stack": stack}
    try:
        stack.broker_url = redis.start().url
        stack.start_server()
        assert stack.processes["services"].poll() is None
        stack.register_task_storage(f"{assets}/_prefect/tasks")
        stack.create_pools()
        stack.create_automations(Settings().zombie_seconds)
        stack.deploy("campaign")
        worker = stack.start_worker("cpu", "cpu-1", {"STYLEMATRIX_SHARD_WORKERS": "true"})
        stack.start_gpu_worker("gpu-1")
        with api(handle):
            flow_run = run_deployment("run-campaign/campaign", timeout=0, as_subflow=False,
                                      parameters={"request": {"campaign": "restart", "triggered_by": "api"}})
        deadline = time.monotonic() + 300
        while not _beats(store, assets):
            assert worker.poll() is None and time.monotonic() < deadline, f"no shard ran; logs in {stack.log_dir}"
            time.sleep(0.3)
        assert psutil.Process(worker.pid).children(recursive=True), "the campaign's flow run is not on cpu-1"
        _kill_tree(worker)
        stack.start_worker("cpu", "cpu-2", {"STYLEMATRIX_SHARD_WORKERS": "true"})
        final = wait_final(handle, flow_run.id, timeout=500, redone=CAMPAIGN_RUNS)
    finally:
        stack.stop()
        redis.stop()
    assert final.state.is_completed(), f"{final.state.type}: {final.state.message}; logs in {stack.log_dir}"
    assert final.run_count >= 2  # crashed, rescheduled and run again by its deployment
    _every_image_once(store, assets)
    (manifest,) = publish.read_manifests(store, AssetsLayout.at(assets))
    (run,) = publish.read_table(store, manifest, "runs").itertuples()
    assert run.flow_run_id == str(flow_run.id) and run.images_left_to_others == 0
