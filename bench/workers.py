"""Wall time of one campaign on one GPU worker against two, with real Prefect workers on loopback.

    .venv/bin/python bench/workers.py [--images-per-shard 16] [--write-docs]

Starts the embedded S3 server, then for 1 and 2 `gpu` workers: a Prefect server, the pools,
the deployments and the workers (flows/serve.py), runs the sample campaign through the
`campaign` deployment into a fresh assets prefix, and prints the wall time of each and the ratio.
The workers share this machine's cores: on a CPU-only box the ratio says how much of a run is
orchestration and model loading that overlaps, not what two GPUs would give.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adapters.kit import ensure_tiny_kit  # noqa: E402
from adapters.local_s3 import LocalS3Server, free_port  # noqa: E402
from adapters.sample_catalog import seed_sample_catalog  # noqa: E402
from adapters.settings import Settings, child_env, export_s3_endpoint  # noqa: E402
from adapters.storage import S3Store  # noqa: E402
from flows.serve import start_stack  # noqa: E402


def run_once(endpoint: str, catalog: str, models: Path, gpus: int, images_per_shard: int, tmp: Path) -> tuple[float, int]:
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    store = S3Store.from_settings(Settings(s3_endpoint=endpoint))
    assets = f"s3://bench-assets-{uuid.uuid4().hex[:8]}"
    store.ensure_bucket(assets.removeprefix("s3://"))
    env = child_env({
        "AWS_ENDPOINT_URL_S3": endpoint, "STYLEMATRIX_CATALOG": catalog, "STYLEMATRIX_ASSETS": assets,
        "STYLEMATRIX_MODEL_CACHE": str(models), "STYLEMATRIX_DEVICE": "cpu", "HF_HUB_OFFLINE": "1",
        "STYLEMATRIX_IMAGES_PER_SHARD": str(images_per_shard), "STYLEMATRIX_SHARD_POLL_SECONDS": "1",
        "PREFECT_WORKER_QUERY_SECONDS": "2",
    })
    stack = start_stack(tmp / f"prefect-{gpus}", free_port(), gpus=gpus, env=env, log_dir=tmp / f"logs-{gpus}")
    try:
        with temporary_settings({PREFECT_API_URL: stack.api_url}):
            start = time.perf_counter()
            run = run_deployment("run-campaign/campaign", parameters={"request": {"campaign": "sample", "triggered_by": "api"}},
                                 timeout=1800, poll_interval=1, as_subflow=False)
            elapsed = time.perf_counter() - start
        if not run.state.is_completed():
            raise SystemExit(f"campaign with {gpus} worker(s) ended {run.state.type.value}: {run.state.message}")
        images = sum(1 for o in store.list(f"{assets}/runs/") if "/images/" in o.key)
        return elapsed, images
    finally:
        stack.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images-per-shard", type=int, default=16)
    parser.add_argument("--write-docs", action="store_true", help="record the figures in docs/benchmarks.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name, LocalS3Server() as server:
        tmp = Path(tmp_name)
        export_s3_endpoint(server.endpoint)  # dummy credentials for the embedded server
        store = S3Store.from_settings(Settings(s3_endpoint=server.endpoint))
        catalog = "s3://bench-catalog"
        store.ensure_bucket("bench-catalog")
        seed_sample_catalog(store, catalog)
        models = tmp / "models"
        ensure_tiny_kit(models)
        results = {gpus: run_once(server.endpoint, catalog, models, gpus, args.images_per_shard, tmp) for gpus in (1, 2)}
    (t1, n1), (t2, n2) = results[1], results[2]
    lines = [
        f"| 1 gpu worker | {n1} | {t1:.1f} s | {n1 / t1:.2f} |",
        f"| 2 gpu workers | {n2} | {t2:.1f} s | {n2 / t2:.2f} |",
    ]
    print("\n".join(lines))
    print(f"two workers / one worker wall time: {t2 / t1:.2f} (speed-up {t1 / t2:.2f}x)")
    if args.write_docs:
        record(lines, t1 / t2, args.images_per_shard)


def record(lines: list[str], speedup: float, images_per_shard: int) -> None:
    import platform

    doc = ROOT / "docs" / "benchmarks.md"
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    start, end = "<!-- workers:start -->", "<!-- workers:end -->"
    section = "\n".join([
        start,
        "## Scale-out: one GPU worker against two (`bench/workers.py`)",
        "",
        f"Sample campaign (64 images, tiny kit, 128 px, 4 steps), shards of {images_per_shard} images, "
        f"real Prefect server and process workers on loopback, {platform.processor() or platform.machine()}, "
        "CPU only: both workers share the same cores.",
        "",
        "| workers | images | wall time | images/s |",
        "|---|---|---|---|",
        *lines,
        "",
        f"Speed-up with two workers: {speedup:.2f}x. Command: `.venv/bin/python bench/workers.py --write-docs`.",
        end,
    ])
    if start in text:
        text = text[: text.index(start)] + section + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    doc.write_text(text)


if __name__ == "__main__":
    main()
