"""A run's shards in S3: each shard's spec, stored with the run before it runs (what a worker ran can always
be looked up or run again), and what the shards published, read back from their staged `generations` parts."""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa

from adapters.infra.storage import ObjectStore
from adapters.steps import publish
from tasks.plan import Shard, ShardContext


def shard_part_name(run_id: str, index: int) -> str:
    """The shard's `generations` part: fixed, so a retried shard overwrites its own part."""
    return f"{run_id}-{index:05d}"


def store_specs(store: ObjectStore, ctx: ShardContext, shards: Sequence[Shard]) -> None:
    """Store every shard's spec with the run, as JSON."""
    for shard in shards:
        store.put(ctx.run.shard_spec(shard.index), shard.model_dump_json().encode(), content_type="application/json")


def read_published(store: ObjectStore, ctx: ShardContext, shards: Sequence[Shard]) -> tuple[tuple[dict, ...], pa.Table]:
    """The finished shards' `generations` parts (manifest entries) and the images they published (asset_id, uri,
    sha256 of each, as columns), from their parts in S3."""
    parts = tuple(publish.part_entry(store, "generations", ctx.run.staged_part(
        "generations", shard_part_name(ctx.run_id, s.index))) for s in shards)
    published = publish.read_staged_arrow(store, parts, "generations", columns=("asset_id", "output_key", "sha256"))
    return parts, published.rename_columns(["asset_id", "uri", "sha256"])
