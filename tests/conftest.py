"""Shared fixtures: one embedded S3 server and one Prefect test server per session, one model
cache for the whole run, a store and a fresh bucket per test, and the slow checks that start with
the session.

Slow checks that run in other processes (the demo command, the worker stack's campaigns) start
before the first test when a selected test is marked `early("<fixture>")`, and run while the
in-process tests go on; the marked test then waits for the result and asserts on it.

Parallel runs (`make test`: pytest-xdist, `-n N --dist loadgroup`): each test file is one unit of
work (its module fixtures are set up once), the tests on the worker stack are one unit (the stack
is started once), and the units that take longest are handed out first (`_unit_cost`). Under
xdist nothing starts early: the worker that takes a unit starts what it needs when it starts it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters.infra.local_s3 import LocalS3Server
from adapters.infra.settings import Settings, get_settings
from adapters.infra.storage import S3Store
from tests.e2e_stack import review_stack, worker_campaigns  # noqa: F401 - fixtures, started early
from tests.helpers import BackgroundCommand, campaign_settings_env, seed_campaign_buckets, start_cli

# One torch thread: the tiny models run as fast on one as on two cores, and the commands and flow
# runs started in the background (see above) then share the two cores with the tests instead of
# spinning against them. Set before anything imports torch; commands started by tests inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

# Dummy credentials and an isolated AWS config: boto3 must never read the developer's
# ~/.aws files or wait on the EC2 instance-metadata service during tests.
_AWS_TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "stylematrix-test",
    "AWS_SECRET_ACCESS_KEY": "stylematrix-test",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": "/nonexistent/stylematrix-aws-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/stylematrix-aws-credentials",
}
_AWS_CLEARED = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION")


@pytest.fixture(scope="session")
def s3_server() -> Iterator[LocalS3Server]:
    """moto's S3 server in a subprocess on 127.0.0.1, with dummy AWS credentials set."""
    patch = pytest.MonkeyPatch()
    for name in _AWS_CLEARED:
        patch.delenv(name, raising=False)
    for name, value in _AWS_TEST_ENV.items():
        patch.setenv(name, value)
    try:
        with LocalS3Server() as server:
            yield server
    finally:
        patch.undo()


@pytest.fixture
def store(s3_server: LocalS3Server) -> S3Store:
    """An S3Store against the session's server (settings built explicitly, not from the environment)."""
    settings = Settings(s3_endpoint=s3_server.endpoint, s3_region="us-east-1")
    return S3Store.from_settings(settings)


@pytest.fixture
def fresh_bucket(store: S3Store) -> str:
    """The name of a new, empty bucket, unique to this test."""
    name = f"test-{uuid.uuid4().hex[:16]}"
    store.ensure_bucket(name)
    return name


def _run_folder(tmp_path_factory) -> Path:
    """A folder the whole run shares: the session's base temp, or under xdist its parent (xdist gives each
    worker `<the run's base temp>/popen-gwN`)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory) -> Path:
    """One model cache for the whole run (every xdist worker's too): each tiny kit is built once, by the
    first test that needs it (a kit is built aside and renamed into place, so two builders never mix).
    The sd15 kit is built here, under a lock, before the commands started in the background need it, so
    no background command and no other worker spends its time building one."""
    from filelock import FileLock

    from adapters.model.kit import ensure_tiny_kit

    cache = _run_folder(tmp_path_factory) / "models"
    cache.mkdir(exist_ok=True)
    with FileLock(str(cache.parent / "models.lock")):
        ensure_tiny_kit(cache)
    return cache


@pytest.fixture(scope="module")
def private_model_cache(model_cache: Path, tmp_path_factory) -> Path:
    """The session's model cache under a path of the module's own: the kits are still built once per
    session, but `get_engine` keys its engines by this path, so the module's engine is its own and
    whatever the module changes on it (switches, scheduler, adapter scale) reaches no other module."""
    link = tmp_path_factory.mktemp("models-link") / "models"
    link.symlink_to(model_cache, target_is_directory=True)
    return link


@pytest.fixture(scope="session")
def postgres() -> Iterator:
    """One PostgreSQL cluster for the session's Prefect servers, each on a database of its own
    (`postgres.database(name)`), as a fleet's server runs. In a folder under /tmp: PostgreSQL runs as its
    own account when the tests run as root, and that account must reach the folder."""
    import tempfile

    from adapters.infra.local_s3 import free_port
    from adapters.infra.postgres import LocalPostgres

    folder = Path(tempfile.mkdtemp(prefix="stylematrix-pg-", dir="/tmp"))
    folder.chmod(0o711)
    cluster = LocalPostgres(folder / "cluster", free_port())
    try:
        yield cluster.start()
    finally:
        cluster.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory) -> Iterator[Path]:
    """A throwaway Prefect API for the whole session (it takes seconds to start); the value is a
    copy of its database taken right after migration (see `_warm_prefect_home`). Under xdist one
    server serves the whole run: the first worker that needs it starts it (`_shared_prefect_server`),
    the others use it, and the controller stops it when the run ends (`pytest_sessionfinish`)."""
    from adapters.infra.settings import prepare_runtime_env

    prepare_runtime_env()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        yield from _shared_prefect_harness(_run_folder(tmp_path_factory))
        return
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        migrated = tmp_path_factory.mktemp("prefect-db") / "prefect.db"
        _copy_database(migrated)
        yield migrated


SHARED_PREFECT = "prefect-harness"  # its folder under the run's folder, with `server.json` (address, pid, copy)


def _shared_prefect_harness(run: Path) -> Iterator[Path]:
    """This worker's Prefect settings pointed at the run's one test server, as `prefect_test_harness` does
    for its own server; its log and event queues drained at the end, before the controller stops it."""
    import json

    import prefect.context
    from filelock import FileLock
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with FileLock(str(run / f"{SHARED_PREFECT}.lock")):
        info = run / SHARED_PREFECT / "server.json"
        if not info.exists():
            _start_shared_prefect_server(run / SHARED_PREFECT)
        server = json.loads(info.read_text())
    with temporary_settings({PREFECT_API_URL: server["api_url"]}), \
            prefect.context._temporary_global_settings_context(prefect.context.get_settings_context()):
        yield Path(server["migrated"])
        _drain_prefect_queues()


def _start_shared_prefect_server(folder: Path) -> None:
    """The server `prefect_test_harness` starts (uvicorn, SQLite, no UI, the ephemeral server's services), but
    in a process group of its own that outlives the worker that started it; `server.json` says where it is."""
    import json
    import subprocess
    import sys
    import time
    import urllib.request

    import prefect

    from adapters.infra.local_s3 import free_port

    folder.mkdir()
    database, port = folder / "prefect.db", free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API_")},
           "PREFECT_HOME": str(folder / "home"), "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{database}",
           "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
    with open(folder / "server.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "--app-dir", str(prefect.__module_path__.parent),
                                 "--factory", "prefect.server.api.server:create_app", "--host", "127.0.0.1",
                                 "--port", str(port), "--log-level", "error", "--lifespan", "on"],
                                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    api_url, deadline = f"http://127.0.0.1:{port}/api", time.monotonic() + 180
    while True:
        try:
            with urllib.request.urlopen(f"{api_url}/health", timeout=5) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"the tests' Prefect server did not start: {(folder / 'server.log').read_text()[-2000:]}")
        time.sleep(0.5)
    migrated = folder / "migrated.db"
    _copy_database(migrated, database)
    (folder / "server.json").write_text(json.dumps({"api_url": api_url, "pid": proc.pid, "migrated": str(migrated)}))


def _drain_prefect_queues() -> None:
    """Send what this process's log and event workers still hold, as `prefect_test_harness` does on exit."""
    import inspect

    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.utilities.asyncutils import run_coro_as_sync

    async def drain() -> None:
        try:
            result = APILogWorker.instance().drain()
            if inspect.isawaitable(result):
                await result
        except RuntimeError:  # never started
            pass
        result = EventsWorker.drain_all()
        if inspect.isawaitable(result):
            await result

    run_coro_as_sync(drain())


def pytest_sessionfinish(session: pytest.Session) -> None:
    """The xdist controller, once every worker is done: stop the run's shared Prefect server."""
    import json
    import signal

    config = session.config
    if hasattr(config, "workerinput") or not getattr(config.option, "numprocesses", None):
        return
    info = config._tmp_path_factory.getbasetemp() / SHARED_PREFECT / "server.json"
    if info.exists():
        pid = json.loads(info.read_text())["pid"]
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
        for _ in range(50):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        else:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)


def _copy_database(target: Path, database: Path | None = None) -> None:
    """A consistent copy of the harness's SQLite database (its server keeps it open)."""
    import sqlite3

    from prefect.settings import PREFECT_SERVER_DATABASE_CONNECTION_URL

    source = sqlite3.connect(database or PREFECT_SERVER_DATABASE_CONNECTION_URL.value().split(":///", 1)[1])
    copy = sqlite3.connect(target)
    try:
        source.backup(copy)
    finally:
        copy.close()
        source.close()


def _warm_prefect_home(migrated: Path, folder: Path) -> Path:
    """A new PREFECT_HOME whose database is already migrated: a command run in it starts Prefect's
    temporary server in seconds instead of first migrating a new database (about 20 s here)."""
    home = folder / "prefect-home"
    home.mkdir()
    shutil.copyfile(migrated, home / "prefect.db")
    return home


@pytest.fixture
def prefect_api_env(prefect_harness: Path) -> dict[str, str]:
    """The environment that points a command at the session's Prefect server, so it starts none of its own."""
    from prefect.settings import PREFECT_API_URL

    return {"PREFECT_API_URL": PREFECT_API_URL.value()}


@pytest.fixture(scope="session", autouse=True)
def _early(request: pytest.FixtureRequest) -> None:
    """Start the fixtures named by the selected tests' `early` markers now, before the first test. Not
    under xdist: a worker collects every test but runs only the units handed to it."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return
    for name in sorted({m.args[0] for item in request.session.items for m in item.iter_markers("early")}):
        request.getfixturevalue(name)


@pytest.fixture(scope="session")
def demo_run(prefect_harness: Path, model_cache: Path, tmp_path_factory) -> Iterator[tuple[BackgroundCommand, Path]]:
    """`stylematrix demo` in its own folder, started in the background: the command and the folder."""
    folder = tmp_path_factory.mktemp("demo")
    env = {"STYLEMATRIX_MODEL_CACHE": str(model_cache), "STYLEMATRIX_OUT_DIR": str(folder / "out"),
           "PREFECT_HOME": str(_warm_prefect_home(prefect_harness, folder)),
           "AWS_ENDPOINT_URL_S3": "", "AWS_ENDPOINT_URL": ""}
    command = start_cli(["demo"], env, folder, timeout=600)
    yield command, folder
    command.stop()


@pytest.fixture
def campaign_env(s3_server, store: S3Store, model_cache, monkeypatch, prefect_harness):
    """A seeded catalog bucket, an empty assets bucket, and settings pointing at both."""
    catalog, assets = seed_campaign_buckets(store)
    for name, value in campaign_settings_env(s3_server, catalog, assets, model_cache).items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    yield {"catalog": catalog, "assets": assets}
    get_settings.cache_clear()


# The xdist group of the tests on the worker stack (tests/e2e_stack.py): one worker runs them all, on one stack.
WORKER_STACK = "worker-stack"
# Files whose tests each start servers of their own and wait out windows: each test is a unit of its own, so they
# wait side by side on different workers rather than one after another.
APART = ("test_review_e2e", "test_restarts")
# What a test costs, roughly, in seconds on this machine, by its markers: orders the units (longest first).
_COST = (("e2e", 120.0), ("slow", 30.0), ("flow", 8.0), ("model", 3.0))


def pytest_itemcollected(item: pytest.Item) -> None:
    """Mark the tests that need the session's Prefect server `flow` and those that load the tiny
    model kits `model`: `make test-fast` leaves both out. Give each its xdist group (as it is collected:
    xdist reads the groups before other `pytest_collection_modifyitems` hooks run): its test file, or
    the worker stack's group for the tests on the stack."""
    fixtures = getattr(item, "fixturenames", ())
    if "prefect_harness" in fixtures:
        item.add_marker(pytest.mark.flow)
    if "model_cache" in fixtures:
        item.add_marker(pytest.mark.model)
    if not any(item.iter_markers("xdist_group")):
        item.add_marker(pytest.mark.xdist_group(WORKER_STACK if "worker_campaigns" in fixtures
                                                else f"{item.path.stem}-{item.originalname}" if item.path.stem in APART
                                                else item.path.stem))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Order the xdist groups: the ones that take longest first, each group's tests in file order. On an
    xdist worker under `--dist loadgroup`, each test's id then ends in `@<group>`, which is how the
    controller's scheduler reads the groups (xdist 3.8 sets it through an attribute pytest 9.2 no longer reads)."""
    costs: dict[str, float] = {}
    for item in items:
        group = _group(item)
        costs[group] = costs.get(group, 0.0) + _test_cost(item)
    costs[WORKER_STACK] = float("inf")  # the longest chains of the run start first: the worker stack's campaigns,
    for group in costs:  # then the reviews, on stacks of their own, that wait out zombie windows
        if group.startswith("test_review_e2e"):
            costs[group] = 1e9
    order = {id(item): i for i, item in enumerate(items)}
    items.sort(key=lambda item: (-costs[_group(item)], order[id(item)]))
    if getattr(config.option, "loadgroup", False):
        for item in items:
            if "@" not in item.nodeid.rsplit("::", 1)[-1]:
                _set_nodeid(item, f"{item.nodeid}@{_group(item)}")


def _set_nodeid(item: pytest.Item, nodeid: str) -> None:
    if hasattr(item, "_id"):  # pytest 9.2 and later
        from _pytest.nodeid import coerce_node_id

        item._id = coerce_node_id(nodeid)
    else:
        item._nodeid = nodeid


def _group(item: pytest.Item) -> str:
    mark = next(item.iter_markers("xdist_group"))
    return str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))


def _test_cost(item: pytest.Item) -> float:
    return max((cost for name, cost in _COST if item.get_closest_marker(name)), default=0.3)
