"""Where a `stylematrix run` spends its wall time, phase by phase, at a given campaign size.

    .venv/bin/python bench/overhead.py [--seeds 32]   # 4 products x 2 style sets x 4 cells x seeds images

Starts the embedded S3 server, seeds the sample catalog, and runs the sample campaign (64 px,
2 steps, batch 16) with `stylematrix run` in a new process, as a user would. Each Prefect task
logs when it finishes; the time from the previous finish to a task's finish is charged to that
task's name, which is close to its own time because the campaign flow runs its steps one after
another. Before the first log line: imports and Prefect's temporary server. After the last:
the mirror to out/ and the command's exit. Prints a markdown table of phases and the share of
the wall time spent outside generation (the `render-batch` tasks).
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adapters.kit import ensure_tiny_kit  # noqa: E402
from adapters.local_s3 import LocalS3Server  # noqa: E402
from adapters.sample_catalog import seed_sample_catalog  # noqa: E402
from adapters.settings import Settings  # noqa: E402
from adapters.storage import S3Store  # noqa: E402

LINE = re.compile(r"^(\d\d:\d\d:\d\d\.\d{3}) \| \w+ +\| (?:Task run '([a-z-]+)-[0-9a-f]+' - Finished|Flow run .* - (Beginning|Finished))")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=32)
    args = parser.parse_args()
    for name, value in (("AWS_ACCESS_KEY_ID", "bench"), ("AWS_SECRET_ACCESS_KEY", "bench"), ("AWS_DEFAULT_REGION", "us-east-1")):
        os.environ.setdefault(name, value)
    with tempfile.TemporaryDirectory() as tmp_name, LocalS3Server() as server:
        tmp = Path(tmp_name)
        store = S3Store.from_settings(Settings(s3_endpoint=server.endpoint))
        for bucket in ("bench-catalog", "bench-assets"):
            store.ensure_bucket(bucket)
        seed_sample_catalog(store, "s3://bench-catalog")
        ensure_tiny_kit(tmp / "models")
        spec = tmp / "big.yaml"
        spec.write_text("name: big\nmatrix: {template: '{product} on {surface}, {lighting}', axes: {surface: [marble, beach], "
                        f"lighting: [dawn, dusk]}}, seeds: {args.seeds}}}\n"
                        "generation: {profile: tiny, width: 64, height: 64, steps: 2, batch_size: 16}\n")
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
            phases[match.group(2)] += (at - previous).total_seconds()
        previous = last = at
    phases["mirror to out/ and exit"] += wall - (last - started).total_seconds()
    images = 4 * 2 * 4 * args.seeds
    generating = phases.get("render-batch", 0.0)
    print(f"| phase ({images} images, {wall:.1f} s wall) | seconds | share |\n|---|---|---|")
    for name, seconds in sorted(phases.items(), key=lambda kv: -kv[1]):
        print(f"| {name} | {seconds:.1f} | {seconds / wall:.0%} |")
    print(f"\noutside generation: {(wall - generating) / wall:.0%} of the wall time "
          f"({(wall - generating) / images * 1000:.0f} ms per image; generating {generating / images * 1000:.0f} ms per image)")


if __name__ == "__main__":
    main()
