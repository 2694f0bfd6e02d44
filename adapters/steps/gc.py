"""`stylematrix gc`: remove what runs that never committed left in the assets bucket (see tasks/gc.py for the rule)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from adapters.infra import lake
from adapters.infra.storage import ObjectStore
from adapters.steps import publish
from tasks.gc import Stored, garbage, run_of
from tasks.layout import AssetsLayout


@dataclass(frozen=True)
class GcReport:
    runs: tuple[str, ...]  # abandoned runs found
    objects: tuple[str, ...]  # objects removed (or, in a dry run, that would be)
    bytes: int
    dry_run: bool
    kept: tuple[str, ...] = ()  # objects of abandoned runs kept: committed rows or manifests name them (taken over)


def collect_garbage(store: ObjectStore, assets: AssetsLayout, *, older_than: timedelta, dry_run: bool,
                    now: datetime | None = None) -> GcReport:
    """Find the objects of abandoned runs and stale claims, and delete them unless `dry_run`."""
    now = now or datetime.now(UTC)
    listed = [o for prefix in (assets.runs, assets.tables + "/") for o in store.list(prefix)]
    manifests = publish.read_manifests(store, assets)
    tables = lake.Lake.of(store, assets)
    # Committed is what the tables hold: a run whose `runs` row landed, an image whose `generations` row did
    # (whoever recorded it), whether or not a manifest followed.
    committed = {m["run_id"] for m in manifests} | set(lake.column(tables, "runs", "run_id"))
    referenced = {uri for m in manifests for uri in _named_uris(m)}
    referenced |= {uri for uri in lake.column(tables, "generations", "output_key") if uri}
    held = {}
    for info in store.list(assets.claims):
        raw = json.loads(store.get(info.uri))
        held[info.uri] = (raw["run_id"], datetime.fromisoformat(raw["claimed_at"]))
    dead, doomed = garbage([Stored(o.uri, o.modified or now) for o in listed], committed, referenced, held,
                           now=now, older_than=older_than)
    sizes = {o.uri: o.size for o in listed}
    if not dry_run:
        for uri in doomed:
            store.delete(uri)
    kept = sorted(o.uri for o in listed if run_of(o.uri) in dead and o.uri in referenced)
    return GcReport(runs=tuple(sorted(dead)), objects=tuple(doomed), bytes=sum(sizes.get(u, 0) for u in doomed),
                    dry_run=dry_run, kept=tuple(kept))


def _named_uris(manifest: dict) -> set[str]:
    named = {i["uri"] for i in manifest.get("images", [])} | {p["uri"] for p in manifest.get("parts", [])}  # v7: parts
    named |= set((manifest.get("sheets") or {}).values()) | set((manifest.get("controls") or {}).values())
    return named | ({manifest["gallery"]} if manifest.get("gallery") else set())
