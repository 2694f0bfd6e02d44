"""`stylematrix run` and `stylematrix serve` stop everything they started when systemd, docker or `kill`
stop them (SIGTERM, SIGHUP), as on Ctrl-C: no server or worker left running, no port left held."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from adapters.infra.local_s3 import free_port
from tests.conftest import _warm_prefect_home
from tests.helpers import CLI, ROOT, campaign_settings_env, seed_campaign_buckets

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def _start(args: list[str], env: dict[str, str], folder: Path) -> tuple[subprocess.Popen, Path]:
    log = folder / "command.log"
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), **env}
    with open(log, "wb") as out:
        proc = subprocess.Popen(CLI + args, cwd=folder, env=full_env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    return proc, log


def _wait_for(condition, timeout: float, what: str, proc: subprocess.Popen, log: Path):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if proc.poll() is not None:
            break
        time.sleep(0.5)
    proc.kill()
    raise AssertionError(f"{what} not seen within {timeout:.0f} s (exit {proc.poll()}):\n{log.read_text()[-3000:]}")


def _cmdline(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline())
    except psutil.Error:  # gone, or a zombie not yet reaped
        return ""


def _listening_ports(processes: list[psutil.Process]) -> set[int]:
    ports = set()
    for p in processes:
        try:
            ports |= {c.laddr.port for c in p.net_connections("tcp") if c.status == psutil.CONN_LISTEN}
        except psutil.Error:
            continue
    return ports


def _port_free(port: int) -> bool:
    """Nobody listens on `port`: a server could bind it again (SO_REUSEADDR, as servers do, so a closed
    connection's TIME_WAIT does not count)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _stop_and_check(proc: subprocess.Popen, log: Path, sig: signal.Signals, ports: set[int]) -> None:
    """Send `sig` to the command alone (not its group) and check that it and everything below it are gone."""
    tree = psutil.Process(proc.pid).children(recursive=True)
    assert tree, "the command started no process"
    proc.send_signal(sig)
    try:
        proc.wait(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError(f"still running 90 s after {sig.name}:\n{log.read_text()[-3000:]}") from None
    _, alive = psutil.wait_procs(tree, timeout=10)
    survivors = [(p.pid, _cmdline(p)[:200]) for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    for p in alive:
        p.kill()
    assert not survivors, f"left running after {sig.name}: {survivors}"
    assert all(_port_free(port) for port in ports), f"ports still held after {sig.name}: {ports}"


def test_run_stops_prefects_temporary_server_on_sighup(s3_server, store, model_cache, prefect_harness,
                                                                   tmp_path):
    catalog, assets = seed_campaign_buckets(store)
    # SIGHUP here; SIGTERM takes the same path, and the serve test below sends it.
    env = {**campaign_settings_env(s3_server, catalog, assets, model_cache),
           "PREFECT_HOME": str(_warm_prefect_home(prefect_harness, tmp_path)), "PREFECT_API_URL": "",
           "STYLEMATRIX_OUT_DIR": str(tmp_path / "out")}
    proc, log = _start(["run", "--campaign", "sample"], env, tmp_path)

    def api_server():
        servers = [p for p in psutil.Process(proc.pid).children(recursive=True) if "uvicorn" in _cmdline(p)]
        return _listening_ports(servers)

    ports = _wait_for(api_server, 120, "Prefect's temporary API server", proc, log)
    _stop_and_check(proc, log, signal.SIGHUP, ports)


def test_serve_stops_server_workers_and_postgres_on_sigterm(s3_server, tmp_path):
    port = free_port()
    home = Path(tempfile.mkdtemp(prefix="stylematrix-serve-", dir="/tmp"))
    home.chmod(0o711)  # PostgreSQL's account must reach its cluster inside
    env = {"AWS_ENDPOINT_URL_S3": s3_server.endpoint, "STYLEMATRIX_DEVICE": "cpu", "OMP_NUM_THREADS": "1"}
    proc, log = _start(["serve", "--gpus", "1", "--port", str(port), "--home", str(home)], env, tmp_path)
    _wait_for(lambda: "press Ctrl-C" in log.read_text(), 300, "the stack's start", proc, log)
    names = " ".join(_cmdline(p) for p in psutil.Process(proc.pid).children(recursive=True))
    assert "worker start" in names and "flows.gpu_worker" in names and "server start" in names, names
    assert (home / "postgres" / "data" / "postmaster.pid").exists(), "serve started no PostgreSQL of its own"
    _stop_and_check(proc, log, signal.SIGTERM, {port})
    assert not (home / "postgres" / "data" / "postmaster.pid").exists(), "PostgreSQL left running"
    shutil.rmtree(home, ignore_errors=True)


def test_a_gpu_worker_started_with_sigint_ignored_still_stops_on_sigint(prefect_api_env, tmp_path):
    """A non-interactive shell starts a background command with SIGINT ignored (`... &` in a script); the
    stacks stop their GPU workers with SIGINT. The worker must stop on it, cleanly, not wait for a SIGKILL."""
    from prefect.client.orchestration import get_client

    from flows.fleet import read_fleet

    env = {**prefect_api_env, "STYLEMATRIX_DEVICE": "cpu", "STYLEMATRIX_WORKER_NAME": "sigint-test"}
    log = tmp_path / "worker.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "flows.gpu_worker"], cwd=ROOT, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), **env},
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        with get_client(sync_client=True) as client:  # serving: the server sees it
            _wait_for(lambda: "sigint-test" in {w.worker for w in read_fleet(client).seen}, 120,
                      "the worker on the server", proc, log)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)

