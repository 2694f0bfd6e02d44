"""A whole Prefect deployment on one machine: server, work pools, deployments, workers.

`stylematrix serve` uses it for a user who wants the UI locally; the end-to-end tests use it
to run real workers on loopback. Production runs the same pieces separately (docs/operations.md).
"""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from adapters.infra.processes import stop_processes
from adapters.infra.settings import FLOW_HEARTBEAT_SECONDS, get_settings

ROOT = Path(__file__).resolve().parents[1]
PREFECT = [sys.executable, "-m", "prefect"]
# Flow runs send a heartbeat every FLOW_HEARTBEAT_SECONDS while they run; a running flow run silent for
# STYLEMATRIX_ZOMBIE_SECONDS is marked Crashed by a server automation (flows/zombies.py).
# (Shards have their own heartbeat: flows/gpu_worker.py.)
# The server's upkeep on PostgreSQL: events are kept a week, and the vacuum service deletes older ones
# (heartbeats add one event per flow run every FLOW_HEARTBEAT_SECONDS). Flow runs are kept: a run's history is
# its audit trail, and the tables in S3 are the record of what was made.
DATABASE_VARIABLES = ("PREFECT_API_DATABASE_CONNECTION_URL", "PREFECT_SERVER_DATABASE_CONNECTION_URL")
SERVER_UPKEEP = {"PREFECT_SERVER_EVENTS_RETENTION_PERIOD": "P7D", "PREFECT_SERVER_SERVICES_DB_VACUUM_ENABLED": "events"}
# While PostgreSQL restarts, the API answers 500 (a refused connection is not among the database errors Prefect
# answers 503 for): every client retries a 500 as it does a 503, five times over about a minute, so a flow run's
# state changes, a task worker's results and the workers' polls wait a database restart out. flows/fleet.py's
# `through_outage` waits longer, for the campaign's own calls, while the server's `/ready` says the database is down.
CLIENT_RETRIES = {"PREFECT_CLIENT_RETRY_EXTRA_CODES": "500"}
SERVER_PROCESSES = ("server", "services")


@dataclass
class PrefectStack:
    """Processes of a local Prefect deployment, stopped together."""

    home: Path
    port: int
    env: dict[str, str]
    log_dir: Path
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    # Where the server listens and clients reach it; `netns`: the network namespace its processes run in
    # (the fleet test's server host). Defaults: loopback, this namespace.
    listen: str = "127.0.0.1"
    address: str = "127.0.0.1"
    netns: str | None = None
    database_url: str | None = None  # PostgreSQL (postgresql+asyncpg://...); None: SQLite under `home`
    auth_string: str | None = None  # basic auth the API requires (`user:password`); None: none, on loopback only
    task_storage: str | None = None  # the block slug shards' parameters and results go through (flows/task_storage.py)
    # Redis (redis://...) for the API and its background services as separate processes (adapters/infra/local_redis.py);
    # None: one process, with Prefect's in-memory broker.
    broker_url: str | None = None

    @property
    def api_url(self) -> str:
        return f"http://{self.address}:{self.port}/api"

    def _env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        # The database's URL holds its password: only the server's processes get it (`_server_env`).
        return {
            **{k: v for k, v in self.env.items() if k not in DATABASE_VARIABLES},
            "PREFECT_HOME": str(self.home),
            "PREFECT_API_URL": self.api_url,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1",
            "PREFECT_CLI_PROMPT": "false",
            "PREFECT_WORKER_WEBSERVER_HOST": "127.0.0.1",
            "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(FLOW_HEARTBEAT_SECONDS),
            **CLIENT_RETRIES,
            **({"PREFECT_TASKS_SCHEDULING_DEFAULT_STORAGE_BLOCK": self.task_storage} if self.task_storage else {}),
            **({"PREFECT_API_AUTH_STRING": self.auth_string} if self.auth_string else {}),
            **(extra or {}),
        }

    def _spawn(self, name: str, args: list[str], extra: Mapping[str, str] | None = None) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(self._in_netns(args), cwd=ROOT, env=self._env(extra), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.processes[name] = proc
        return proc

    def _in_netns(self, args: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *args] if self.netns else args

    def _prefect(self, *args: str, timeout: float = 120) -> str:
        result = subprocess.run([*PREFECT, *args], cwd=ROOT, env=self._env(), capture_output=True, text=True,
                                timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f"prefect {' '.join(args)} failed: {(result.stderr or result.stdout).strip()[-2000:]}")
        return result.stdout

    def _server_env(self) -> dict[str, str]:
        """What only the server's processes get: the database (its URL holds the password), its upkeep, its auth,
        the broker between its API and its services (that URL holds Redis's password)."""
        auth = {"PREFECT_SERVER_API_AUTH_STRING": self.auth_string} if self.auth_string else {}
        if self.broker_url:
            from adapters.infra.local_redis import broker_env

            auth |= broker_env(self.broker_url)
        if not self.database_url:
            return auth
        return {**auth, "PREFECT_API_DATABASE_CONNECTION_URL": self.database_url,
                "PREFECT_API_DATABASE_MIGRATE_ON_START": "false",  # `prefect server database upgrade` does it, first
                **SERVER_UPKEEP}

    def migrate(self) -> None:
        """Bring the database's schema to this Prefect's version: a step of its own, before the server starts."""
        if self.database_url:
            result = subprocess.run(self._in_netns([*PREFECT, "server", "database", "upgrade", "-y"]), cwd=ROOT,
                                    env=self._env(self._server_env()), capture_output=True, text=True, timeout=600)
            if result.returncode != 0:
                raise RuntimeError(f"prefect server database upgrade failed: {result.stdout[-1500:]}{result.stderr[-1500:]}")

    def start_server(self, timeout: float = 90) -> None:
        """`prefect server start` on loopback: on `database_url` (migrated first), else SQLite under `home`.

        With `broker_url`, as production runs it: the API alone (`--no-services`) and, unless they already run,
        the background services in a process of their own (`prefect server services start`), both on Redis.
        """
        self.home.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.migrate()
        apart = ["--no-services"] if self.broker_url else []
        proc = self._spawn("server", [*PREFECT, "server", "start", "--host", self.listen, "--port", str(self.port),
                                      *apart], self._server_env())
        services = self.processes.get("services")
        if apart and (services is None or services.poll() is not None):
            self._spawn("services", [*PREFECT, "server", "services", "start"], self._server_env())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"prefect server exited with {proc.returncode}: see {self.log_dir / 'server.log'}")
            try:
                with urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"prefect server did not answer on {self.api_url} within {timeout:.0f} s")

    def create_pools(self) -> None:
        """The `cpu` pool for orchestration, and the `gpu` pool for style scans, one at a time.

        A campaign's shards need no pool: they go to the GPU task workers.
        """
        self._prefect("work-pool", "create", "cpu", "--type", "process", "--overwrite")
        self._prefect("work-pool", "create", "gpu", "--type", "process", "--overwrite")
        self._prefect("work-pool", "set-concurrency-limit", "gpu", "1")

    def register_task_storage(self, basepath: str) -> None:
        """Shards' parameters and results under `basepath` in S3, for every process started after this."""
        from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

        from flows.task_storage import register

        with temporary_settings({PREFECT_API_URL: self.api_url, PREFECT_API_AUTH_STRING: self.auth_string}):
            self.task_storage = register(basepath)

    def create_automations(self, zombie_seconds: float) -> None:
        """The server automations of flows/zombies.py: crash a flow run whose worker died mid-run (never one
        that waits on purpose), and hand a crashed review or deployed campaign out again."""
        from flows.zombies import ensure_automations

        ensure_automations(self.api_url, zombie_seconds)

    def deploy(self, *names: str) -> str:
        """The deployments of prefect.yaml named (none named: every one)."""
        chosen = [a for name in names for a in ("--name", name)] or ["--all"]
        return self._prefect("--no-prompt", "deploy", *chosen, timeout=300)

    def start_worker(self, pool: str, name: str, env: Mapping[str, str] | None = None) -> subprocess.Popen:
        """A process worker that runs one flow run at a time."""
        return self._spawn(name, [*PREFECT, "worker", "start", "--pool", pool, "--name", name, "--type", "process",
                                  "--limit", "1"], {"STYLEMATRIX_WORKER_NAME": name, **(env or {})})

    def start_gpu_worker(self, name: str, env: Mapping[str, str] | None = None) -> subprocess.Popen:
        """A GPU task worker (flows/gpu_worker.py): one process that keeps its engine loaded and runs one shard at a time."""
        return self._spawn(name, [sys.executable, "-m", "flows.gpu_worker"],
                           {"STYLEMATRIX_WORKER_NAME": name, **(env or {})})

    def stop(self) -> None:
        """Workers first (SIGINT: a 3.9 process worker ignores SIGTERM), then the server and its services; each with
        what it started."""
        workers = [p for n, p in self.processes.items() if n not in SERVER_PROCESSES]
        stop_processes(workers)
        stop_processes([p for n, p in self.processes.items() if n in SERVER_PROCESSES])
        self.processes.clear()


def start_stack(stack: PrefectStack, *, gpus: int, zombie_seconds: float | None = None,
                task_storage: str | None = None) -> PrefectStack:
    """Start `stack` (not yet started: where it lives, its port, environment, logs and database): the server, the
    pools, the automations (flows/zombies.py), every deployment, one cpu worker, one GPU task worker per GPU and a
    `gpu` pool worker for style scans. Stopped again if any of it fails to start.

    `gpus=0` starts no GPU worker: campaigns then run their shards in their own process. `zombie_seconds`
    (default: the settings' STYLEMATRIX_ZOMBIE_SECONDS) is how long a running flow run may be silent.
    `task_storage` (s3://bucket/prefix): where shards' parameters and results go, as on a fleet; None: under
    PREFECT_HOME.
    """
    try:
        stack.start_server()
        if task_storage:
            stack.register_task_storage(task_storage)
        stack.create_pools()
        stack.create_automations(zombie_seconds or get_settings().zombie_seconds)
        stack.deploy()
        stack.start_worker("cpu", "cpu-1", {"STYLEMATRIX_SHARD_WORKERS": "true" if gpus else "false"})
        for i in range(gpus):
            stack.start_gpu_worker(f"gpu-{i + 1}", {"CUDA_VISIBLE_DEVICES": str(i)} if _has_cuda() else {})
        if gpus:  # style scans: a flow run at a time on the first GPU, beside its task worker
            stack.start_worker("gpu", "gpu-scans", {"CUDA_VISIBLE_DEVICES": "0"} if _has_cuda() else {})
    except BaseException:
        stack.stop()
        raise
    return stack


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()
