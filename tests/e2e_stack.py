"""The worker end-to-end stack (tests/test_workers.py): a Prefect server, deployments from
prefect.yaml, a cpu worker and two GPU task workers, on loopback against the session's S3 server.

Its two campaigns take minutes, nearly all of it in other processes (workers, flow runs) or
waiting (a killed worker's shard is handed out again only after its heartbeat lease). So the stack
starts when the session starts (conftest's `early` fixtures) and a thread runs both campaigns
while the in-process tests go on; the tests in test_workers.py wait for them and assert.
The thread only drives the campaigns; every assertion about them is in the tests.
"""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import time
import uuid
from concurrent.futures import Future
from pathlib import Path

import psutil
import pytest

from adapters.infra.storage import S3Store
from adapters.steps import publish
from tasks.layout import AssetsLayout

CAMPAIGN = (
    "name: e2e\nproducts: {ids: [rocket, coffee-cup]}\nstyles: {ids: [space-age, earthy-textures]}\n"
    "matrix: {template: '{product} on {surface}', axes: {surface: [sand, slate]}, seeds: [1, 2]}\n"
    "generation: {profile: tiny, width: 64, height: 64, steps: 2, batch_size: 4}\n"
)
IMAGES = 2 * 2 * 2 * 2
LEASE = 15  # seconds without a heartbeat before a shard is handed out again (the production default is 60)
# Seconds a running flow run may be silent before the server crashes it (production: 75). Prefect sends a
# flow run's heartbeat every 30 s at the most often, so a window shorter than 30 s plus the heartbeat's
# way to the server would crash live runs: 45 leaves 15 s on this busy machine.
ZOMBIE = 45
CPU_WORKER_ENV = {"STYLEMATRIX_SHARD_WORKERS": "true"}  # the stack's cpu worker (gpus=2)
WAIT = 900  # seconds a test waits for a background result before it fails (the thread's own limits are shorter)


def api(stack):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    return temporary_settings({PREFECT_API_URL: stack["stack"].api_url})


def start_campaign(stack, **request):
    from prefect.deployments import run_deployment

    with api(stack):
        return run_deployment("run-campaign/campaign", parameters={"request": {"campaign": "e2e", **request}},
                              timeout=0, as_subflow=False)


def wait_final(stack, flow_run_id, timeout: float, stop: threading.Event | None = None, *, redone: int = 0):
    """The flow run once its state is final. `redone`: the runs its deployment's automation hands a crashed run
    out again for (flows/zombies.CAMPAIGN_RUNS): a crash on an earlier run is waited past, not taken as the end."""
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    with api(stack), get_client(sync_client=True) as client:
        while time.monotonic() < deadline and not (stop and stop.is_set()):
            run = client.read_flow_run(flow_run_id)
            if run.state and run.state.is_final() and not (run.state.is_crashed() and run.run_count < redone):
                return run
            time.sleep(1)
    raise AssertionError(f"flow run {flow_run_id} did not finish in {timeout:.0f} s; logs in {stack['stack'].log_dir}")


def shard_attempt(run) -> tuple[str, int]:
    """(shard index, attempt) of a `generate-shard-on-worker` task run, from its name `<run_id>-shard-<index>-try-<n>-<key>`."""
    shard, attempt = run.name.split("-shard-")[1].split("-try-")
    return shard, int(attempt.split("-")[0])


def shard_runs(stack, run_id: str = ""):
    """The `generate-shard-on-worker` task runs a campaign run (all runs: "") handed to the GPU workers."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

    with api(stack), get_client(sync_client=True) as client:
        runs = client.read_task_runs(task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_=f"{run_id}-shard-")))
    return [r for r in runs if r.name.startswith(f"{run_id}-shard-") or not run_id]


def published(stack, run_id):
    store, assets = stack["store"], stack["assets"]
    manifest = json.loads(store.get(AssetsLayout.at(assets).run(run_id).manifest))
    return manifest, publish.read_table(store, manifest, "generations")


def run_id_of(stack, flow_run_id) -> str:
    for m in publish.read_manifests(stack["store"], AssetsLayout.at(stack["assets"])):
        runs = publish.read_table(stack["store"], m, "runs")
        if str(flow_run_id) in set(runs["flow_run_id"]):
            return m["run_id"]
    raise AssertionError(f"no committed run for flow run {flow_run_id}")


def _kill_mid_shard(stack: dict, task_run_id, pid: int) -> bool:
    """A machine dying mid-shard: the GPU worker's process vanishes with no goodbye. The worker is frozen
    first (SIGSTOP) and killed only if its shard is still running then, so the kill is always mid-shard;
    a shard that finished in the meantime is let go (False) and another is picked."""
    from prefect.client.orchestration import get_client

    worker = psutil.Process(pid)
    worker.send_signal(signal.SIGSTOP)
    with api(stack), get_client(sync_client=True) as client:
        state = client.read_task_run(task_run_id).state
    if state is not None and state.is_running():
        worker.send_signal(signal.SIGKILL)
        return True
    worker.send_signal(signal.SIGCONT)
    return False


class WorkerCampaigns:
    """The stack and its two campaigns, driven by one thread; each result is a Future.

    `stack`: the stack as a dict (stack, store, catalog, assets).
    `on_both_workers`: (final parent flow run, seconds) of a campaign started from the API.
    `with_a_killed_worker`: (final parent flow run, the shard task run whose worker was killed, seconds
    from the kill to the end of the campaign) of a second campaign (seeds 3 and 4) whose first
    running shard loses its worker process.
    """

    def __init__(self, s3_endpoint: str, model_cache: Path, folder: Path, env: dict[str, str], database_url: str,
                 campaigns: bool = True):
        self.stack: Future = Future()
        self._campaigns = campaigns  # False: the stack only (the review tests' own; they start their campaign)
        self.on_both_workers: Future = Future()
        self.with_a_killed_worker: Future = Future()
        self._stop = threading.Event()
        self._prefect = None
        self._args = (s3_endpoint, model_cache, folder, env, database_url)
        self._thread = threading.Thread(target=self._run, name="worker-campaigns", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        pending = [self.stack, self.on_both_workers, self.with_a_killed_worker]
        try:
            stack = self._start(*self._args)
            pending.pop(0).set_result(stack)
            if not self._campaigns:
                return
            pending.pop(0).set_result(self._campaign_on_both_workers(stack))
            pending.pop(0).set_result(self._campaign_with_a_killed_worker(stack))
        except BaseException as exc:  # handed to every test still waiting
            for future in pending:
                future.set_exception(exc)

    def _start(self, s3_endpoint: str, model_cache: Path, folder: Path, env: dict[str, str], database_url: str) -> dict:
        from adapters.catalog.sample import seed_sample_catalog
        from adapters.catalog.snapshots import refresh
        from adapters.infra.local_s3 import free_port
        from adapters.infra.settings import Settings
        from flows.serve import PrefectStack, start_stack

        suffix = uuid.uuid4().hex[:8]
        catalog, assets = f"s3://e2e-catalog-{suffix}", f"s3://e2e-assets-{suffix}"
        store = S3Store.from_settings(Settings(s3_endpoint=s3_endpoint))
        for uri in (catalog, assets):
            store.ensure_bucket(uri.removeprefix("s3://"))
        seed_sample_catalog(store, catalog)
        store.put(f"{catalog}/campaigns/e2e.yaml", CAMPAIGN.encode())
        # A snapshot before the stack starts, made without a flow: the campaigns then refresh nothing,
        # so no `stylematrix.catalog.updated` starts style scans on the gpu workers while shards run.
        refresh(store, catalog)
        env = {
            **env,
            "AWS_ENDPOINT_URL_S3": s3_endpoint,
            "STYLEMATRIX_CATALOG": catalog,
            "STYLEMATRIX_ASSETS": assets,
            "STYLEMATRIX_MODEL_CACHE": str(model_cache),
            "STYLEMATRIX_DEVICE": "cpu",
            "STYLEMATRIX_IMAGES_PER_SHARD": "4",  # 4 shards: more than the two gpu workers take at once
            "STYLEMATRIX_SHARD_POLL_SECONDS": "0.5",
            "STYLEMATRIX_SHARD_HEARTBEAT_SECONDS": "1",
            "STYLEMATRIX_SHARD_LEASE_SECONDS": str(LEASE),
            "PREFECT_WORKER_QUERY_SECONDS": "1",
            "OMP_NUM_THREADS": "1",
            "HF_HUB_OFFLINE": "1",
        }
        if self._stop.is_set():
            raise RuntimeError("the session ended before the worker stack started")
        self._prefect = start_stack(PrefectStack(home=folder / "prefect", port=free_port(), env=env,
                                                 log_dir=folder / "logs", database_url=database_url),
                                    gpus=2, zombie_seconds=ZOMBIE, task_storage=f"{assets}/_prefect/tasks")
        return {"stack": self._prefect, "store": store, "catalog": catalog, "assets": assets}

    def _campaign_on_both_workers(self, stack: dict):
        started = time.monotonic()
        parent = wait_final(stack, start_campaign(stack, triggered_by="api").id, timeout=600, stop=self._stop)
        return parent, time.monotonic() - started

    def _campaign_with_a_killed_worker(self, stack: dict):
        from adapters.steps.heartbeats import read_beat

        parent_id = start_campaign(stack, seeds=[3, 4], triggered_by="api").id
        victim = None
        deadline = time.monotonic() + 300
        while victim is None and time.monotonic() < deadline and not self._stop.is_set():
            for run in shard_runs(stack):  # the first campaign is over: a running shard is this one's
                if run.state and run.state.is_running():
                    run_id = run.name.split("-shard-")[0]
                    beat = read_beat(stack["store"], AssetsLayout.at(stack["assets"]).run(run_id).beat(str(run.id)))
                    if beat is not None and _kill_mid_shard(stack, run.id, beat.pid):
                        victim = run
                        break
            else:
                time.sleep(0.5)
        assert victim is not None, "no shard started running"
        killed = time.monotonic()
        parent = wait_final(stack, parent_id, timeout=600, stop=self._stop)
        return parent, victim, time.monotonic() - killed

    def close(self) -> None:
        """Stop waiting, then stop the stack and any flow run its workers still have."""
        self._stop.set()
        self._thread.join(timeout=180)
        if self._prefect is not None:
            for name, proc in list(self._prefect.processes.items()):
                if name != "server" and proc.poll() is None:
                    with contextlib.suppress(psutil.NoSuchProcess):
                        for child in psutil.Process(proc.pid).children(recursive=True):
                            child.kill()
            self._prefect.stop()


@pytest.fixture(scope="session")
def worker_campaigns(s3_server, model_cache, tmp_path_factory, postgres):
    """The worker stack and its two campaigns, started in the background (see the module docstring)."""
    from adapters.infra.settings import child_env

    # This process's environment now, before any test changes it: the thread must not see a test's.
    campaigns = WorkerCampaigns(s3_server.endpoint, model_cache, tmp_path_factory.mktemp("e2e"), child_env(),
                                postgres.database("worker_campaigns"))
    yield campaigns
    campaigns.close()


@pytest.fixture(scope="session")
def review_stack(s3_server, model_cache, tmp_path_factory, postgres):
    """A worker stack of its own for the review tests (tests/test_review_e2e.py), without the two campaigns: its
    reviews wait out zombie windows, and its cpu worker is killed, while the other stack's campaigns run."""
    from adapters.infra.settings import child_env

    stack = WorkerCampaigns(s3_server.endpoint, model_cache, tmp_path_factory.mktemp("e2e-review"), child_env(),
                            postgres.database("review_stack"), campaigns=False)
    yield stack
    stack.close()
