"""A fleet's hand-offs: shards' parameters in S3, a campaign refused when no GPU worker runs its code, and a
shard the server forgot handed out again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from flows.fleet import Forgotten, parse_presence, presence_key
from tests.helpers import ROOT


def test_presence_keys_round_trip_and_other_keys_are_not_workers():
    key = presence_key("gpu|1", "abc123", "generate-shard-0f3e")
    assert parse_presence(key).worker == "gpu/1"
    assert parse_presence(key).version == "abc123"
    assert parse_presence("generate-shard-0f3e") is None


def test_a_shard_is_forgotten_only_after_a_free_worker_left_it_scheduled_for_the_whole_grace():
    now = [0.0]
    forgotten = Forgotten(grace=10, clock=lambda: now[0])
    assert not forgotten.check("run", free_worker=True)
    now[0] = 9.9
    assert not forgotten.check("run", free_worker=True)
    now[0] = 12
    assert not forgotten.check("run", free_worker=False)  # every worker busy: it waits its turn in the queue
    now[0] = 13
    assert not forgotten.check("run", free_worker=True)  # the clock starts again
    now[0] = 23
    assert forgotten.check("run", free_worker=True)
    forgotten.forget("run")
    assert not forgotten.check("run", free_worker=True)


def test_task_storage_keeps_parameters_in_s3_for_any_host(s3_server, store, fresh_bucket, prefect_api_env,
                                                          monkeypatch):
    from prefect.blocks.core import Block
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from adapters.infra.settings import get_settings
    from flows.task_storage import S3TaskStorage, register

    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server.endpoint)  # each process reaches S3 with its own settings
    get_settings.cache_clear()
    with temporary_settings({PREFECT_API_URL: prefect_api_env["PREFECT_API_URL"]}):
        slug = register(f"s3://{fresh_bucket}/_prefect/tasks")
        block = Block.load(slug)
    assert isinstance(block, S3TaskStorage)
    block.write_path("parameters/abc", b"shard")
    assert store.get(f"s3://{fresh_bucket}/_prefect/tasks/parameters/abc") == b"shard"
    assert block.read_path("parameters/abc") == b"shard"
    with pytest.raises(FileNotFoundError):
        block.read_path("parameters/missing")
    with pytest.raises(ValueError, match="s3://"):
        register("/tmp/folder")
    monkeypatch.undo()
    get_settings.cache_clear()


@pytest.mark.slow
def test_a_campaign_needs_a_gpu_worker_on_its_code_version(prefect_api_env, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.fleet import read_fleet, require_worker
    from flows.gpu_worker import generate_shard_task

    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", **prefect_api_env,
           "PREFECT_HOME": str(tmp_path), "STYLEMATRIX_CODE_VERSION": "old-release", "STYLEMATRIX_WORKER_NAME": "gpu-old"}
    worker = subprocess.Popen([sys.executable, "-m", "flows.gpu_worker"], env=env, cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        key = generate_shard_task.task_key
        with temporary_settings({PREFECT_API_URL: prefect_api_env["PREFECT_API_URL"]}), \
                get_client(sync_client=True) as client:
            deadline = time.monotonic() + 120
            while not any(w.worker == "gpu-old" for w in read_fleet(client).seen) and time.monotonic() < deadline:
                assert worker.poll() is None, "the GPU worker exited"
                time.sleep(0.5)
            assert require_worker(client, "old-release", key, timeout=5).serves("old-release", key)
            started = time.monotonic()
            with pytest.raises(ConnectionError) as refused:
                require_worker(client, "new-release", key, timeout=3)
            assert time.monotonic() - started < 10
    finally:
        worker.send_signal(signal.SIGINT)
        worker.wait(timeout=30)
    message = str(refused.value)
    assert "\n" not in message
    assert "new-release" in message and "gpu-old at old-release" in message


def test_fleet_deployments_pull_the_exact_commit_and_ask_for_workers_at_it():
    import yaml

    from flows.fleet_deploy import fleet_manifest

    commit = "0123456789abcdef0123456789abcdef01234567"
    spec = fleet_manifest("https://git.example.com/acme/stylematrix.git", commit)
    clone = spec["pull"][0]["prefect.deployments.steps.git_clone"]
    assert clone["commit_sha"] == commit and clone["repository"].endswith("stylematrix.git")
    assert spec["pull"][1]["prefect.deployments.steps.set_working_directory"]["directory"] == "{{ clone.directory }}"
    names = [d["name"] for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]]
    assert [d["name"] for d in spec["deployments"]] == names
    assert {d["job_variables"]["env"]["STYLEMATRIX_CODE_VERSION"] for d in spec["deployments"]} == {commit[:12]}
    with pytest.raises(ValueError, match="40-hex"):
        fleet_manifest("https://git.example.com/acme/stylematrix.git", "main")


def test_code_version_is_the_commit_unless_the_deployment_names_one(monkeypatch):
    from adapters.infra import code_version as cv
    from adapters.infra.settings import get_settings

    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    cv.code_version.cache_clear()
    assert cv.code_version().split("-")[0] == commit.strip()[:12]
    monkeypatch.setenv("STYLEMATRIX_CODE_VERSION", "release-7")
    get_settings.cache_clear()
    cv.code_version.cache_clear()
    try:
        assert cv.code_version() == "release-7"
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
        cv.code_version.cache_clear()


def test_calls_to_the_api_wait_out_a_server_restart_but_not_for_ever():
    import httpx

    from flows.fleet import through_outage

    failures = [httpx.ConnectError("refused"), httpx.ConnectError("refused")]

    def call(value):
        if failures:
            raise failures.pop()
        return value

    assert through_outage(10, call, "task-run-id") == "task-run-id"
    started = time.monotonic()
    with pytest.raises(ConnectionError, match="unreachable for 1 s"):
        through_outage(1, lambda: (_ for _ in ()).throw(httpx.ConnectError("refused")))
    assert time.monotonic() - started < 5


def test_calls_to_the_api_wait_out_its_database_only_while_the_server_says_it_is_down(monkeypatch):
    """A 500 while the server's `/ready` answers 503 (PostgreSQL restarting) is waited out; a 500 while it answers
    200 is a server error, raised at once; a database down for longer than the limit fails in one line."""
    import http.server
    import threading

    import httpx
    from prefect.exceptions import PrefectHTTPStatusError
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.fleet import through_outage

    ready = {"status": 503}

    class Ready(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            self.send_response(ready["status"] if self.path == "/api/ready" else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Ready)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    api = f"http://127.0.0.1:{server.server_address[1]}/api"

    def server_error() -> PrefectHTTPStatusError:
        request = httpx.Request("POST", f"{api}/task_runs/filter")
        response = httpx.Response(500, request=request)
        return PrefectHTTPStatusError.from_httpx_error(
            httpx.HTTPStatusError("500 Internal Server Error", request=request, response=response))

    failures = [server_error(), server_error()]

    def call(value):
        if failures:
            raise failures.pop()
        return value

    try:
        with temporary_settings({PREFECT_API_URL: api}):
            assert through_outage(10, call, "states") == "states"
            with pytest.raises(ConnectionError, match="database has been unavailable for 1 s; start PostgreSQL"):
                through_outage(1, lambda: (_ for _ in ()).throw(server_error()))
            ready["status"] = 200
            failures.append(server_error())
            started = time.monotonic()
            with pytest.raises(PrefectHTTPStatusError):
                through_outage(10, call, "states")
            assert time.monotonic() - started < 1
    finally:
        server.shutdown()


def test_the_server_units_run_the_api_and_its_services_apart_with_the_settings_the_stack_uses():
    """deploy/: the API without its services, the services in a unit of their own, both on server.env, which
    holds the same upkeep, migration and broker settings as the stack `serve` and the tests start."""
    from adapters.infra.local_redis import broker_env
    from flows.serve import SERVER_UPKEEP

    deploy = ROOT / "deploy"
    api, services = (deploy / "prefect-server.service").read_text(), (deploy / "prefect-services.service").read_text()
    assert "prefect server start --host 0.0.0.0 --port 4200 --no-services" in api
    assert "ExecStartPre=/opt/stylematrix/.venv/bin/prefect server database upgrade -y" in api
    assert "ExecStart=/opt/stylematrix/.venv/bin/prefect server services start" in services
    for unit in (api, services):
        assert "EnvironmentFile=/etc/stylematrix/server.env" in unit and "Requires=postgresql.service redis-server.service" in unit
    env = dict(line.split("=", 1) for line in (deploy / "server.env").read_text().splitlines()
               if line and not line.startswith("#"))
    expected = {**broker_env("redis://:CHANGE-ME@127.0.0.1:6379/0"), **SERVER_UPKEEP,
                "PREFECT_API_DATABASE_MIGRATE_ON_START": "false"}
    assert {k: env.get(k) for k in expected} == expected
