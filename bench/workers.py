"""Wall time of one campaign in the campaign's process, on one GPU worker and on two, with real Prefect on loopback.

    .venv/bin/python bench/workers.py [--images-per-shard 16] [--seeds 8] [--write-docs]

Starts the embedded S3 server, then for 0 (shards in the campaign's process), 1 and 2 GPU
workers: a Prefect server, the pool, the deployments and the workers (flows/serve.py), runs the
sample campaign with `--seeds` seeds (8: 256 images) through the `campaign` deployment into a
fresh assets prefix, and prints the wall time and images/s of each, and with one worker the
per-shard fixed cost (`shard_overhead`): what a shard costs the worker beyond making its images. The workers share this machine's cores: on a CPU-only box two workers say how
much of a run is orchestration that overlaps, not what two GPUs would give.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adapters.catalog.sample import seed_sample_catalog  # noqa: E402
from adapters.infra.local_s3 import LocalS3Server, free_port  # noqa: E402
from adapters.infra.settings import Settings, child_env, export_s3_endpoint  # noqa: E402
from adapters.infra.storage import S3Store  # noqa: E402
from adapters.model.kit import ensure_tiny_kit  # noqa: E402
from adapters.steps import publish  # noqa: E402
from flows.serve import PrefectStack, start_stack  # noqa: E402
from tasks.layout import AssetsLayout  # noqa: E402


def shard_overhead(store: S3Store, assets: str) -> tuple[float, int]:
    """Seconds each shard costs on the worker beyond making its images, and the shard count.

    From the server's `generate-shard-on-worker` task runs (start, end) and the run's `generations` rows, whose
    batches each share the `created_at` of the moment their images were written. The pace of a batch
    is the median gap between consecutive batches of one shard; a shard's fixed cost is its task run's
    time less its batches at that pace, plus the hand-over from the shard before it. Meaningful with one
    worker, where every shard waits for the one before it, and with two batches or more per shard.
    """
    import pandas as pd
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_="-shard-")), limit=200)
    shards = sorted((r for r in runs if r.start_time and r.end_time), key=lambda r: r.start_time)
    (manifest,) = publish.read_manifests(store, AssetsLayout.at(assets))
    written = pd.to_datetime(publish.read_table(store, manifest, "generations")["created_at"], utc=True)
    batches = sorted(set(written.dt.to_pydatetime()))
    inside = [[t for t in batches if s.start_time <= t <= s.end_time] for s in shards]
    paces = [(b - a).total_seconds() for times in inside for a, b in zip(times, times[1:], strict=False)]
    if not paces:  # one batch per shard: no pace to measure
        return float("nan"), len(shards)
    pace = statistics.median(paces)
    fixed = sum((s.end_time - s.start_time).total_seconds() - len(times) * pace for s, times in zip(shards, inside, strict=True))
    gaps = sum((b.start_time - a.end_time).total_seconds() for a, b in zip(shards, shards[1:], strict=False))
    return (fixed + gaps) / max(len(shards), 1), len(shards)


def run_once(endpoint: str, catalog: str, gpus: int, images_per_shard: int, seeds: int,
             tmp: Path) -> tuple[float, int, float | None]:
    """(seconds, images, shard overhead) of the sample campaign on `gpus` workers; the tiny kit is in `tmp/models`."""
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    store = S3Store.from_settings(Settings(s3_endpoint=endpoint))
    assets = f"s3://bench-assets-{uuid.uuid4().hex[:8]}"
    store.ensure_bucket(assets.removeprefix("s3://"))
    env = child_env({
        "AWS_ENDPOINT_URL_S3": endpoint, "STYLEMATRIX_CATALOG": catalog, "STYLEMATRIX_ASSETS": assets,
        "STYLEMATRIX_MODEL_CACHE": str(tmp / "models"), "STYLEMATRIX_DEVICE": "cpu", "HF_HUB_OFFLINE": "1",
        "STYLEMATRIX_IMAGES_PER_SHARD": str(images_per_shard), "STYLEMATRIX_SHARD_POLL_SECONDS": "1",
        "PREFECT_WORKER_QUERY_SECONDS": "2",
    })
    stack = start_stack(PrefectStack(home=tmp / f"prefect-{gpus}", port=free_port(), env=env,
                                     log_dir=tmp / f"logs-{gpus}"), gpus=gpus)
    try:
        with temporary_settings({PREFECT_API_URL: stack.api_url}):
            start = time.perf_counter()
            request = {"campaign": "sample", "triggered_by": "api", "seeds": list(range(1, seeds + 1))}
            run = run_deployment("run-campaign/campaign", parameters={"request": request},
                                 timeout=1800, poll_interval=1, as_subflow=False)
            elapsed = time.perf_counter() - start
            overhead = shard_overhead(store, assets)[0] if gpus == 1 else None
        if not run.state.is_completed():
            raise SystemExit(f"campaign with {gpus} worker(s) ended {run.state.type.value}: {run.state.message}")
        images = sum(1 for o in store.list(f"{assets}/runs/") if "/images/" in o.key)
        return elapsed, images, overhead
    finally:
        stack.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images-per-shard", type=int, default=16)
    parser.add_argument("--seeds", type=int, default=8, help="seeds per cell: 32 images each")
    parser.add_argument("--write-docs", action="store_true", help="record the figures in docs/benchmarks.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name, LocalS3Server() as server:
        tmp = Path(tmp_name)
        export_s3_endpoint(server.endpoint)  # dummy credentials for the embedded server
        store = S3Store.from_settings(Settings(s3_endpoint=server.endpoint))
        catalog = "s3://bench-catalog"
        store.ensure_bucket("bench-catalog")
        seed_sample_catalog(store, catalog)
        ensure_tiny_kit(tmp / "models")
        results = {gpus: run_once(server.endpoint, catalog, gpus, args.images_per_shard, args.seeds, tmp)
                   for gpus in (0, 1, 2)}
    (t0, n0, _), (t1, n1, fixed), (t2, n2, _) = results[0], results[1], results[2]
    lines = [
        f"| in-process (no worker) | {n0} | {t0:.1f} s | {n0 / t0:.2f} | 100% |",
        f"| 1 gpu worker | {n1} | {t1:.1f} s | {n1 / t1:.2f} | {(n1 / t1) / (n0 / t0):.0%} |",
        f"| 2 gpu workers | {n2} | {t2:.1f} s | {n2 / t2:.2f} | {(n2 / t2) / (n0 / t0):.0%} |",
    ]
    shards = -(-n1 // args.images_per_shard)
    print("\n".join(lines))
    print(f"per-shard fixed cost on one worker: {fixed:.2f} s ({shards} shards); "
          f"two workers / one worker wall time: {t2 / t1:.2f} (speed-up {t1 / t2:.2f}x)")
    if args.write_docs:
        record(lines, t1 / t2, fixed, shards, n1, args)


def record(lines: list[str], speedup: float, fixed: float, shards: int, images: int, args) -> None:
    import platform

    doc = ROOT / "docs" / "benchmarks.md"
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    start, end = "<!-- workers:start -->", "<!-- workers:end -->"
    section = "\n".join([
        start,
        "## Scale-out: in-process, one GPU worker, two (`bench/workers.py`)",
        "",
        f"Sample campaign with {args.seeds} seeds ({images} images, tiny kit, 128 px, 4 steps), shards of "
        f"{args.images_per_shard} images ({shards} shards), campaign started through the `campaign` deployment "
        f"on a real Prefect server with its workers on loopback, {platform.processor() or platform.machine()}, "
        "CPU only: the campaign and its workers share the same cores. Workers are warm GPU task workers "
        "(flows/gpu_worker.py).",
        "",
        "| shards run | images | wall time | images/s | of in-process |",
        "|---|---|---|---|---|",
        *lines,
        "",
        f"Per-shard fixed cost on one worker (each shard's task run less its batches at their steady pace, plus "
        f"the hand-over from the shard before; from the server's task runs and the images' write times): {fixed:.2f} s. Speed-up with two workers: {speedup:.2f}x. "
        f"Command: `.venv/bin/python bench/workers.py --images-per-shard {args.images_per_shard} "
        f"--seeds {args.seeds} --write-docs`.",
        end,
    ])
    if start in text:
        text = text[: text.index(start)] + section + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    doc.write_text(text)


if __name__ == "__main__":
    main()
