"""Scale-out on simulated GPUs: N GPU task workers (`python -m flows.gpu_worker`, profile `sim`) on one Prefect server.

    nice -n 5 .venv/bin/python bench/sim_fleet.py --workers 1,2,4,8,16 --sim-seconds 1 --shards-per-worker 3 [--write-docs]
    (--sim-seconds 0: the orchestration ceiling)

Starts the embedded S3 server, a PostgreSQL cluster (adapters/infra/postgres.py) and a Prefect server
on it (flows/serve.PrefectStack, the helper the end-to-end tests use), with shards' parameters and
results in S3 (the task storage block a fleet uses, flows/task_storage.py). Then, for each N: N GPU
task workers, each a simulated GPU that takes `--sim-seconds` per image, and one campaign of N x `--shards-per-worker` shards of 64 images run
from this process with shard workers on. Images/s is counted from the images' write times (first
batch to last, so the workers' start is not counted); efficiency is images/s against N x the rate
of one worker. With `--sim-seconds 0` it measures the orchestration ceiling: what the campaign,
the workers, S3 and Prefect manage when a GPU costs nothing.

Every process shares this machine's cores: the S3 server, the Prefect server, the campaign and
the workers. Where those cores are the limit, the figures say so, not what N GPUs would give.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TMP = Path(tempfile.mkdtemp(prefix="stylematrix-sim-fleet-", dir="/tmp"))
TMP.chmod(0o711)  # run as root, the PostgreSQL cluster belongs to `postgres`, which must get through
os.environ["PREFECT_HOME"] = str(TMP / "prefect")
# Shards' parameters and results go through the S3 block registered below (flows/task_storage.py), in this
# process (the campaign's, which hands them out) as in the workers. Set before Prefect reads its settings.
os.environ["PREFECT_TASKS_SCHEDULING_DEFAULT_STORAGE_BLOCK"] = "stylematrix-s3/shards"

from adapters.infra.local_s3 import LocalS3Server, free_port  # noqa: E402
from adapters.infra.postgres import LocalPostgres  # noqa: E402
from adapters.infra.settings import prepare_runtime_env  # noqa: E402

PREFECT_PORT = free_port()
os.environ["PREFECT_API_URL"] = f"http://127.0.0.1:{PREFECT_PORT}/api"
prepare_runtime_env()

from adapters.catalog.sample import seed_sample_catalog  # noqa: E402
from adapters.infra.settings import Settings, child_env, export_s3_endpoint, get_settings  # noqa: E402
from adapters.infra.storage import S3Store  # noqa: E402
from adapters.steps import publish  # noqa: E402
from flows.serve import PrefectStack  # noqa: E402
from tasks.layout import AssetsLayout  # noqa: E402

IMAGES_PER_SHARD = 64


def campaign_yaml(name: str, seeds: int) -> str:
    return (f"name: {name}\nproducts: {{ids: [coffee-cup, rocket]}}\nstyles: {{ids: [space-age, earthy-textures]}}\n"
            "matrix: {template: 'a photo of {product} on {surface}', axes: {surface: [marble, sand]}, "
            f"seeds: {seeds}}}\n"
            "generation: {profile: sim, width: 64, height: 64, steps: 2, batch_size: 8}\n"
            "selection: {top_k: 3, clip_model: none}\n")


def wait_ready(stack: PrefectStack, names: list[str], timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all("Starting task worker" in (stack.log_dir / f"{n}.log").read_text(errors="replace") for n in names):
            return
        time.sleep(1)
    raise TimeoutError(f"GPU workers {names} did not start within {timeout:.0f} s; see {stack.log_dir}")


def one_fleet(stack: PrefectStack, store: S3Store, workers: int, args) -> dict:
    """N workers, one campaign of N x shards-per-worker shards; its images/s from the images' write times."""
    import pandas as pd

    from catalogs.models import RunRequest
    from flows.campaign import run_campaign

    names = [f"gpu-{workers}-{i + 1}" for i in range(workers)]
    env = {"STYLEMATRIX_SIM_SECONDS_PER_IMAGE": str(args.sim_seconds)}
    procs = [stack.start_gpu_worker(n, env) for n in names]
    try:
        wait_ready(stack, names)
        images = workers * args.shards_per_worker * IMAGES_PER_SHARD
        name, bucket = f"fleet-{workers}", f"fleet-assets-{workers}-{time.time_ns()}"  # nothing already published
        store.ensure_bucket(bucket)
        store.put(f"s3://fleet-catalog/campaigns/{name}.yaml", campaign_yaml(name, images // 8).encode())
        start = time.perf_counter()
        summary = run_campaign(RunRequest(campaign=name, assets=f"s3://{bucket}", triggered_by="test",
                                          sim_seconds=args.sim_seconds))
        wall = time.perf_counter() - start
        (manifest,) = publish.read_manifests(store, AssetsLayout.at(f"s3://{bucket}"))
        gens = publish.read_table(store, manifest, "generations")
        written = pd.to_datetime(gens["created_at"], utc=True)
        span = (written.max() - written.min()).total_seconds()
        per_batch = len(gens) / max(written.nunique(), 1)
        # The first batch's own time is not inside the span: add one batch's worth at the mean pace.
        rate = len(gens) / (span + per_batch * span / max(len(gens) - per_batch, 1)) if span else float("nan")
        return {"workers": workers, "images": len(gens), "unique": int(gens["asset_id"].nunique()), "wall": wall,
                "rate": rate, "used": sorted(set(gens["worker"])), "generation_wall": summary.images_per_second}
    finally:
        for proc, n in zip(procs, names, strict=True):
            proc.send_signal(signal.SIGTERM)  # a task worker stops on it (SIGINT may be ignored in a background job)
            stack.processes.pop(n, None)
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except Exception:
                proc.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2,4", help="comma-separated worker counts")
    parser.add_argument("--sim-seconds", type=float, default=0.25, help="simulated GPU time per image")
    parser.add_argument("--shards-per-worker", type=int, default=4)
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()
    counts = [int(n) for n in args.workers.split(",")]
    # SIGTERM ends the bench through its `finally`s: the workers and servers it started stop with it.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    (TMP / "logs").mkdir()
    with contextlib.ExitStack() as stops:  # stopped in reverse: the Prefect server, S3, PostgreSQL, the folder
        stops.callback(shutil.rmtree, TMP, ignore_errors=True)
        postgres = LocalPostgres(TMP / "postgres", free_port())
        stops.callback(postgres.stop)
        postgres.start()
        server = stops.enter_context(LocalS3Server())
        export_s3_endpoint(server.endpoint)
        os.environ.update({"STYLEMATRIX_CATALOG": "s3://fleet-catalog",
                           "STYLEMATRIX_SHARD_WORKERS": "true", "STYLEMATRIX_SHARD_POLL_SECONDS": "1",
                           "STYLEMATRIX_MODEL_CACHE": str(TMP / "models")})
        get_settings.cache_clear()
        store = S3Store.from_settings(Settings(s3_endpoint=server.endpoint))
        for bucket in ("fleet-catalog", "fleet-tasks"):
            store.ensure_bucket(bucket)
        seed_sample_catalog(store, "s3://fleet-catalog")
        stack = PrefectStack(home=TMP / "prefect", port=PREFECT_PORT, env=child_env(), log_dir=TMP / "logs",
                             database_url=postgres.database("simfleet"))
        stops.callback(stack.stop)
        stack.start_server()
        stack.register_task_storage("s3://fleet-tasks/_prefect/tasks")
        assert stack.task_storage == os.environ["PREFECT_TASKS_SCHEDULING_DEFAULT_STORAGE_BLOCK"]
        results = [one_fleet(stack, store, n, args) for n in counts]
    report(results, args)


def report(results: list[dict], args) -> None:
    base = results[0]["rate"] / results[0]["workers"]
    lines = [f"| {r['workers']} | {r['images']} | {r['unique']} | {r['wall']:.1f} s | {r['rate']:.1f} | "
             f"{r['rate'] / (r['workers'] * base):.0%} | {len(r['used'])} |" for r in results]
    table = ["| workers | images | unique | campaign wall | images/s | efficiency vs N x one | workers used |",
             "|---|---|---|---|---|---|---|", *lines]
    print("\n".join(table))
    if args.write_docs:
        from bench.harness import write_section

        key = "sim-fleet-ceiling" if args.sim_seconds == 0 else "sim-fleet"
        body = "\n".join([
            f"## Simulated GPUs: {args.workers} workers at {args.sim_seconds:g} s per image (`bench/sim_fleet.py`)", "",
            f"Command: `nice -n 5 .venv/bin/python bench/sim_fleet.py --workers {args.workers} --sim-seconds "
            f"{args.sim_seconds:g} --shards-per-worker {args.shards_per_worker} --write-docs`. Prefect server "
            "(PostgreSQL, flows/serve.PrefectStack; shards' parameters and results in S3), moto S3, the campaign and every worker on this machine's 2 cores, "
            "shared with other work; images/s from the images' write times.", "", *table, ""])
        write_section(ROOT / "docs" / "benchmarks.md", key, body)


if __name__ == "__main__":
    main()
