"""Runs that survive: a campaign through a throttling S3 endpoint against a clean one, and a run killed partway then rerun.

    .venv/bin/python bench/survival.py [--throttle 0.25] [--reset 0.06] [--images 512] [--kill-at 176]

1. The sample campaign (64 images) with `stylematrix run` directly against the embedded S3
   server, then through the fault proxy of the tests (503 SlowDown and connection resets at the
   given rates, seeded): wall time of each, the ratio, the proxy's counts, and objects lost.
2. A campaign of `--images` images started with `stylematrix run`, killed (SIGTERM) once
   `--kill-at` images are stored, then run again: how many images the rerun generated and how
   many it took over.
Prints a markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adapters.catalog.sample import seed_sample_catalog  # noqa: E402
from adapters.infra.local_s3 import LocalS3Server  # noqa: E402
from adapters.infra.settings import Settings  # noqa: E402
from adapters.infra.storage import S3Store  # noqa: E402
from adapters.model.kit import ensure_tiny_kit  # noqa: E402
from adapters.steps import publish  # noqa: E402
from tasks.layout import AssetsLayout  # noqa: E402
from tests.s3_faults import FaultyS3Proxy  # noqa: E402

CLI = [sys.executable, "-m", "flows.cli", "run", "--campaign"]


def env_for(endpoint: str, catalog: str, assets: str, models: Path, home: Path) -> dict[str, str]:
    return {**os.environ, "AWS_ENDPOINT_URL_S3": endpoint, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
            "STYLEMATRIX_CATALOG": catalog, "STYLEMATRIX_ASSETS": assets, "STYLEMATRIX_MODEL_CACHE": str(models),
            "STYLEMATRIX_DEVICE": "cpu", "STYLEMATRIX_OUT_DIR": str(home / "out"), "HF_HUB_OFFLINE": "1",
            "PREFECT_HOME": str(home / "prefect"), "PYTHONPATH": str(ROOT)}


def fresh_assets(store: S3Store) -> str:
    name = f"bench-{uuid.uuid4().hex[:8]}"
    store.ensure_bucket(name)
    return f"s3://{name}"


def images(store: S3Store, assets: str) -> list[str]:
    return [o.uri for o in store.list(f"{assets}/runs/") if "/images/" in o.key]


def checked(store: S3Store, assets: str) -> tuple[int, int]:
    """(rows recorded, rows whose object is missing or has other bytes)."""
    rows = [r for m in publish.read_manifests(store, AssetsLayout.at(assets)) for r in publish.read_table(store, m, "generations").itertuples()]
    bad = sum(1 for r in rows if not store.exists(r.output_key) or hashlib.sha256(store.get(r.output_key)).hexdigest() != r.sha256)
    return len(rows), bad


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--throttle", type=float, default=0.25)
    parser.add_argument("--reset", type=float, default=0.06)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--kill-at", type=int, default=176)
    args = parser.parse_args()
    for name, value in (("AWS_ACCESS_KEY_ID", "bench"), ("AWS_SECRET_ACCESS_KEY", "bench"), ("AWS_DEFAULT_REGION", "us-east-1")):
        os.environ.setdefault(name, value)
    with tempfile.TemporaryDirectory() as tmp_name, LocalS3Server() as server:
        tmp = Path(tmp_name)
        store = S3Store.from_settings(Settings(s3_endpoint=server.endpoint))
        catalog = fresh_assets(store)
        seed_sample_catalog(store, catalog)
        models = tmp / "models"
        ensure_tiny_kit(models)
        lines = ["| run | wall s | images recorded | objects lost | S3 requests | throttled | reset |", "|---|---|---|---|---|---|---|"]
        walls = {}
        for label, faults in (("clean endpoint", False), (f"{args.throttle:.0%} throttled, {args.reset:.0%} reset", True)):
            assets = fresh_assets(store)
            proxy = FaultyS3Proxy(server.endpoint, throttle=args.throttle, reset=args.reset, seed=7) if faults else None
            if proxy:
                proxy.__enter__()
            try:
                endpoint = proxy.endpoint if proxy else server.endpoint
                start = time.perf_counter()
                done = subprocess.run(CLI + ["sample"], env=env_for(endpoint, catalog, assets, models, tmp), cwd=tmp,
                                      capture_output=True, text=True, timeout=1800)
                walls[label] = time.perf_counter() - start
            finally:
                if proxy:
                    proxy.__exit__(None, None, None)
            if done.returncode:
                raise SystemExit(f"{label}: run failed: {done.stderr[-2000:]}")
            rows, lost = checked(store, assets)
            c = proxy.counts if proxy else {}
            lines.append(f"| {label} | {walls[label]:.1f} | {rows} | {lost} | {c.get('requests', '-')} | "
                         f"{c.get('503', '-')} | {c.get('reset-before', 0) + c.get('reset-after', 0) if proxy else '-'} |")
        ratio = list(walls.values())[1] / list(walls.values())[0]
        print("\n".join(lines) + f"\n\nwall time under faults / clean: {ratio:.2f}\n")

        # A run killed partway, then the same command again.
        assets = fresh_assets(store)
        seeds = max(1, args.images // 32)  # 4 products x 2 styles x 4 cells x seeds
        spec = tmp / "big.yaml"
        spec.write_text(f"name: big\nmatrix: {{template: '{{product}} on {{surface}}, {{lighting}}', axes: {{surface: [marble, beach], "
                        f"lighting: [dawn, dusk]}}, seeds: {seeds}}}\ngeneration: {{profile: tiny, width: 64, height: 64, "
                        "steps: 2, batch_size: 16}\n")
        env = env_for(server.endpoint, catalog, assets, models, tmp) | {"STYLEMATRIX_CLAIM_LEASE_SECONDS": "5"}
        first = subprocess.Popen(CLI + [str(spec)], env=env, cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while len(images(store, assets)) < args.kill_at and first.poll() is None:
            time.sleep(0.2)
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=60)
        made_first = len(images(store, assets))
        time.sleep(6)  # past the claim lease
        again = subprocess.run(CLI + [str(spec)], env=env, cwd=tmp, capture_output=True, text=True, timeout=1800)
        if again.returncode:
            raise SystemExit(f"rerun failed: {again.stderr[-2000:]}")
        (manifest,) = publish.read_manifests(store, AssetsLayout.at(assets))
        run = publish.read_table(store, manifest, "runs").iloc[0]
        rows, lost = checked(store, assets)
        print("| planned | made before SIGTERM | rerun generated | rerun took over | rows | objects lost | image objects |\n"
              "|---|---|---|---|---|---|---|\n"
              f"| {run['images_planned']} | {made_first} | {run['images_generated']} | {run['images_taken_over']} | {rows} | "
              f"{lost} | {len(images(store, assets))} |")


if __name__ == "__main__":
    main()
