"""GPU worker heartbeats: a shard's beat moves while it runs, and silence is measured on the reader's clock."""

from __future__ import annotations

import json
import time

import pytest

from adapters.steps.heartbeats import Beat, Heartbeat, Silence, read_beat, read_beats
from tasks.layout import AssetsLayout


def test_heartbeat_beats_while_the_shard_runs_and_records_how_it_ended(store, fresh_bucket):
    assets = f"s3://{fresh_bucket}"
    uri = AssetsLayout.at(assets).run("run-1").beat("task-a")
    beat = Beat(worker="gpu-1", pid=42, task_run_id="task-a", shard=3, shards_served=2)
    loads = [0]
    with Heartbeat(store, uri, beat, interval=0.05, engine_loads=lambda: loads[0]):
        first = read_beat(store, uri)
        loads[0] = 1  # the process loads its engine during its first shard
        time.sleep(0.4)
        later = read_beat(store, uri)
    assert first.state == "running" and first.beats >= 1 and first.engine_loads == 0
    assert later.beats > first.beats and later.engine_loads == 1  # the thread keeps beating while the block runs
    done = read_beat(store, uri)
    assert done.state == "done" and (done.worker, done.pid, done.shard, done.engine_loads) == ("gpu-1", 42, 3, 1)

    failed_uri = AssetsLayout.at(assets).run("run-1").beat("task-b")
    with pytest.raises(RuntimeError), Heartbeat(store, failed_uri, Beat("gpu-2", 7, "task-b", 4), interval=10):
        raise RuntimeError("GPU fell over")
    assert read_beat(store, failed_uri).state == "failed"
    assert sorted(b.task_run_id for b in read_beats(store, AssetsLayout.at(assets).run("run-1"))) == ["task-a", "task-b"]


def test_silence_counts_from_the_last_change_on_the_readers_clock(store, fresh_bucket):
    assets = f"s3://{fresh_bucket}"
    uri = AssetsLayout.at(assets).run("run-1").beat("task-a")
    now = [100.0]
    silence = Silence(store, clock=lambda: now[0])
    assert silence.seconds(uri) == 0.0  # no beat yet: the clock starts when the run is first watched
    now[0] = 130.0
    assert silence.seconds(uri) == 30.0  # taken by a worker that never beat: silent for 30 s
    # A beat whose own timestamp is far in the past still counts as life: only the count matters.
    body = {**Beat("gpu-1", 1, "task-a", 0).__dict__, "beats": 1, "at": "1999-01-01T00:00:00+00:00"}
    store.put(uri, json.dumps(body).encode())
    assert silence.seconds(uri) == 0.0
    now[0] = 190.0
    assert silence.seconds(uri) == 60.0


def test_heartbeat_refuses_a_zero_interval(store, fresh_bucket):
    with pytest.raises(ValueError, match="heartbeat interval must be positive"):
        Heartbeat(store, AssetsLayout.at(f"s3://{fresh_bucket}").run("r").beat("t"), Beat("gpu-1", 1, "t", 0), interval=0)


def test_a_lease_shorter_than_two_heartbeats_is_refused():
    from pydantic import ValidationError

    from adapters.infra.settings import Settings

    with pytest.raises(ValidationError, match="SHARD_LEASE_SECONDS \\(8\\) must be at least two heartbeats"):
        Settings(shard_lease_seconds=8, shard_heartbeat_seconds=5)
    assert Settings(shard_lease_seconds=15, shard_heartbeat_seconds=1).shard_lease_seconds == 15
