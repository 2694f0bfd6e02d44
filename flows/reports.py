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
from tasks.values import first_line, is_missing

log = logging.getLogger(__name__)
T = TypeVar("T")
REPORTS = "_REPORTS.json"  # beside the manifest: the reports made again after the commit


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


def remake_reports(store: ObjectStore, assets: str, run_id: str) -> dict[str, Any]:
    """The contact sheets and gallery of a committed run, made again from its tables and its catalog snapshot.

    Returns what was written (also stored as the run's `_REPORTS.json`). Raises FileNotFoundError
    when the run has no manifest (never committed, or another assets prefix).
    """
    try:
        manifest = json.loads(store.get(publish.run_uri(assets, run_id, publish.MANIFEST)))
    except FileNotFoundError:
        raise FileNotFoundError(f"run {run_id}: no manifest under {assets}: it never committed, or lives elsewhere") from None
    (run,) = publish.read_table(store, manifest, "runs").to_dict("records")
    rows = publish.read_table(store, manifest, "generations").to_dict("records")
    state = snapshots.load_snapshot(store, run["catalog"], run["snapshot_id"])
    used_products, used_styles = {r["product_id"] for r in rows}, {r["style_id"] for r in rows}
    products = [p for p in state.products if p.product_id in used_products]
    styles = [s for s in state.styles if s.style_id in used_styles]
    title = None if is_missing(run.get("title")) else run["title"]
    shown = with_finishes(rows, publish.read_table(store, manifest, "finishes").to_dict("records"))
    sheets = run_outputs.write_sheets(store, assets, run_id, shown, products, styles, manifest.get("controls", {}),
                                      title=title)
    sheets |= run_outputs.write_overview(store, assets, run_id, rows, title=title)
    left_out = {} if is_missing(run.get("left_out")) else dict(run["left_out"])
    gallery = run_outputs.write_gallery(store, assets, run_id, run["campaign"], shown, sheets,
                                        [t["uri"] for t in manifest.get("tables", [])], left_out=left_out, title=title)
    record = {"run_id": run_id, "made_at": datetime.now(UTC).isoformat(), "sheets": sheets, "gallery": gallery}
    publish.put_text(store, publish.run_uri(assets, run_id, REPORTS), json.dumps(record, indent=2, sort_keys=True),
                     "application/json")
    return record
