"""Estimating a run's generation time from the runs table."""

from __future__ import annotations

import json

import pytest

from tasks.estimate import RunShape, estimate_generation


def row(ips: float, started: str, profile: str = "tiny", width: int = 64, steps: int = 2) -> dict:
    return {"profile": profile, "images_per_second": ips, "started_at": started,
            "parameters": json.dumps({"generation": {"width": width, "height": 64, "steps": steps}})}


def test_estimate_uses_the_median_speed_of_the_latest_alike_runs():
    history = [row(100.0, "2026-01-01"), *(row(ips, f"2026-02-0{i}") for i, ips in enumerate([2, 4, 3, 5, 1], 1)),
               row(50.0, "2026-03-01", steps=30), row(50.0, "2026-03-02", profile="sd15"), row(0.0, "2026-03-03")]
    estimate = estimate_generation(history, RunShape("tiny", 64, 64, 2), images=300)
    assert estimate.seconds == pytest.approx(100.0)  # median of 2, 4, 3, 5, 1 = 3 images/s; the old 100 is dropped
    assert "3.00 images/s, the median of the latest 5 runs of profile tiny at 64x64, 2 steps" == estimate.basis


def test_no_alike_run_means_no_estimate_and_nothing_to_make_costs_nothing():
    none = estimate_generation([row(3.0, "2026-01-01", width=128)], RunShape("tiny", 64, 64, 2), images=10)
    assert none.seconds is None and none.basis.startswith("no earlier run of profile tiny at 64x64, 2 steps")
    assert estimate_generation([], RunShape("tiny", 64, 64, 2), images=0).seconds == 0.0


def test_a_campaign_with_channels_is_estimated_from_runs_with_the_same_channels():
    def with_channels(ips: float, started: str, channels: dict) -> dict:
        return {"profile": "tiny", "images_per_second": ips, "started_at": started,
                "parameters": json.dumps({"generation": {"width": 64, "height": 64, "steps": 2}, "channels": channels})}

    story = {"story": {"preset": "story"}}
    history = [row(10.0, "2026-01-01"), with_channels(2.0, "2026-01-02", story),
               with_channels(8.0, "2026-01-03", {"banner": {"preset": "banner"}})]
    estimate = estimate_generation(history, RunShape("tiny", 64, 64, 2, story), images=10)
    assert estimate.seconds == pytest.approx(5.0)  # only the story run: 2 images/s
    assert estimate.basis.endswith("runs of profile tiny at channels story, 2 steps")
    plain = estimate_generation(history, RunShape("tiny", 64, 64, 2), images=10)
    assert plain.seconds == pytest.approx(1.0)  # the run without channels: 10 images/s
    none = estimate_generation(history[:1], RunShape("tiny", 64, 64, 2, story), images=1)
    assert none.seconds is None and "at channels story" in none.basis


def test_a_campaign_s_shape_matches_the_runs_row_its_own_run_writes():
    from catalogs.models import RunRequest
    from tasks.tables import run_parameters
    from tests.helpers import campaign

    spec = campaign()
    row = {"profile": spec.generation.profile, "images_per_second": 4.0, "started_at": "2026-01-01",
           "parameters": run_parameters(RunRequest(campaign=spec.name), spec, products=["p0"], styles=["one"])}
    assert RunShape.of(spec).matches(row)
    assert estimate_generation([row], RunShape.of(spec), images=8).seconds == pytest.approx(2.0)
    generation = spec.generation.model_copy(update={"width": spec.generation.width * 2})
    wider = spec.model_copy(update={"generation": generation})
    assert not RunShape.of(wider).matches(row)
