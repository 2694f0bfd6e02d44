"""Claims: which run makes which asset, so two runs never both make it and a dead run's work is taken over.

Before a batch is generated, its worker claims each asset with a conditional put of
`<assets>/claims/<asset_id>.json` (`{"run_id", "claimed_at"}`):

- no claim yet: the put wins, the asset is this run's to make;
- claimed by this run (a retried shard): still ours;
- claimed by another run within the lease: that run is presumed alive and making it; this run
  leaves the asset to it and says so in its summary;
- claimed by another run longer ago than the lease, or handed back by it (a run stopped with SIGTERM
  or Ctrl-C releases its claims on the way out, `release_all`), and that run never committed: presumed dead.
  The claim is taken over; the dead run's image, if it wrote one that verifies against the sha256
  stored with it, is recorded by this run (`made_by_run`); otherwise it is generated again.

A claim is only a promise. What decides is ownership when a run commits: a run records only the
assets whose claim it holds at that moment (`owners`), so an asset has one row across runs even if
a slow run's claim was taken over while it was still working. A run that takes a claim over first
leaves a notice in the former holder's folder (`runs/<run_id>/taken/<asset_id>.json`), so a committing
run lists its notices (one request; none on the happy path) and reads only the claims they name and
those of the assets it left to other runs (`owners_at_commit`), however long it ran.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from adapters.infra.storage import ObjectStore, parallel_map
from tasks.layout import AssetsLayout, RunLayout


@dataclass(frozen=True)
class Claim:
    """Who holds an asset after this run asked for it, and whose claim it replaced (a presumed-dead run)."""

    asset_id: str
    run_id: str
    claimed_at: datetime
    replaced: str = ""  # the presumed-dead run whose claim this one replaced
    new: bool = False  # claimed just now, from nobody: nothing of it can exist yet
    released: bool = False  # handed back by its run as it stopped: free to take over at once


def read_claim(store: ObjectStore, assets: AssetsLayout, asset_id: str) -> Claim | None:
    try:
        raw = json.loads(store.get(assets.claim(asset_id)))
    except FileNotFoundError:
        return None
    return Claim(asset_id=asset_id, run_id=raw["run_id"], claimed_at=datetime.fromisoformat(raw["claimed_at"]),
                 released=bool(raw.get("released_at")))


def _body(run_id: str, now: datetime, released_at: datetime | None = None) -> bytes:
    body = {"run_id": run_id, "claimed_at": now.isoformat()}
    if released_at is not None:
        body["released_at"] = released_at.isoformat()
    return json.dumps(body, sort_keys=True).encode()


def claim_one(store: ObjectStore, run: RunLayout, asset_id: str, *, lease: timedelta,
              now: datetime | None = None) -> Claim:
    """Claim `asset_id` for `run`; returns the claim that holds it afterwards (see the module docstring)."""
    now = now or datetime.now(UTC)
    assets, run_id = run.assets, run.run_id
    uri = assets.claim(asset_id)
    try:
        store.put(uri, _body(run_id, now), content_type="application/json", if_absent=True)
        return Claim(asset_id, run_id, now, new=True)
    except FileExistsError:
        pass
    held = read_claim(store, assets, asset_id)
    if held is None:  # released between the put and the read: try once more
        return claim_one(store, run, asset_id, lease=lease, now=now)
    # A claim handed back stays handed back, even to a worker of its own run still busy after the
    # run stopped: any other run takes it over at once.
    if held.run_id == run_id or (now - held.claimed_at <= lease and not held.released):
        return held
    # The notice first: the former holder, committing, reads the claims its notices name (`owners_at_commit`).
    store.put(assets.run(held.run_id).taken(asset_id), json.dumps({"by_run": run_id, "at": now.isoformat()}).encode(),
              content_type="application/json")
    store.put(uri, _body(run_id, now), content_type="application/json")
    return Claim(asset_id, run_id, now, replaced=held.run_id)


def claim_all(store: ObjectStore, run: RunLayout, asset_ids: Sequence[str], *, lease: timedelta) -> dict[str, Claim]:
    """`claim_one` for every asset, in parallel; asset id -> the claim that holds it."""
    now = datetime.now(UTC)
    held = parallel_map(lambda a: claim_one(store, run, a, lease=lease, now=now), list(asset_ids))
    return {c.asset_id: c for c in held}


def owners(store: ObjectStore, assets: AssetsLayout, asset_ids: Iterable[str]) -> dict[str, str]:
    """Asset id -> the run holding its claim now ("" for none): what a committing run may record."""
    ids = list(asset_ids)
    held = parallel_map(lambda a: read_claim(store, assets, a), ids)
    return {a: (c.run_id if c else "") for a, c in zip(ids, held, strict=True)}


def owners_at_commit(store: ObjectStore, run: RunLayout, asset_ids: Iterable[str], made: Collection[str]) -> dict[str, str]:
    """`owners` for a run that is committing: asset id -> the run holding its claim now.

    `made` are the assets the run claimed and made (or took over). Those are still its own unless another run
    took one over, which leaves a notice in this run's folder first (`claim_one`): the notices are listed, and
    only the claims they name are read, with those of the other assets (left to other runs).
    """
    ids = list(asset_ids)
    taken = {info.key.rsplit("/", 1)[-1].removesuffix(".json") for info in store.list(run.taken_notices)}
    mine = set(made) - taken
    return {a: run.run_id for a in ids if a in mine} | owners(store, run.assets, [a for a in ids if a not in mine])


def release_all(store: ObjectStore, run: RunLayout, asset_ids: Iterable[str]) -> int:
    """Hand back every claim `run` holds among `asset_ids` (a run stopping before it commits); returns how many.

    The claim stays, marked released, so the next run takes the asset over at once (recording the
    image this run made, when it verifies) instead of waiting out the lease. A claim another run
    holds is left alone.
    """
    now = datetime.now(UTC)

    def one(asset_id: str) -> bool:
        held = read_claim(store, run.assets, asset_id)
        if held is None or held.run_id != run.run_id or held.released:
            return False
        store.put(run.assets.claim(asset_id), _body(run.run_id, held.claimed_at, released_at=now),
                  content_type="application/json")
        return True

    return sum(parallel_map(one, list(asset_ids)))
