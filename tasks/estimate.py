"""What a run will cost before it runs: generation time estimated from earlier runs' recorded speed."""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

RECENT_RUNS = 5  # the median of the latest few: a machine's speed drifts, one odd run should not decide


@dataclass(frozen=True)
class Estimate:
    seconds: float | None
    basis: str  # in words: which runs, or why there is no estimate


def estimate_generation(history: Iterable[Mapping], *, images: int, profile: str, width: int, height: int,
                        steps: int, channels: Mapping | None = None) -> Estimate:
    """Seconds to generate `images` images, from the `runs` rows of earlier runs with the same
    profile, size, steps and channels (`images_per_second` over their generation phase).

    `channels` is the campaign's `channels:` as `runs.parameters` records it (name -> preset and
    overrides): a campaign with channels makes images at its channels' canvases, not at
    `width` x `height`, so only runs with the same channels tell its speed."""
    if images == 0:
        return Estimate(0.0, "nothing to generate")
    channels = dict(channels or {})
    alike = []
    for row in history:
        parameters = json.loads(row.get("parameters") or "{}")
        generation = parameters.get("generation", {})
        if (row.get("profile") == profile and row.get("images_per_second", 0) > 0 and
                (generation.get("width"), generation.get("height"), generation.get("steps")) == (width, height, steps)
                and (parameters.get("channels") or {}) == channels):
            alike.append(row)
    size = f"channels {', '.join(sorted(channels))}" if channels else f"{width}x{height}"
    if not alike:
        return Estimate(None, f"no earlier run of profile {profile} at {size}, {steps} steps to estimate from")
    recent = sorted(alike, key=lambda r: str(r.get("started_at")))[-RECENT_RUNS:]
    speed = statistics.median(float(r["images_per_second"]) for r in recent)
    return Estimate(images / speed, f"{speed:.2f} images/s, the median of the latest {len(recent)} runs of profile "
                                    f"{profile} at {size}, {steps} steps")
