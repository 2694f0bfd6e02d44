"""A GPU worker: one long-lived process that loads its engine once and serves shard after shard.

    python -m flows.gpu_worker        # STYLEMATRIX_WORKER_NAME names it in the `worker` column

It is a Prefect task worker serving the `generate-shard-on-worker` task: a campaign hands each shard over
with `.delay()`, and the worker runs it in this process, where the engine loaded for the first
shard stays loaded for the next. Two choices differ from Prefect's stock task worker
(docs/operations.md says why):

- it takes a shard only when it is free. The stock worker acknowledges the next task run while
  it still runs one; if it then dies, that run was taken and never started, and the server
  never hands it out again. Here the worker opens its subscription, takes one run, closes it,
  runs the shard, and only then asks again; a run the server sends while it closes is not
  acknowledged and goes back to the queue;
- it beats (adapters/steps/heartbeats.py) while a shard runs, so the campaign can tell a dead
  worker's shard from a slow one and hand it out again;
- it stays listed with the server under a key that names its code version, busy or free, so a
  campaign can refuse to start when no worker runs its code (flows/fleet.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import os

import websockets.exceptions
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import TaskRun
from prefect.client.subscriptions import Subscription
from prefect.context import TaskRunContext
from prefect.logging import get_logger
from prefect.settings import get_current_settings
from prefect.task_worker import TaskWorker

from adapters.infra.code_version import code_version
from adapters.infra.processes import signals_interrupt
from adapters.infra.settings import get_settings
from adapters.infra.storage import S3Store
from adapters.model.engine import engine_loads, import_torch
from adapters.steps.heartbeats import Beat, Heartbeat
from flows.fleet import presence_key
from flows.progress import Progress
from flows.shard import ShardRuntime, run_shard
from flows.task_storage import S3TaskStorage  # noqa: F401 - the block class shards' parameters are read with
from tasks.plan import Shard, ShardContext

_served = 0  # shards this process has started


@task(name="generate-shard-on-worker", cache_policy=NO_CACHE, tags=["gpu"])
def generate_shard_task(shard: Shard, ctx: ShardContext) -> dict:
    """One shard on this worker, with the engine the process keeps; beats while it runs. Returns its part entry."""
    global _served
    _served += 1
    settings = get_settings()
    store = S3Store.from_settings(settings)
    task_run_id = str(TaskRunContext.get().task_run.id)
    beat = Beat(worker=settings.worker_name, pid=os.getpid(), task_run_id=task_run_id, shard=shard.index,
                shards_served=_served)
    progress = Progress()  # nobody listens here: the beats report this shard's images done
    progress.begin(shard.image_count)
    with Heartbeat(store, ctx.run.beat(task_run_id), beat, settings.shard_heartbeat_seconds,
                   engine_loads=engine_loads, images_done=lambda: progress.done):
        part = run_shard(shard, ctx, ShardRuntime(progress))
    get_run_logger().info("shard %d done on %s (process %d: %d shards served, engine loaded %d time(s))",
                          shard.index, settings.worker_name, os.getpid(), _served, engine_loads())
    return part


class ShardWorker(TaskWorker):
    """A task worker that takes the next task run only when the one it runs is finished (see the module docstring)."""

    async def _subscribe_to_task_scheduling(self) -> None:
        presence = asyncio.create_task(self._be_seen())
        try:
            while True:
                task_run = await self._take_one()
                if await self._acquire_token(task_run.id):
                    await self._safe_submit_scheduled_task_run(task_run)
        finally:
            presence.cancel()

    async def _be_seen(self) -> None:
        """Stay listed in the server's task-worker registry under a key naming this worker's code (flows/fleet.py).

        Nothing is ever submitted under that key: the subscription only waits, and reconnects after a restart.
        """
        key = presence_key(get_settings().worker_name, code_version(), generate_shard_task.task_key)
        while True:
            subscription = Subscription(model=TaskRun, path="/task_runs/subscriptions/scheduled", keys=[key],
                                        client_id=f"{self.client_id}-presence", base_url=get_current_settings().api.url)
            with contextlib.suppress(Exception):
                await subscription.__anext__()
            await asyncio.sleep(1)

    async def _take_one(self) -> TaskRun:
        while True:
            subscription = Subscription(model=TaskRun, path="/task_runs/subscriptions/scheduled", keys=self.task_keys,
                                        client_id=self.client_id, base_url=get_current_settings().api.url)
            try:
                return await subscription.__anext__()
            except (OSError, websockets.exceptions.WebSocketException) as exc:  # the server restarts: ask again
                get_logger("stylematrix.gpu_worker").warning("Prefect API unreachable (%s); asking again",
                                                             type(exc).__name__)
                await asyncio.sleep(1)
            finally:
                with contextlib.suppress(Exception):
                    await subscription.websocket.close()


async def serve() -> None:
    """Serve shards until stopped (SIGINT or SIGTERM)."""
    await ShardWorker(generate_shard_task, limit=1).astart()


def main() -> None:
    if not get_current_settings().api.url:
        raise SystemExit("gpu worker: PREFECT_API_URL is not set; a task worker needs a Prefect server")
    # SIGINT, SIGTERM and SIGHUP stop it, even where it was started with SIGINT ignored (in the background of a
    # non-interactive shell), as a campaign's stack and the tests stop it.
    with contextlib.suppress(KeyboardInterrupt), signals_interrupt():
        import_torch()  # before it asks for shards: importing the flows imports none
        asyncio.run(serve())


if __name__ == "__main__":
    main()
