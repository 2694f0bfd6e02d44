"""Where a `stylematrix run` spends its wall time, phase by phase, and how much of it is outside generation.

    .venv/bin/python bench/overhead.py [--seeds 32 128] [--size 64] [--steps 2]

For each `--seeds` value, starts the embedded S3 server, seeds the sample catalog, and runs the
sample campaign (4 products x 2 style sets x 4 cells x seeds images, batch 16) with
`stylematrix run` in a new process, as a user would. Each Prefect task logs when it finishes; the
time from the previous finish to a task's finish is charged to that task's name, which is close to
its own time because the campaign flow runs its steps one after another. Before the first log
line: imports and Prefect's temporary server. After the last: the command's exit.

The generation phase is the run's own `runs.generation_wall_seconds` (engine loading, generation,
scoring, writing the images and parts); everything else is outside generation. The engine's own
time per image is `generations.generation_seconds` (the pipeline call), for comparing this kit's
images with a real model's on a GPU (0.1-0.3 s per 512 px image).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path

import pyarrow.dataset as ds
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adapters.catalog.sample import seed_sample_catalog  # noqa: E402
from adapters.infra.local_s3 import LocalS3Server  # noqa: E402
from adapters.infra.settings import Settings  # noqa: E402
from adapters.infra.storage import S3Store  # noqa: E402
from adapters.model.kit import ensure_tiny_kit  # noqa: E402

# A shard's batches are plain calls inside its task run: their time ends at its table part's task.
SHARD = "generate-shard-in-process (its batches and table part)"
LINE = re.compile(r"^(\d\d:\d\d:\d\d\.\d{3}) \| \w+ +\| (?:Task run '([a-z-]+)-[0-9a-f]+' - Finished|Flow run .* - (Beginning|Finished))")


def run_once(seeds: int, size: int, steps: int) -> dict:
    """One `stylematrix run` of 4 x 2 x 4 x `seeds` images: its wall time, phases, and its own recorded figures."""
    with tempfile.TemporaryDirectory() as tmp_name, LocalS3Server() as server:
        tmp = Path(tmp_name)
        store = S3Store.from_settings(Settings(s3_endpoint=server.endpoint))
        for bucket in ("bench-catalog", "bench-assets"):
            store.ensure_bucket(bucket)
        seed_sample_catalog(store, "s3://bench-catalog")
        ensure_tiny_kit(tmp / "models")
        spec = tmp / "big.yaml"
        spec.write_text("name: big\nmatrix: {template: '{product} on {surface}, {lighting}', axes: {surface: [marble, beach], "
                        f"lighting: [dawn, dusk]}}, seeds: {seeds}}}\n"
                        f"generation: {{profile: tiny, width: {size}, height: {size}, steps: {steps}, batch_size: 16}}\n")
        env = {**os.environ, "AWS_ENDPOINT_URL_S3": server.endpoint, "STYLEMATRIX_CATALOG": "s3://bench-catalog",
               "STYLEMATRIX_ASSETS": "s3://bench-assets", "STYLEMATRIX_MODEL_CACHE": str(tmp / "models"),
               "STYLEMATRIX_DEVICE": "cpu", "STYLEMATRIX_OUT_DIR": str(tmp / "out"), "HF_HUB_OFFLINE": "1",
               "PREFECT_HOME": str(tmp / "prefect"), "PYTHONPATH": str(ROOT)}
        # A first command migrates the new PREFECT_HOME's database: not part of a run's cost.
        subprocess.run([sys.executable, "-m", "flows.cli", "run", "--campaign", str(spec), "--dry-run"], env=env, cwd=tmp,
                       capture_output=True, timeout=600)
        started = datetime.now()
        clock = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "flows.cli", "run", "--campaign", str(spec)], env=env, cwd=tmp,
                              capture_output=True, text=True, timeout=3600)
        wall = time.perf_counter() - clock
        if done.returncode:
            raise SystemExit(done.stderr[-3000:])
        local = tmp / "out" / "latest"
        (run,) = ds.dataset(local / "tables" / "runs", format="parquet", partitioning="hive").to_table().to_pylist()
        engine = sum(pq.read_table(local / "generations.parquet", columns=["generation_seconds"])["generation_seconds"].to_pylist())
    phases: dict[str, float] = defaultdict(float)
    previous = started
    first = last = None
    for line in (done.stdout + done.stderr).splitlines():
        match = LINE.match(line)
        if not match:
            continue
        at = datetime.combine(started.date(), datetime.strptime(match.group(1), "%H:%M:%S.%f").time())
        if first is None:
            first = at
            phases["imports and Prefect's temporary server"] += (at - started).total_seconds()
        elif match.group(2):
            phases[SHARD if match.group(2) in ("generate-shard-in-process", "stage-table-part") else match.group(2)] += \
                (at - previous).total_seconds()
        previous = last = at
    phases["flow run's end and the command's exit"] += wall - (last - started).total_seconds()
    return {"images": 4 * 2 * 4 * seeds, "wall": wall, "phases": dict(phases),
            "generation": float(run["generation_wall_seconds"]), "engine": engine}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[32], help="seeds per cell: one run per value")
    parser.add_argument("--size", type=int, default=64, help="image width and height")
    parser.add_argument("--steps", type=int, default=2, help="denoising steps")
    args = parser.parse_args()
    for name, value in (("AWS_ACCESS_KEY_ID", "bench"), ("AWS_SECRET_ACCESS_KEY", "bench"), ("AWS_DEFAULT_REGION", "us-east-1")):
        os.environ.setdefault(name, value)
    results = [run_once(seeds, args.size, args.steps) for seeds in args.seeds]
    for r in results:
        print(f"\n| phase ({r['images']} images, {r['wall']:.1f} s wall) | seconds | share |\n|---|---|---|")
        for name, seconds in sorted(r["phases"].items(), key=lambda kv: -kv[1]):
            if seconds >= 0.05:
                print(f"| {name} | {seconds:.1f} | {seconds / r['wall']:.0%} |")
    print(f"\n{args.size} px, {args.steps} steps, batch 16:\n\n| images | wall | generation phase | engine per image "
          "| outside generation | outside, per image |\n|---|---|---|---|---|---|")
    for r in results:
        outside = r["wall"] - r["generation"]
        print(f"| {r['images']} | {r['wall']:.1f} s | {r['generation']:.1f} s | {r['engine'] / r['images'] * 1000:.0f} ms "
              f"| {outside:.1f} s (**{outside / r['wall']:.0%}**) | {outside / r['images'] * 1000:.1f} ms |")


if __name__ == "__main__":
    main()
