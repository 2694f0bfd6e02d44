"""The `runs` table's row as a typed model: one per committed run. Its fields are exactly the table's
columns (`tasks/tables.RUNS`, the schema's one source of truth), in the same order; a test holds the two
together."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict

from tasks.tables import SCHEMA_VERSION, to_frame

# The counts a `RunSummary` reports as the run's `runs` row records them.
SUMMARY_COUNTS = ("images_planned", "images_generated", "images_skipped", "images_selected", "images_failed",
                  "batches", "quarantined", "duration_seconds", "images_per_second", "images_taken_over",
                  "images_left_to_others", "left_to_runs")


class RunRow(BaseModel):
    """One run: what it was asked, what it read and ran on, what it made (see docs/metadata-tables.md)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: int = SCHEMA_VERSION
    run_id: str
    campaign: str
    title: str | None
    campaign_sha256: str
    parameters: str
    triggered_by: str
    flow_run_id: str
    catalog: str
    snapshot_id: str
    assets: str
    profile: str
    profile_revision: str
    device: str
    dtype: str
    started_at: datetime
    finished_at: datetime
    duration_seconds: float
    products: int
    styles: int
    cells: int
    images_planned: int
    images_generated: int
    images_skipped: int
    images_selected: int
    images_failed: int
    batches: int
    generation_wall_seconds: float
    images_per_second: float
    quarantined: int
    images_taken_over: int
    images_left_to_others: int
    left_to_runs: tuple[str, ...]
    left_out: tuple[tuple[str, str], ...]  # a map column: (what, why) pairs
    status: str
    consistency_spread: float | None
    consistency_spreads: tuple[tuple[str, str], ...]  # a map column: (label, spread) pairs

    def row(self) -> dict:
        """The row as the table writers take it: the schema's columns, checked against it now, not at write time."""
        row = {k: list(v) if isinstance(v, tuple) else v for k, v in self.model_dump().items()}
        to_frame("runs", [row])
        return row

    def summary_counts(self) -> dict:
        """The counts a `RunSummary` reports (`SUMMARY_COUNTS`), as recorded here."""
        return self.model_dump(include=set(SUMMARY_COUNTS))
