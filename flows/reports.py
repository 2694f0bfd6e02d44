"""A run's reports (contact sheets, gallery, Prefect artifacts) never stop its commit, and can be made again.

The tables and images are the run; the reports are views of them. A report step that fails
(a sheet too large to encode, S3 refusing a page, the API refusing an artifact) is logged, named
in the run's summary and manifest (`reports_failed`), and the run commits what it generated.
`remake_reports` builds the sheets and the gallery again for a committed run from its tables
(`stylematrix report <run_id>`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from prefect import get_run_logger
from prefect.exceptions import MissingContextError

from adapters.catalog import snapshots
from adapters.infra.storage import ObjectStore
from adapters.steps import publish, run_outputs
from tasks.finish import with_finishes
from tasks.layout import RunLayout
from tasks.rows import Rows, compact
from tasks.values import first_line, is_missing

log = logging.getLogger(__name__)
T = TypeVar("T")


def attempt(report: str, failed: dict[str, str], make: Callable[..., T], *args: Any, default: T,
            **kwargs: Any) -> T:
    """`make(*args, **kwargs)`, or `default` when it raises: the failure is logged and kept in `failed` (name -> why)."""
    try:
        return make(*args, **kwargs)
    except Exception as exc:  # a report is a view of the run: it never stops the commit
        failed[report] = f"{type(exc).__name__}: {first_line(exc)}"
        _logger().warning("report %s failed, the run commits without it: %s", report, failed[report])
        return default


def _logger() -> logging.Logger | logging.LoggerAdapter:
    """The flow run's logger (its lines reach the Prefect UI); this module's outside a run."""
    try:
        return get_run_logger()
    except MissingContextError:
        return log


def remake_reports(store: ObjectStore, where: RunLayout) -> dict[str, Any]:
    """The contact sheets and gallery of a committed run, made again from its tables and its catalog snapshot.

    Returns what was written (also stored as the run's `RunLayout.reports`). Raises FileNotFoundError
    when the run has no manifest (never committed, or another assets prefix).
    """
    run_id = where.run_id
    try:
        manifest = publish.read_manifest(store, where)
    except FileNotFoundError:
        raise FileNotFoundError(f"run {run_id}: no manifest under {where.assets.root}: it never committed, or lives "
                                "elsewhere") from None
    (run,) = publish.read_table(store, manifest, "runs").to_dict("records")
    rows = Rows(compact(publish.read_table_arrow(store, manifest, "generations")))  # columns, not dicts (tasks/rows.py)
    state = snapshots.load_snapshot(store, run["catalog"], run["snapshot_id"])
    used_products, used_styles = {r["product_id"] for r in rows}, {r["style_id"] for r in rows}
    products = [p for p in state.products if p.product_id in used_products]
    styles = [s for s in state.styles if s.style_id in used_styles]
    title = None if is_missing(run.get("title")) else run["title"]
    shown = with_finishes(rows, publish.read_table(store, manifest, "finishes").to_dict("records"))
    made = run_outputs.Reports(run=where, campaign=run["campaign"], title=title)
    sheets = run_outputs.write_sheets(store, made, shown, products, styles, manifest.get("controls", {}))
    sheets |= run_outputs.write_overview(store, made, rows)
    left_out = {} if is_missing(run.get("left_out")) else dict(run["left_out"])
    gallery = run_outputs.write_gallery(store, made, shown, sheets, left_out=left_out)
    record = {"run_id": run_id, "made_at": datetime.now(UTC).isoformat(), "sheets": sheets, "gallery": gallery}
    publish.put_text(store, where.reports, json.dumps(record, indent=2, sort_keys=True),
                     "application/json")
    return record
