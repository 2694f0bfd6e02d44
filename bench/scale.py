"""A campaign of --images images on the simulated GPU (`sim` profile, no model): what the orchestration costs at scale.

    nice -n 5 .venv/bin/python bench/scale.py --images 100000 [--sim-seconds 0] [--plan-only] [--write-docs]

Starts the embedded S3 server (a subprocess), seeds the sample catalog and writes a campaign of
4 products x 2 style sets x 4 cells x (--images / 32) seeds at 64 px, then in this process:

- plans it: `plan_jobs` alone, and the whole dry run through the flow (catalog read, plan,
  published-id lookup), after a warm-up flow so Prefect's temporary server start is not counted;
- runs it with the shards in this process (the embedded default) and the simulated GPU's time per
  image, counting every S3 request this process makes by operation (every shard runs here, so that
  is all of them) and sampling this process's memory as the run goes;
- checks the result: every planned image once in the manifest, each one's bytes hashing to the
  recorded sha256, and counts the run's Prefect task runs.

Everything shares this machine's cores with the S3 server (and, here, other people's work).
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adapters.infra.settings import prepare_runtime_env  # noqa: E402

prepare_runtime_env()

from adapters.catalog.sample import seed_sample_catalog  # noqa: E402
from adapters.infra.local_s3 import LocalS3Server  # noqa: E402
from adapters.infra.settings import Settings, export_s3_endpoint, get_settings  # noqa: E402
from adapters.infra.storage import S3Store, parallel_map  # noqa: E402
from tasks.layout import AssetsLayout  # noqa: E402

CELLS = 4 * 2 * 4  # products x style sets x cells of the campaign below


def campaign_yaml(seeds: int) -> str:
    return (
        "name: scale\nproducts: {ids: [coffee-cup, rocket, alarm-clock, brand-logo]}\n"
        "styles: {ids: [space-age, earthy-textures]}\n"
        "matrix: {template: 'a photo of {product} on {surface}, {lighting}', "
        "axes: {surface: [marble, sand], lighting: [dawn, dusk]}, seeds: SEEDS}\n"
        "generation: {profile: sim, width: 64, height: 64, steps: 2, batch_size: 8}\n"
        "selection: {top_k: 3, clip_model: none}\n"
    ).replace("SEEDS", str(seeds))


class RequestCounter:
    """Every S3 call of this process, by operation (botocore's one entry point for API calls)."""

    def __init__(self) -> None:
        from botocore.client import BaseClient

        self.calls: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        real = BaseClient._make_api_call

        def counted(client, operation_name, api_params):
            with self._lock:
                self.calls[operation_name] += 1
            return real(client, operation_name, api_params)

        BaseClient._make_api_call = counted


class MemorySampler:
    """This process's resident memory every `interval` seconds, and the peak the kernel recorded."""

    def __init__(self, interval: float = 1.0) -> None:
        self.samples: list[tuple[float, float]] = []  # (seconds since start, MB)
        self.clock: list[float] = []  # each sample's wall-clock time (time.time()), to match Prefect's task runs
        self._interval = interval
        self._stop = threading.Event()
        self._start = time.perf_counter()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.samples.append((time.perf_counter() - self._start, rss_mb()))
            self.clock.append(time.time())
            if len(self.samples) % round(60 / self._interval) == 0:  # a line a minute, so a run stopped early still says where it was
                print(f"memory: {self.samples[-1][0]:.0f} s, RSS {self.samples[-1][1]:.0f} MB", flush=True)

    def stop(self) -> None:
        self._stop.set()


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def task_runs_of(flow_run_id: str) -> collections.Counter[str]:
    """The run's Prefect task runs by task name (in-process shards count as `generate-shard-in-process`)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    names: collections.Counter[str] = collections.Counter()
    with get_client(sync_client=True) as client:
        offset = 0
        while True:
            page = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
                                         limit=200, offset=offset)
            names.update(r.name.rsplit("-", 1)[0] for r in page)  # `generate-shard-in-process-3f2` -> generate-shard-in-process
            if len(page) < 200:
                return names
            offset += 200


def step_memory(flow_run_id: str, memory: MemorySampler) -> list[tuple[str, float, float, float]]:
    """Each step of the run after its shards (one task run each): (name, seconds, highest RSS while it ran, RSS at
    its end), in order, from the task runs' start and end times and the memory samples taken meanwhile."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs, offset = [], 0
        while page := client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
                                            limit=200, offset=offset):
            runs += page
            offset += 200
    shards_end = max((r.end_time for r in runs if r.end_time and r.name.startswith(("generate-shard", "stage-table"))),
                     default=None)
    steps = sorted((r for r in runs if r.start_time and r.end_time and shards_end and r.start_time >= shards_end),
                   key=lambda r: r.start_time)
    out = []
    for r in steps:
        start, end = r.start_time.timestamp(), r.end_time.timestamp()
        after = [mb for (_, mb), t in zip(memory.samples, memory.clock, strict=True) if t >= end][:1]
        during = [mb for (_, mb), t in zip(memory.samples, memory.clock, strict=True) if start <= t <= end] or after
        out.append((r.name.rsplit("-", 1)[0], end - start, max(during, default=float("nan")),
                    after[0] if after else float("nan")))  # a step shorter than the 1 s between samples: the next one
    return out


def plan_times(store: S3Store, catalog: str, images: int) -> dict[str, float]:
    from catalogs.models import RunRequest
    from flows.campaign import run_campaign
    from tasks.matrix import expand_matrix
    from tasks.plan import ModelIdentity, plan_jobs

    run_campaign(RunRequest(campaign="scale", dry_run=True, triggered_by="test"))  # warm-up: Prefect's server starts
    start = time.perf_counter()
    summary = run_campaign(RunRequest(campaign="scale", dry_run=True, triggered_by="test"))
    dry = time.perf_counter() - start
    assert summary.images_planned == images, summary
    from adapters.catalog import campaigns, snapshots

    spec, _ = campaigns.resolve_campaign(store, RunRequest(campaign="scale"), catalog, "sim")
    state = snapshots.load_snapshot(store, catalog)
    products = [p for p in state.products if p.product_id in spec.products.ids]
    styles = [s for s in state.styles if s.style_id in spec.styles.ids]
    start = time.perf_counter()
    jobs = plan_jobs(spec, products, styles, expand_matrix(spec.matrix), ModelIdentity(revision="sim-1", dtype="none"))
    planned = time.perf_counter() - start
    assert len(jobs) == images
    return {"dry_run_s": dry, "plan_jobs_s": planned}


def run(store: S3Store, assets: str, sim_seconds: float) -> dict:
    from catalogs.models import RunRequest
    from flows.campaign import run_campaign

    counter, memory = RequestCounter(), MemorySampler()
    start = time.perf_counter()
    summary = run_campaign(RunRequest(campaign="scale", triggered_by="test", sim_seconds=sim_seconds))
    wall = time.perf_counter() - start
    memory.stop()
    calls = dict(counter.calls)
    manifest = json.loads(store.get(summary.manifest))
    images = manifest["images"]
    ids = [i["asset_id"] for i in images]
    intact = sum(parallel_map(lambda i: hashlib.sha256(store.get(i["uri"])).hexdigest() == i["sha256"], images))
    from adapters.steps import publish

    (row,) = publish.read_table(store, manifest, "runs").to_dict("records")
    return {"summary": summary, "wall_s": wall, "calls": calls, "peak_mb": peak_mb(), "samples": memory.samples,
            "images": len(images), "unique": len(set(ids)), "intact": intact, "task_runs": task_runs_of(row["flow_run_id"]),
            "steps": step_memory(row["flow_run_id"], memory),
            "manifest_bytes": len(store.get(summary.manifest)),
            "gallery_bytes": sum(o.size for o in store.list(AssetsLayout.at(assets).run(summary.run_id).root + "/") if
                                 o.key.endswith("/index.html") or "/gallery/" in o.key),
            "sheets": len(summary.sheets),
            # The Delta tables' data files (the bench's bucket holds this one run): (table, rows, bytes).
            "parts": [(t["table"], t["rows"], sum(o.size for o in store.list(t["uri"] + "/") if o.key.endswith(".parquet")))
                      for t in manifest["tables"] if t["rows"]]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2048, help="a multiple of 32")
    parser.add_argument("--sim-seconds", type=float, default=0.0, help="simulated GPU time per image")
    parser.add_argument("--claim-lease-seconds", type=int, default=None,
                        help="the claims' lease (default: production's); shorter than the run to measure a run that "
                             "outlives it")
    parser.add_argument("--plan-only", action="store_true")
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()
    if args.images % CELLS:
        raise SystemExit(f"--images must be a multiple of {CELLS}")
    with tempfile.TemporaryDirectory() as tmp, LocalS3Server() as server:
        export_s3_endpoint(server.endpoint)
        import os

        os.environ.update({"STYLEMATRIX_CATALOG": "s3://scale-catalog", "STYLEMATRIX_ASSETS": "s3://scale-assets",
                           "STYLEMATRIX_MODEL_CACHE": str(Path(tmp) / "models"), "PREFECT_HOME": str(Path(tmp) / "prefect")})
        if args.claim_lease_seconds:
            os.environ["STYLEMATRIX_CLAIM_LEASE_SECONDS"] = str(args.claim_lease_seconds)
        get_settings.cache_clear()
        store = S3Store.from_settings(Settings(s3_endpoint=server.endpoint))
        for bucket in ("scale-catalog", "scale-assets"):
            store.ensure_bucket(bucket)
        seed_sample_catalog(store, "s3://scale-catalog")
        store.put("s3://scale-catalog/campaigns/scale.yaml", campaign_yaml(args.images // CELLS).encode())
        times = plan_times(store, "s3://scale-catalog", args.images)
        print(f"plan: plan_jobs {times['plan_jobs_s']:.2f} s, dry run through the flow {times['dry_run_s']:.2f} s "
              f"({args.images} images)", flush=True)
        if args.plan_only:
            if args.write_docs:
                from bench.harness import write_section

                write_section(ROOT / "docs" / "benchmarks.md", f"scale-plan-{args.images}", "\n".join([
                    f"## Planning {args.images:,} images (`bench/scale.py --plan-only`)", "",
                    f"Command: `nice -n 5 .venv/bin/python bench/scale.py --images {args.images} --plan-only "
                    "--write-docs`; 2 cores shared with the S3 server and other work.", "",
                    f"- `plan_jobs` alone: {times['plan_jobs_s']:.2f} s",
                    f"- the whole dry run through the flow (catalog snapshot, plan, published ids, estimate; Prefect's "
                    f"temporary server already up): {times['dry_run_s']:.2f} s", ""]))
            return
        result = run(store, "s3://scale-assets", args.sim_seconds)
    report(args, times, result)


def report(args, times: dict, r: dict) -> None:
    n = r["images"]
    per_image = sum(r["calls"].values()) / max(n, 1)
    lines = [
        f"images {n} (unique {r['unique']}, sha256 intact {r['intact']}) in {r['wall_s']:.0f} s "
        f"({n / r['wall_s']:.1f} images/s), peak RSS {r['peak_mb']:.0f} MB",
        f"S3 requests per image {per_image:.2f}: " + ", ".join(f"{k} {v / n:.2f}" for k, v in sorted(r["calls"].items())),
        f"Prefect task runs: {sum(r['task_runs'].values())} ({dict(r['task_runs'])})",
        f"manifest {r['manifest_bytes'] / n:.0f} bytes/image; gallery files {r['gallery_bytes'] / 1e6:.1f} MB; "
        f"sheets {r['sheets']}; parts {len(r['parts'])}, largest {max(p[2] for p in r['parts']) / 1e6:.2f} MB",
        "RSS samples (s, MB): " + ", ".join(f"{t:.0f}:{m:.0f}" for t, m in r["samples"][:: max(1, len(r["samples"]) // 12)]),
        "after the shards, each step (seconds; highest RSS while it ran, MB; RSS at its end, MB): " + "; ".join(
            f"{name} {secs:.1f} s, {high:.0f}, {end:.0f}" for name, secs, high, end in r["steps"]),
    ]
    print(f"plan_jobs {times['plan_jobs_s']:.2f} s; dry run {times['dry_run_s']:.2f} s")
    print("\n".join(lines))
    if args.write_docs:
        from bench.harness import write_section

        body = "\n".join([
            f"## A {n:,}-image campaign on the simulated GPU (`bench/scale.py`)", "",
            f"Command: `nice -n 5 .venv/bin/python bench/scale.py --images {args.images} --sim-seconds "
            f"{args.sim_seconds:g}" + (f" --claim-lease-seconds {args.claim_lease_seconds}"
                                       if args.claim_lease_seconds else "") + " --write-docs`. Profile `sim` (no model), 64 px, batches of 8, shards of 64 in the "
            "campaign's process (embedded default), moto S3 in a subprocess; 2 cores shared with the S3 server and "
            "other work.", "",
            f"- planning: `plan_jobs` {times['plan_jobs_s']:.2f} s; whole dry run through the flow "
            f"{times['dry_run_s']:.2f} s",
            *(f"- {line}" for line in lines), ""])
        lease = f"-lease{args.claim_lease_seconds}" if args.claim_lease_seconds else ""
        write_section(ROOT / "docs" / "benchmarks.md", f"scale-{n}{lease}", body)


if __name__ == "__main__":
    main()
