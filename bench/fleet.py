"""A fleet on one machine: hosts that share nothing but the network, measured.

    .venv/bin/python bench/fleet.py [--seeds 4] [--images-per-shard 4]

The server side: PostgreSQL (adapters/infra/postgres.py), the S3 server, the Prefect server with basic auth
and the S3 shard storage block. Each GPU host and the campaign's host get their own HOME,
PREFECT_HOME, model cache and working copy (a git clone at HEAD: committed code only, as a deployment
pulls it), and reach the server only through its API and S3. Three campaigns of the sample catalog
(`--seeds` seeds each, 64 px, 2 steps) run with `stylematrix run` and shard workers on:

1. one GPU host; 2. two GPU hosts; 3. two GPU hosts, the Prefect server killed (SIGKILL) while the
first shard runs and started again on the same port and database; or, with `--database-restart SECONDS`
only: 4. two GPU hosts, PostgreSQL stopped as a crash stops it (`pg_ctl stop -m immediate`) while the first
shard runs, down SECONDS, and started again on the same data and port.

Printed: images/s of the generation phase (first shard start to last shard end, from the server's
task runs), hand-out latency per shard (how long a shard's worker sat free before starting it: its
start less the later of the shard's creation and the end of that worker's shard before), and the time
from the restarted server (or database) answering to the next shard starting.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adapters.catalog.sample import seed_sample_catalog  # noqa: E402
from adapters.catalog.snapshots import refresh  # noqa: E402
from adapters.infra.local_s3 import LocalS3Server, free_port  # noqa: E402
from adapters.infra.postgres import LocalPostgres  # noqa: E402
from adapters.infra.settings import Settings, child_env, export_s3_endpoint  # noqa: E402
from adapters.infra.storage import S3Store  # noqa: E402
from adapters.steps import publish  # noqa: E402
from adapters.steps.heartbeats import read_beats  # noqa: E402
from flows.serve import PrefectStack  # noqa: E402
from tasks.layout import AssetsLayout  # noqa: E402


class Fleet:
    def __init__(self, folder: Path, images_per_shard: int):
        self.folder = folder
        self.postgres = LocalPostgres(folder / "postgres", free_port())
        self.s3 = LocalS3Server()
        self.gpus: dict[str, subprocess.Popen] = {}
        self.stack = None
        try:
            self._start(images_per_shard)
        except BaseException:
            self.stop()
            raise

    def _start(self, images_per_shard: int) -> None:
        self.postgres.start()
        self.s3.start()
        export_s3_endpoint(self.s3.endpoint)  # and its dummy credentials, for every host
        self.store = S3Store.from_settings(Settings(s3_endpoint=self.s3.endpoint))
        self.catalog = "s3://fleet-catalog"
        for bucket in ("fleet-catalog", "fleet-assets"):
            self.store.ensure_bucket(bucket)
        seed_sample_catalog(self.store, self.catalog)
        refresh(self.store, self.catalog)
        self.env = {**child_env(), "AWS_ENDPOINT_URL_S3": self.s3.endpoint, "STYLEMATRIX_CATALOG": self.catalog,
                    "STYLEMATRIX_DEVICE": "cpu", "STYLEMATRIX_IMAGES_PER_SHARD": str(images_per_shard),
                    "STYLEMATRIX_SHARD_LEASE_SECONDS": "15", "STYLEMATRIX_SHARD_HEARTBEAT_SECONDS": "1",
                    "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
        self.stack = PrefectStack(home=self.folder / "server", port=free_port(), env=self.env,
                                  log_dir=self.folder / "logs",
                                  database_url=self.postgres.database("fleet"), auth_string=f"fleet:{uuid.uuid4().hex}")
        self.stack.start_server()
        self.stack.register_task_storage("s3://fleet-assets/_prefect/tasks")

    def host(self, name: str) -> tuple[Path, dict[str, str]]:
        """A host's own folder, working copy and environment."""
        home = self.folder / name
        code = home / "code"
        if not code.exists():
            home.mkdir(parents=True)
            subprocess.run(["git", "clone", "--quiet", str(ROOT), str(code)], check=True)
        env = self.stack._env({"HOME": str(home), "PREFECT_HOME": str(home / "prefect"), "PYTHONPATH": str(code),
                               "STYLEMATRIX_MODEL_CACHE": str(home / "models"), "STYLEMATRIX_WORKER_NAME": name})
        return code, env

    def start_gpu(self, name: str) -> None:
        code, env = self.host(name)
        with open(self.folder / "logs" / f"{name}.log", "ab") as log:
            self.gpus[name] = subprocess.Popen([sys.executable, "-m", "flows.gpu_worker"], cwd=code, env=env,
                                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def campaign(self, seeds: int, first_seed: int, assets: str) -> subprocess.Popen:
        code, env = self.host("cpu-1")
        spec = code / f"fleet-{first_seed}.yaml"
        spec.write_text("name: fleet\nmatrix: {template: '{product} on {surface}', axes: {surface: [sand, slate]}, "
                        f"seeds: {list(range(first_seed, first_seed + seeds))}}}\n"
                        "generation: {profile: tiny, width: 64, height: 64, steps: 2, batch_size: 4}\n")
        env = {**env, "STYLEMATRIX_SHARD_WORKERS": "true", "STYLEMATRIX_ASSETS": assets,
               "STYLEMATRIX_OUT_DIR": str(self.folder / "out")}
        log = open(self.folder / "logs" / f"campaign-{first_seed}.log", "ab")  # noqa: SIM115 - the process keeps it
        return subprocess.Popen([sys.executable, "-m", "flows.cli", "run", "--campaign", str(spec)], cwd=code, env=env,
                                stdout=log, stderr=subprocess.STDOUT)

    def shard_runs(self, run_id: str) -> list:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName
        from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

        with temporary_settings({PREFECT_API_URL: self.stack.api_url, PREFECT_API_AUTH_STRING: self.stack.auth_string}), \
                get_client(sync_client=True) as client:
            runs = client.read_task_runs(task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_=f"{run_id}-shard-")),
                                         limit=200)
        return [r for r in runs if r.start_time and r.end_time]

    def stop(self) -> None:
        for proc in self.gpus.values():
            proc.send_signal(signal.SIGINT)
        for proc in self.gpus.values():
            proc.wait(timeout=60)
        if self.stack is not None:
            self.stack.stop()
        self.s3.stop()
        self.postgres.stop()


def measure(fleet: Fleet, assets: str) -> dict:
    (manifest,) = publish.read_manifests(fleet.store, AssetsLayout.at(assets))
    run_id = manifest["run_id"]
    runs = sorted(fleet.shard_runs(run_id), key=lambda r: r.start_time)
    worker = {b.task_run_id: b.worker for b in read_beats(fleet.store, AssetsLayout.at(assets).run(run_id))}
    images = len(publish.read_table(fleet.store, manifest, "generations"))
    span = (max(r.end_time for r in runs) - min(r.start_time for r in runs)).total_seconds()
    latency, last_end = [], {}
    for r in runs:
        free_since = max(r.created, last_end.get(worker.get(str(r.id)), r.created))
        latency.append((r.start_time - free_since).total_seconds())
        last_end[worker.get(str(r.id))] = r.end_time
    return {"run_id": run_id, "images": images, "shards": len(runs), "images_per_s": images / span,
            "handout_median_s": statistics.median(latency), "handout_max_s": max(latency),
            "workers": sorted({w for w in worker.values()})}


def restart_mid_campaign(fleet: Fleet, seeds: int, assets: str) -> float:
    """Seconds from the restarted server answering to the next shard starting."""
    proc = fleet.campaign(seeds, 300, assets)
    while not any("/workers/" in o.key for o in fleet.store.list(f"{assets}/runs/")):
        assert proc.poll() is None, "the campaign exited before a shard ran"
        time.sleep(0.3)
    server = psutil.Process(fleet.stack.processes["server"].pid)
    victims = [server, *server.children(recursive=True)]
    for victim in victims:
        victim.send_signal(signal.SIGKILL)
    psutil.wait_procs(victims, timeout=10)
    fleet.stack.start_server()
    up = datetime.now(UTC)
    assert proc.wait(timeout=900) == 0, "the campaign failed after the restart"
    (manifest,) = publish.read_manifests(fleet.store, AssetsLayout.at(assets))
    starts = [r.start_time for r in fleet.shard_runs(manifest["run_id"]) if r.start_time > up]
    return (min(starts) - up).total_seconds()


def database_restart_mid_campaign(fleet: Fleet, seeds: int, assets: str, down: float) -> dict:
    """PostgreSQL stopped as a crash stops it while the first shard runs, down `down` seconds, started again on the
    same data and port: seconds from it accepting connections again to the next shard starting, and the
    campaign's hand-out latency per shard."""
    proc = fleet.campaign(seeds, 400, assets)
    while not any("/workers/" in o.key for o in fleet.store.list(f"{assets}/runs/")):
        assert proc.poll() is None, "the campaign exited before a shard ran"
        time.sleep(0.3)
    fleet.postgres.stop("immediate")
    time.sleep(down)
    fleet.postgres.start()
    up = datetime.now(UTC)
    assert proc.wait(timeout=900) == 0, "the campaign failed after the database restart"
    measured = measure(fleet, assets)
    starts = [r.start_time for r in fleet.shard_runs(measured["run_id"]) if r.start_time > up]
    return {"database_down_s": down, "database_up_to_next_shard_s": (min(starts) - up).total_seconds(), **measured}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--images-per-shard", type=int, default=4)
    parser.add_argument("--restart-only", action="store_true", help="only the restart scenario, on two GPU hosts")
    parser.add_argument("--database-restart", type=float, default=0, metavar="SECONDS",
                        help="only PostgreSQL stopped (immediate) mid-campaign for SECONDS, on two GPU hosts")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="stylematrix-fleet-", dir="/tmp"))
    folder.chmod(0o711)
    (folder / "logs").mkdir()
    fleet = Fleet(folder, args.images_per_shard)
    results = {}
    try:
        fleet.start_gpu("gpu-host-1")
        for hosts, first_seed in ((1, 100), (2, 200)) if not (args.restart_only or args.database_restart) else ():
            if hosts == 2:
                fleet.start_gpu("gpu-host-2")
            assets = f"s3://fleet-assets/hosts-{hosts}"
            assert fleet.campaign(args.seeds, first_seed, assets).wait(timeout=900) == 0, f"campaign on {hosts} failed"
            results[f"{hosts}_gpu_hosts"] = measure(fleet, assets)
            print(json.dumps({f"{hosts}_gpu_hosts": results[f"{hosts}_gpu_hosts"]}), flush=True)
        if args.restart_only or args.database_restart:
            fleet.start_gpu("gpu-host-2")
        if args.database_restart:
            results["database_restart"] = database_restart_mid_campaign(fleet, args.seeds, "s3://fleet-assets/database",
                                                                        args.database_restart)
            print(json.dumps({"database_restart": results["database_restart"]}), flush=True)
            return
        results["restart_to_next_shard_s"] = restart_mid_campaign(fleet, args.seeds, "s3://fleet-assets/restart")
        print(json.dumps({"restart_to_next_shard_s": results["restart_to_next_shard_s"]}), flush=True)
    finally:
        fleet.stop()
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
