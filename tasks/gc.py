"""Which stored objects of the assets bucket belong to nobody: the rule behind `stylematrix gc`.

A run counts once its rows are committed (its `runs` row) or its manifest is written. Objects of a
run that never committed (it died, was killed, or is still running) are garbage once the run has
written nothing for `older_than`, except those `referenced`: named by a committed row or manifest
(images another run took over). A schema-7 table part named for an abandoned run is garbage too. A committed run's objects are
never garbage. Claims are garbage once older than `older_than` and held by a committed run (its
assets are published) or by a garbage run.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from tasks.layout import RUNS, TABLES

# Run ids are `<campaign>-<UTC timestamp>-<6 hex>` (flows/campaign.new_run_id).
_RUN_ID = r"[a-z0-9][a-z0-9-]*-\d{8}T\d{6}Z-[0-9a-f]{6}"
_RUN_FOLDER = re.compile(rf"(?:^|/){RUNS}/({_RUN_ID})/")
_TABLE_PART = re.compile(rf"(?:^|/){TABLES}/[a-z_]+/run_date=[^/]+/({_RUN_ID})(?:-\d{{5}})?\.parquet$")


@dataclass(frozen=True)
class Stored:
    """One object: its URI and when it was last written."""

    uri: str
    modified: datetime


def run_of(uri: str) -> str | None:
    """The run an object belongs to (its folder under `runs/`, or a table part named for it); None for others."""
    match = _RUN_FOLDER.search(uri) or _TABLE_PART.search(uri)
    return match.group(1) if match else None


def abandoned_runs(objects: Iterable[Stored], committed: Collection[str], *, now: datetime,
                   older_than: timedelta) -> set[str]:
    """Runs with no manifest whose newest object is older than `older_than`."""
    newest: dict[str, datetime] = {}
    for obj in objects:
        run = run_of(obj.uri)
        if run and run not in committed:
            newest[run] = max(newest.get(run, obj.modified), obj.modified)
    return {run for run, last in newest.items() if now - last > older_than}


def garbage(objects: Iterable[Stored], committed: Collection[str], referenced: Collection[str],
            claims: Mapping[str, tuple[str, datetime]], *, now: datetime, older_than: timedelta) -> tuple[set[str], list[str]]:
    """(abandoned runs, URIs to delete). `claims` maps a claim object's URI to (holder run, claimed at)."""
    objects = list(objects)
    dead = abandoned_runs(objects, committed, now=now, older_than=older_than)
    doomed = [o.uri for o in objects if run_of(o.uri) in dead and o.uri not in referenced]
    doomed += [uri for uri, (holder, at) in claims.items()
               if now - at > older_than and (holder in committed or holder in dead)]
    return dead, sorted(doomed)
