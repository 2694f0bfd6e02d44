"""Task policy in one place: which steps retry, which cache, which must never hash their inputs.

Every Prefect task of the project is defined here, as a one-line wrapper around a function of
`tasks/` (pure) or `adapters/` (I/O); the exceptions are the shard tasks, defined beside
`run_shard`: `generate-shard-in-process` (flows/shard.py) and `generate-shard-on-worker`, beside the GPU
workers that serve it (flows/gpu_worker.py). Steps that receive a store, an engine or images use
NO_CACHE: hashing them is meaningless or fails. Idempotency comes from deterministic asset ids
and the manifest, not from Prefect's result cache.

Every step is called with its arguments quoted (`step`): steps are called with values, never
with futures, and Prefect would otherwise walk every argument, element by element, looking for
some, at every call (a shard's jobs, a run's rows: seconds of CPU at a thousand images).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.utilities.annotations import quote

from adapters.catalog import scan as catalog_scan
from adapters.catalog import snapshots
from adapters.infra import lake
from adapters.model.engine import model_identity
from adapters.steps import claims, conditioning, delivery, finishing, publish, run_outputs, style_scans
from flows import artifacts
from tasks.matrix import expand_matrix
from tasks.plan import choose_inputs, group_batches, plan_jobs, plan_shards


def step(fn: Callable[..., Any], *, name: str, **policy: Any) -> Callable[..., Any]:
    """`fn` as a Prefect task named `name`, never cached, called with its arguments quoted (see the module docstring)."""
    run = task(fn, name=name, cache_policy=NO_CACHE, **policy)

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        return run(*map(quote, args), **{k: quote(v) for k, v in kwargs.items()})

    call.task = run  # type: ignore[attr-defined]
    return call


def io_step(fn: Callable[..., Any], *, name: str) -> Callable[..., Any]:
    """An I/O step: S3 can blip, so it retries twice, a second apart (on top of the store's own retries)."""
    return step(fn, name=name, retries=2, retry_delay_seconds=1)


# Pure steps: cheap, deterministic, no retries needed.
expand = step(expand_matrix, name="expand-matrix")
choose = step(choose_inputs, name="choose-inputs")
plan = step(plan_jobs, name="plan-jobs")
batch = step(group_batches, name="group-batches")
shard = step(plan_shards, name="plan-shards")

# I/O steps.
read_reference = io_step(conditioning.read_reference, name="read-negative-reference")
# Catalog snapshots: a refresh reads only what changed and commits a snapshot; runs read one.
previous_snapshot = io_step(snapshots.previous_snapshot, name="previous-snapshot")
scan_catalog = io_step(catalog_scan.scan_catalog, name="scan-catalog")
write_snapshot = io_step(snapshots.write_snapshot, name="write-snapshot")
latest_snapshot = io_step(snapshots.latest_snapshot_id, name="latest-snapshot")
load_snapshot = io_step(snapshots.load_snapshot, name="load-snapshot")
published = io_step(publish.published_asset_ids, name="published-assets")
claim_owners = io_step(claims.owners_at_commit, name="claim-owners")
run_history = io_step(publish.run_history, name="run-history")
# The profile's revision: a hash of local files, or of an S3 mirror's listing for s3:// profiles.
identity = io_step(model_identity, name="model-identity")
# Control images, once per product and canvas, stored with the run for every shard to read.
controls = step(conditioning.write_controls, name="canny-controls", retries=1)

# A shard's staged rows, written last by the shard (its batches: adapters/steps/rendering.render_batch).
write_part = io_step(publish.stage_part, name="stage-table-part")

# Selection and publishing, after the shards and before the commit. Each rewrites its own
# uncommitted objects, so a retry is safe.
select_run = io_step(run_outputs.select_run, name="select-images")
write_sheets = io_step(run_outputs.write_sheets, name="contact-sheets")
write_overview = io_step(run_outputs.write_overview, name="overview-sheet")
write_gallery = io_step(run_outputs.write_gallery, name="gallery")
# After selection: upscale, paste back, shadow, marketplace checks (the tile and x4 methods run a model here).
finish_images = step(finishing.finish_run, name="finish-images", retries=1, tags=["gpu"])
# The commit: one Delta commit per table, each named for the run, so a retry never lands twice.
commit_tables = io_step(lake.commit_run, name="commit-tables")
write_manifest = io_step(publish.write_manifest, name="write-manifest")
# After the commit: the run's local copy (`RunRequest.local_copy`), for the CLI's out/.
copy_run = io_step(publish.copy_run, name="local-copy")
# Reports: artifacts never stop a run and are never retried.
start_progress = step(artifacts.start_progress, name="start-progress")
report_run = step(artifacts.report_run, name="run-artifacts")

# Style scans (flows/style_scan.py): a committed scan is read, a new one made on the GPU worker.
committed_scan = io_step(style_scans.committed_scan, name="committed-scan")
auto_scales = io_step(style_scans.auto_scales, name="auto-ip-scales")
run_scan = step(style_scans.run_scan, name="style-scan", retries=1, tags=["gpu"])

# Review and delivery (flows/review.py): reads, and writes that never write a thing twice, so a retry is safe.
# They run again when a suspended review resumes (its flow starts from the top): all cheap.
reviewed_run = io_step(delivery.reviewed_run, name="read-reviewed-run")
read_review_parts = io_step(delivery.read_parts, name="read-review-parts")
write_review_part = io_step(delivery.write_part_once, name="write-review-part")
deliver = io_step(delivery.deliver, name="deliver-approved")
mark_gallery = io_step(delivery.mark_gallery, name="gallery-review-states")
