"""The server automations that tell a dead worker from a run that waits (flows/zombies.py).

What they do to real flow runs (a review waiting for windows, a timeout, a worker killed while it
delivers) is tested end to end in tests/test_review_e2e.py; here: their settings and their creation."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from adapters.infra.settings import Settings
from flows.zombies import (
    CRASH_SILENT,
    REDO_CRASHED_CAMPAIGNS,
    REDO_CRASHED_REVIEWS,
    crash_silent_runs,
    ensure_automations,
)


def test_a_zombie_window_no_longer_than_a_heartbeat_is_refused():
    with pytest.raises(ValidationError, match="zombie_seconds"):
        Settings(zombie_seconds=30)
    assert Settings(zombie_seconds=45).zombie_seconds == 45
    with pytest.raises(ValueError, match=r"zombie window 20 s must be longer than the flow-run heartbeat interval \(30 s\)"):
        crash_silent_runs(20)


def test_creating_the_automations_again_replaces_them(prefect_harness):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    api_url = PREFECT_API_URL.value()
    ensure_automations(api_url, 75)
    ids = ensure_automations(api_url, 45)  # a second `serve` against the same database
    with get_client(sync_client=True) as client:
        found = {name: client.read_automations_by_name(name) for name in (CRASH_SILENT, REDO_CRASHED_REVIEWS,
                                                                          REDO_CRASHED_CAMPAIGNS)}
    assert sorted(a.id for automations in found.values() for a in automations) == sorted(ids)
    (crash,) = found[CRASH_SILENT]
    assert crash.trigger.within.total_seconds() == 45 and crash.trigger.after == {"prefect.flow-run.heartbeat"}
