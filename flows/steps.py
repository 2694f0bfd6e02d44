"""Task policy in one place: which steps retry, which cache, which must never hash their inputs.

Every Prefect task of the project is defined here, as a one-line wrapper around a function of
`tasks/` (pure) or `adapters/` (I/O); the one exception is `generate-shard`, the task GPU workers
serve, defined beside them in flows/gpu_worker.py. Steps that receive a store, an engine or images use
NO_CACHE: hashing them is meaningless or fails. Idempotency comes from deterministic asset ids
and the manifest, not from Prefect's result cache.
"""

from __future__ import annotations

from functools import partial

from prefect import task
from prefect.cache_policies import NO_CACHE

from adapters import (
    catalog_scan,
    claims,
    conditioning,
    delivery,
    publish,
    rendering,
    run_outputs,
    snapshots,
    style_scans,
)
from adapters.engine import model_identity
from flows import artifacts
from tasks.matrix import expand_matrix
from tasks.plan import choose_inputs, group_batches, plan_jobs, plan_shards

# S3 can blip: I/O steps retry twice, a second apart (on top of the store's own retries).
io_task = partial(task, retries=2, retry_delay_seconds=1, cache_policy=NO_CACHE)

# Pure steps: cheap, deterministic, no retries needed.
expand = task(expand_matrix, name="expand-matrix", cache_policy=NO_CACHE)
choose = task(choose_inputs, name="choose-inputs", cache_policy=NO_CACHE)
plan = task(plan_jobs, name="plan-jobs", cache_policy=NO_CACHE)
batch = task(group_batches, name="group-batches", cache_policy=NO_CACHE)
shard = task(plan_shards, name="plan-shards", cache_policy=NO_CACHE)

# I/O steps.
read_reference = io_task(conditioning.read_reference, name="read-negative-reference")
# Catalog snapshots: a refresh reads only what changed and commits a snapshot; runs read one.
previous_snapshot = io_task(snapshots.previous_snapshot, name="previous-snapshot")
scan_catalog = io_task(catalog_scan.scan_catalog, name="scan-catalog")
write_snapshot = io_task(snapshots.write_snapshot, name="write-snapshot")
latest_snapshot = io_task(snapshots.latest_snapshot_id, name="latest-snapshot")
load_snapshot = io_task(snapshots.load_snapshot, name="load-snapshot")
published = io_task(publish.published_asset_ids, name="published-assets")
claim_owners = io_task(claims.owners, name="claim-owners")
run_history = io_task(publish.run_history, name="run-history")
# The profile's revision: a hash of local files, or of an S3 mirror's listing for s3:// profiles.
identity = io_task(model_identity, name="model-identity")
# Control images, once per product and canvas, stored with the run for every shard to read.
controls = task(conditioning.write_controls, name="canny-controls", retries=1, cache_policy=NO_CACHE)

# On the GPU worker: a batch is generated, published and scored; the shard's table part last.
render = task(rendering.render_batch, name="render-batch", retries=1, cache_policy=NO_CACHE, tags=["gpu"])
write_part = io_task(publish.put_table_part, name="write-table-part")

# Selection and publishing, after the shards and before the manifest. Each rewrites its own
# uncommitted objects, so a retry is safe.
select_run = io_task(run_outputs.select_run, name="select-images")
write_cell_metrics = io_task(run_outputs.write_cell_metrics, name="write-cell-metrics")
write_sheets = io_task(run_outputs.write_sheets, name="contact-sheets")
write_gallery = io_task(run_outputs.write_gallery, name="gallery")
write_runs_part = io_task(publish.put_table_part, name="write-runs-part")
# Reports: artifacts never stop a run and are never retried.
start_progress = task(artifacts.start_progress, name="start-progress", cache_policy=NO_CACHE)
report_run = task(artifacts.report_run, name="run-artifacts", cache_policy=NO_CACHE)

# Style scans (flows/style_scan.py): a committed scan is read, a new one made on the GPU worker.
committed_scan = io_task(style_scans.committed_scan, name="committed-scan")
auto_scales = io_task(style_scans.auto_scales, name="auto-ip-scales")
run_scan = task(style_scans.run_scan, name="style-scan", retries=1, cache_policy=NO_CACHE, tags=["gpu"])

# Review and delivery (flows/review.py): reads, and writes that never write a thing twice, so a retry is safe.
# They run again when a suspended review resumes (its flow starts from the top): all cheap.
reviewed_run = io_task(delivery.reviewed_run, name="read-reviewed-run")
read_review_parts = io_task(delivery.read_parts, name="read-review-parts")
write_review_part = io_task(delivery.write_part_once, name="write-review-part")
deliver = io_task(delivery.deliver, name="deliver-approved")
mark_gallery = io_task(delivery.mark_gallery, name="gallery-review-states")
