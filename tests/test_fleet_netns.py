"""A fleet in network namespaces: hosts that share nothing but the network.

One namespace for the server host (PostgreSQL on its loopback, the S3 server, the Prefect server with
basic auth), one for the campaign's host, two GPU hosts. Each host has its own HOME, PREFECT_HOME,
model cache and working copy (a git clone at HEAD, as `deploy/install.sh` and the deployments' `pull:`
bring it: committed code only), and reaches the server host only over its own veth link. The test process stands for the operator, on the same network.

Scenarios, in one fleet:
- a campaign on a code version no GPU worker runs: refused in one line, naming both versions;
- a campaign across both GPU hosts during which one GPU host's link is cut mid-shard for CUT seconds and then
  restored: longer than every wait the host has for the server host (its shard lease, its S3 retries for an
  endpoint that is down, its Prefect client's retries, shortened here as the lease is), as a 2-minute cut is
  in production. The cut host's shard is handed out again after the lease; every image once, sha256 intact;
- the Prefect server killed (SIGKILL, with its children) while the next campaign's first shards run, and
  started again on the same port and database: the shards it forgot are handed out again, the cut host serves
  shards again (it came back by itself), every image once. The time from the restarted server answering to
  the next shard starting is printed (docs/benchmarks.md records it).
PostgreSQL's restart and the campaign's own worker killed are tests/test_restarts.py's (on loopback, the same
code paths).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psutil
import pytest

from adapters.catalog.sample import seed_sample_catalog
from adapters.catalog.snapshots import refresh
from adapters.infra.settings import Settings, child_env
from adapters.infra.storage import S3Store
from adapters.steps import publish
from adapters.steps.heartbeats import read_beats
from tasks.layout import AssetsLayout
from tests.helpers import ROOT, check_api_auth

pytestmark = [
    pytest.mark.e2e, pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("ip"), reason="network namespaces need root and iproute2"),
]

LEASE = 10
CUT = 30  # seconds a GPU host's link is down: past its lease, its S3 retries and its Prefect client's retries
CAMPAIGN = (
    "name: fleet\nproducts: {ids: [rocket, coffee-cup]}\nstyles: {ids: [space-age, earthy-textures]}\n"
    "matrix: {template: '{product} on {surface}', axes: {surface: [sand, slate]}, seeds: [1]}\n"
    "generation: {profile: tiny, width: 64, height: 64, steps: 40, batch_size: 2}\n"
)  # two shards of two batches: one per GPU host, each long enough (40 steps) to cut a link in the middle
IMAGES = 2 * 2 * 2
RESTART_CAMPAIGN = CAMPAIGN.replace("name: fleet", "name: restart").replace("seeds: [1]", "seeds: [1, 2]").replace(
    "steps: 40", "steps: 20")  # four shards: two run, two wait in the server's memory when it is killed


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, timeout=30)


class Network:
    """Namespaces `srv`, `cpu`, `g1`, `g2` (prefixed) on one bridge in the server host's namespace.

    Every host reaches the server host at the same address, as a fleet names it by one DNS name: Prefect
    runs a task with the settings of the process that submitted it (its API URL included), so a GPU worker
    must reach the API under the URL the campaign's host uses. The operator (this process) is on the
    bridge too. Cutting a host's link takes its port on the bridge down.
    """

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:4]
        self.prefix, self.octet = f"sm{tag}", 100 + int(tag, 16) % 100
        self.hosts = {"cpu": 2, "g1": 3, "g2": 4}
        self.made: list[str] = []

    def ns(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def server_ip(self) -> str:
        return f"10.{self.octet}.0.1"

    def _link(self, n: int, ns: str | None) -> None:
        """A veth from the bridge to `ns` (None: this namespace), addressed 10.x.0.`n`."""
        srv, port, end = self.ns("srv"), f"{self.prefix}p{n}", f"{self.prefix}e{n}"
        where = ["netns", ns] if ns else []
        sh("ip", "-n", srv, "link", "add", port, "type", "veth", "peer", "name", end, *(where or ["netns", "1"]))
        sh("ip", "-n", srv, "link", "set", port, "master", f"{self.prefix}br", "up")
        inside = ["ip", "-n", ns] if ns else ["ip"]
        sh(*inside, "addr", "add", f"10.{self.octet}.0.{n}/24", "dev", end)
        sh(*inside, "link", "set", end, "up")

    def up(self) -> Network:
        srv = self.ns("srv")
        for name in ("srv", *self.hosts):
            sh("ip", "netns", "add", self.ns(name))
            self.made.append(self.ns(name))
            sh("ip", "-n", self.ns(name), "link", "set", "lo", "up")
        sh("ip", "-n", srv, "link", "add", f"{self.prefix}br", "type", "bridge")
        sh("ip", "-n", srv, "addr", "add", f"{self.server_ip()}/24", "dev", f"{self.prefix}br")
        sh("ip", "-n", srv, "link", "set", f"{self.prefix}br", "up")
        self._link(254, None)
        for host, n in self.hosts.items():
            self._link(n, self.ns(host))
        return self

    def cut(self, host: str, down: bool) -> None:
        """Take `host`'s link to the server host down (a cable pulled) or up again."""
        sh("ip", "-n", self.ns("srv"), "link", "set", f"{self.prefix}p{self.hosts[host]}", "down" if down else "up")

    def down(self) -> None:
        for name in self.made:
            with contextlib.suppress(subprocess.CalledProcessError):
                sh("ip", "netns", "del", name)  # its veths go with it, the operator's end included


class Fleet:
    """The server host's processes, and the hosts' processes, each started in its namespace."""

    def __init__(self, net: Network, folder: Path, model_cache: Path):
        from adapters.infra.local_s3 import free_port
        from adapters.infra.postgres import LocalPostgres
        from flows.serve import PrefectStack

        self.net, self.folder, self.model_cache = net, folder, model_cache
        self.procs: list[subprocess.Popen] = []
        self.postgres = LocalPostgres(folder / "postgres", free_port(), netns=net.ns("srv"))
        self.s3_port = free_port()
        self.secret = f"fleet:{uuid.uuid4().hex}"
        self.stack = PrefectStack(home=folder / "server", port=free_port(), env={}, log_dir=folder / "logs",
                                  listen="0.0.0.0", address=net.server_ip(), netns=net.ns("srv"),
                                  auth_string=self.secret)
        self.credentials = {"AWS_ACCESS_KEY_ID": "fleet", "AWS_SECRET_ACCESS_KEY": "fleet", "AWS_DEFAULT_REGION": "us-east-1"}

    def start_server_host(self) -> S3Store:
        self.postgres.start()
        self.stack.database_url = self.postgres.url
        (self.folder / "logs").mkdir(exist_ok=True)
        self.procs.append(self._spawn("srv", [sys.executable, "-m", "adapters.infra.s3_server", "-H", "0.0.0.0", "-p",
                                              str(self.s3_port)], child_env(self.credentials), ROOT, "s3"))
        store = S3Store.from_settings(Settings(s3_endpoint=f"http://{self.net.server_ip()}:{self.s3_port}"))
        deadline = time.monotonic() + 60
        while True:
            try:
                store.ensure_bucket("fleet-catalog")
                break
            except ConnectionError as exc:
                assert time.monotonic() < deadline, f"the S3 server did not answer: {exc}"
                time.sleep(0.5)
        self.stack.env = child_env(self.credentials)
        self.stack.start_server()
        return store

    def _spawn(self, host: str, args: list[str], env: dict[str, str], cwd: Path, name: str) -> subprocess.Popen:
        with open(self.folder / "logs" / f"{name}.log", "ab") as log:
            return subprocess.Popen(["ip", "netns", "exec", self.net.ns(host), *args], env=env, cwd=cwd, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)

    def host_env(self, host: str, name: str, extra: dict[str, str]) -> tuple[Path, dict[str, str]]:
        """A host's working copy (a clone at HEAD) and environment: its own HOME, PREFECT_HOME, model cache."""
        home = self.folder / name
        code = home / "code"
        if not code.exists():
            home.mkdir(parents=True)
            subprocess.run(["git", "clone", "--quiet", str(ROOT), str(code)], check=True, timeout=120)
            shutil.copytree(self.model_cache, home / "models")  # as a GPU host's own model mirror would fill it
        server = self.net.server_ip()
        env = {**child_env(self.credentials), "HOME": str(home), "PREFECT_HOME": str(home / "prefect"),
               "PYTHONPATH": str(code), "PREFECT_API_URL": f"http://{server}:{self.stack.port}/api",
               "PREFECT_API_AUTH_STRING": self.secret, "AWS_ENDPOINT_URL_S3": f"http://{server}:{self.s3_port}",
               "PREFECT_TASKS_SCHEDULING_DEFAULT_STORAGE_BLOCK": self.stack.task_storage,
               "STYLEMATRIX_MODEL_CACHE": str(home / "models"), "STYLEMATRIX_WORKER_NAME": name,
               "STYLEMATRIX_DEVICE": "cpu", "STYLEMATRIX_SHARD_HEARTBEAT_SECONDS": "1",
               "STYLEMATRIX_SHARD_LEASE_SECONDS": str(LEASE), "STYLEMATRIX_SHARD_POLL_SECONDS": "0.5",
               "STYLEMATRIX_IMAGES_PER_SHARD": "4", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
               "PREFECT_CLIENT_MAX_RETRIES": "2",  # about 6 s of retries (5 in production, about a minute): CUT outlasts them
               "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1", **extra}
        for key in ("PREFECT_API_DATABASE_CONNECTION_URL", "PREFECT_SERVER_DATABASE_CONNECTION_URL"):
            env.pop(key, None)
        return code, env

    def gpu_worker(self, host: str, name: str) -> subprocess.Popen:
        code, env = self.host_env(host, name, {})
        proc = self._spawn(host, [sys.executable, "-m", "flows.gpu_worker"], env, code, name)
        self.procs.append(proc)
        return proc

    def campaign(self, spec: str, name: str, extra: dict[str, str]) -> subprocess.Popen:
        code, env = self.host_env("cpu", "cpu-host", {"STYLEMATRIX_SHARD_WORKERS": "true", **extra})
        proc = self._spawn("cpu", [sys.executable, "-m", "flows.cli", "run", "--campaign", spec], env, code, name)
        self.procs.append(proc)
        return proc

    def kill_server(self) -> None:
        """A crash of the Prefect server: it and everything it started vanish at once (PostgreSQL and S3 stay)."""
        server = psutil.Process(self.stack.processes.pop("server").pid)
        victims = [server, *server.children(recursive=True)]
        for victim in victims:
            victim.send_signal(signal.SIGKILL)
        psutil.wait_procs(victims, timeout=10)

    def log(self, name: str) -> str:
        return (self.folder / "logs" / f"{name}.log").read_text(errors="replace")

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGINT)
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
        self.stack.stop()
        self.postgres.stop()


def _beats(store: S3Store, assets: str, campaign: str) -> list:
    """The shard heartbeats of `campaign`'s runs: one per shard task run a GPU worker took."""
    runs = {o.key.split("/")[1] for o in store.list(f"{assets}/runs/") if "/workers/" in o.key}
    return [b for r in runs if r.startswith(campaign) for b in read_beats(store, AssetsLayout.at(assets).run(r))]


def _every_image_once(store: S3Store, assets: str, campaign: str, images: int, workers: set[str]) -> None:
    """`campaign`'s one committed run has every image once, each matching its sha256, made by `workers`."""
    (manifest,) = [m for m in publish.read_manifests(store, AssetsLayout.at(assets)) if m["campaign"] == campaign]
    rows = publish.read_table(store, manifest, "generations")
    assert len(rows) == images and rows["asset_id"].is_unique
    for row in rows.itertuples():
        assert hashlib.sha256(store.get(row.output_key)).hexdigest() == row.sha256
    assert {b.worker for b in read_beats(store, AssetsLayout.at(assets).run(manifest["run_id"]))} == workers


def _wait(condition, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc is None or proc.poll() is None, f"the campaign exited ({proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"{what} not seen within {timeout:.0f} s"
        time.sleep(0.3)


def test_a_fleet_of_hosts_that_share_nothing_but_the_network(model_cache, monkeypatch):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    from flows.fleet import read_fleet

    for key, value in {"AWS_ACCESS_KEY_ID": "fleet", "AWS_SECRET_ACCESS_KEY": "fleet"}.items():
        monkeypatch.setenv(key, value)  # the operator's S3 key, for this process's store
    folder = Path(tempfile.mkdtemp(prefix="stylematrix-fleet-", dir="/tmp"))
    folder.chmod(0o711)  # PostgreSQL's account must reach its cluster inside
    net = Network().up()
    fleet = Fleet(net, folder, model_cache)
    try:
        store = fleet.start_server_host()
        store.ensure_bucket("fleet-assets")
        catalog, assets = "s3://fleet-catalog", "s3://fleet-assets"
        seed_sample_catalog(store, catalog)
        refresh(store, catalog)
        check_api_auth(fleet.stack.api_url, fleet.secret)  # the API listens beyond loopback: it wants the auth string
        fleet.stack.register_task_storage(f"{assets}/_prefect/tasks")
        fleet.gpu_worker("g1", "gpu-host-1")
        fleet.gpu_worker("g2", "gpu-host-2")
        api = {PREFECT_API_URL: fleet.stack.api_url, PREFECT_API_AUTH_STRING: fleet.secret}
        with temporary_settings(api), get_client(sync_client=True) as client:
            _wait(lambda: {w.worker for w in read_fleet(client).seen} == {"gpu-host-1", "gpu-host-2"}, 240,
                  "both GPU hosts connected")
        common = {"STYLEMATRIX_CATALOG": catalog, "STYLEMATRIX_ASSETS": assets}

        # A campaign on a code version no GPU worker runs: refused in one line, naming both versions.
        stale = fleet.campaign("sample", "campaign-stale", {**common, "STYLEMATRIX_CODE_VERSION": "next-release",
                                                           "STYLEMATRIX_WORKER_WAIT_SECONDS": "5"})
        assert stale.wait(timeout=300) == 2, fleet.log("campaign-stale")[-3000:]
        refusal = [line for line in fleet.log("campaign-stale").splitlines() if line.startswith("stylematrix: error:")]
        assert len(refusal) == 1 and "next-release" in refusal[0] and "gpu-host-1 at " in refusal[0], refusal

        # Both GPU hosts serve shards; one loses its link mid-shard and gets it back.
        store.put(f"{catalog}/campaigns/fleet.yaml", CAMPAIGN.encode())
        run = fleet.campaign("fleet", "campaign", common)

        def running_on_g1():
            runs = {o.key.split("/")[1] for o in store.list(f"{assets}/runs/") if "/workers/" in o.key}
            return [b for r in runs for b in read_beats(store, AssetsLayout.at(assets).run(r))
                    if b.worker == "gpu-host-1" and b.state == "running"]

        _wait(running_on_g1, 300, "a shard running on gpu-host-1", run)
        net.cut("g1", down=True)
        time.sleep(CUT)
        net.cut("g1", down=False)
        assert run.wait(timeout=600) == 0, fleet.log("campaign")[-4000:]
        assert "no heartbeat from its worker" in fleet.log("campaign")
        # The cut host's shard failed on it (its S3 calls found no route). Whether its Prefect subscription noticed
        # the cut depends on where the websocket's keepalive was: the next campaign shows that it serves again.
        assert "cannot reach S3 endpoint" in fleet.log("gpu-host-1"), fleet.log("gpu-host-1")[-3000:]
        _every_image_once(store, assets, "fleet", IMAGES, {"gpu-host-1", "gpu-host-2"})

        # The server killed while the next campaign's first two shards run (two more wait in its memory), and
        # started again.
        store.put(f"{catalog}/campaigns/restart.yaml", RESTART_CAMPAIGN.encode())
        run = fleet.campaign("restart", "campaign-restart", common)
        # Both hosts take a shard of it, the one whose link was cut included: it came back by itself.
        _wait(lambda: {b.worker for b in _beats(store, assets, "restart")} == {"gpu-host-1", "gpu-host-2"}, 300,
              "a shard of the restart campaign on each GPU host", run)
        before = {b.task_run_id for b in _beats(store, assets, "restart")}
        fleet.kill_server()
        fleet.stack.start_server()
        answered = time.monotonic()
        _wait(lambda: {b.task_run_id for b in _beats(store, assets, "restart")} - before, 300,
              "a shard started after the server's restart", run)
        print(f"fleet: {time.monotonic() - answered:.1f} s from the restarted server answering to the next shard starting")
        assert run.wait(timeout=600) == 0, fleet.log("campaign-restart")[-4000:]
        _every_image_once(store, assets, "restart", 2 * IMAGES, {"gpu-host-1", "gpu-host-2"})
        objects = [store.get(o.uri) for o in store.list(assets + "/")]  # read while the S3 server host is up
    finally:
        fleet.stop()
        net.down()
    # No secret in a host's log, nor in anything the runs wrote: images, tables, sheets, galleries, artifacts' sources.
    written = [p.read_bytes() for p in (folder / "logs").glob("*.log")] + objects
    secrets = {fleet.secret.encode(), fleet.secret.split(":")[1].encode(), fleet.postgres.password.encode()}
    assert len(written) > 3 * IMAGES and not [s for s in secrets for blob in written if s in blob]
    shutil.rmtree(folder, ignore_errors=True)
