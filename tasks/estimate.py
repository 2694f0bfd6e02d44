"""What a run will cost before it runs: generation time estimated from earlier runs' recorded speed."""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from catalogs.models import Campaign
from tasks.tables import channels_as_written

RECENT_RUNS = 5  # the median of the latest few: a machine's speed drifts, one odd run should not decide


@dataclass(frozen=True)
class RunShape:
    """What decides a run's speed per image: the profile, the canvas and the steps.

    `channels` is the campaign's `channels:` as `runs.parameters` records it (name -> preset and
    overrides): a campaign with channels makes images at its channels' canvases, not at
    `width` x `height`, so only runs with the same channels tell its speed.
    """

    profile: str
    width: int
    height: int
    steps: int
    channels: Mapping = field(default_factory=dict)

    @classmethod
    def of(cls, campaign: Campaign) -> RunShape:
        """The shape of a campaign's run, as the `runs` table records it."""
        g = campaign.generation
        return cls(g.profile or "", g.width, g.height, g.steps, channels_as_written(campaign))

    def words(self) -> str:
        """`profile tiny at 64x64, 2 steps` (or `at channels story, ...`)."""
        size = f"channels {', '.join(sorted(self.channels))}" if self.channels else f"{self.width}x{self.height}"
        return f"profile {self.profile} at {size}, {self.steps} steps"

    def matches(self, row: Mapping) -> bool:
        """Whether a `runs` row is of a run of this shape."""
        parameters = json.loads(row.get("parameters") or "{}")
        generation = parameters.get("generation", {})
        return (row.get("profile") == self.profile
                and (generation.get("width"), generation.get("height"), generation.get("steps"))
                == (self.width, self.height, self.steps)
                and (parameters.get("channels") or {}) == dict(self.channels))


@dataclass(frozen=True)
class Estimate:
    seconds: float | None
    basis: str  # in words: which runs, or why there is no estimate


def estimate_generation(history: Iterable[Mapping], shape: RunShape, *, images: int) -> Estimate:
    """Seconds to generate `images` images, from the `runs` rows of earlier runs of the same shape
    (`images_per_second` over their generation phase)."""
    if images == 0:
        return Estimate(0.0, "nothing to generate")
    alike = [row for row in history if row.get("images_per_second", 0) > 0 and shape.matches(row)]
    if not alike:
        return Estimate(None, f"no earlier run of {shape.words()} to estimate from")
    recent = sorted(alike, key=lambda r: str(r.get("started_at")))[-RECENT_RUNS:]
    speed = statistics.median(float(r["images_per_second"]) for r in recent)
    return Estimate(images / speed, f"{speed:.2f} images/s, the median of the latest {len(recent)} runs of "
                                    f"{shape.words()}")
