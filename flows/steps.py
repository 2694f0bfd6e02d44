"""Task policy in one place: which steps retry, which cache, which must never hash their inputs.

Steps that receive a store, an engine or images use NO_CACHE: hashing them is meaningless
or fails. Idempotency comes from deterministic asset ids and the manifest, not from
Prefect's result cache.
"""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from adapters import catalog_io, publish, snapshots
from adapters.engine import model_identity
from flows import publishing
from tasks.matrix import expand_matrix
from tasks.plan import check_control_scales, group_batches, plan_jobs, plan_shards, select

# Pure steps: cheap, deterministic, no retries needed.
expand = task(expand_matrix, name="expand-matrix", cache_policy=NO_CACHE)
check_controls = task(check_control_scales, name="check-control-scales", cache_policy=NO_CACHE)
choose = task(select, name="select-inputs", cache_policy=NO_CACHE)
plan = task(plan_jobs, name="plan-jobs", cache_policy=NO_CACHE)
batch = task(group_batches, name="group-batches", cache_policy=NO_CACHE)
shard = task(plan_shards, name="plan-shards", cache_policy=NO_CACHE)

# I/O steps: S3 can blip, so they retry.
read_campaign = task(catalog_io.read_campaign, name="read-campaign", retries=2, retry_delay_seconds=1, cache_policy=NO_CACHE)
# Catalog snapshots: a refresh reads only what changed and commits a snapshot; runs read one.
previous_snapshot = task(snapshots.previous_snapshot, name="previous-snapshot", retries=2, retry_delay_seconds=1, cache_policy=NO_CACHE)
scan_catalog = task(catalog_io.scan_catalog, name="scan-catalog", retries=2, retry_delay_seconds=1, cache_policy=NO_CACHE)
write_snapshot = task(snapshots.write_snapshot, name="write-snapshot", retries=2, retry_delay_seconds=1, cache_policy=NO_CACHE)
latest_snapshot = task(snapshots.latest_snapshot_id, name="latest-snapshot", retries=2, retry_delay_seconds=1, cache_policy=NO_CACHE)
load_snapshot = task(snapshots.load_snapshot, name="load-snapshot", retries=2, retry_delay_seconds=1, cache_policy=NO_CACHE)
published = task(publish.published_asset_ids, name="published-assets", retries=2, retry_delay_seconds=1, cache_policy=NO_CACHE)
identity = task(model_identity, name="model-identity", cache_policy=NO_CACHE)

# Selection and publishing, after the shards and before the manifest. Each rewrites its own
# uncommitted objects, so a retry is safe; artifacts are reports, never retried.
start_progress = task(publishing.start_progress, name="start-progress", cache_policy=NO_CACHE)
advance_progress = task(publishing.advance_progress, name="advance-progress", cache_policy=NO_CACHE)
select_run = task(publishing.select_run, name="select-images", retries=2, retry_delay_seconds=1, cache_policy=NO_CACHE)
write_cell_metrics = task(publishing.write_cell_metrics, name="write-cell-metrics", retries=2, retry_delay_seconds=1, cache_policy=NO_CACHE)
write_sheets = task(publishing.write_sheets, name="contact-sheets", retries=2, retry_delay_seconds=1, cache_policy=NO_CACHE)
write_gallery = task(publishing.write_gallery, name="gallery", retries=2, retry_delay_seconds=1, cache_policy=NO_CACHE)
report_run = task(publishing.report_run, name="run-artifacts", cache_policy=NO_CACHE)
