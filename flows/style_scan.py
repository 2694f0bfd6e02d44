"""The style scan flow: per style set, the IP-Adapter scale where it starts copying, found once.

Deployed as `scan-style` (prefect.yaml) on the GPU pool, started by `stylematrix style scan`, and
triggered by `stylematrix.catalog.updated`: after every committed catalog refresh, every style
set whose references (or the profile or probe) have no scan yet is scanned; the rest are read.
"""

from __future__ import annotations

import base64
from typing import Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from adapters.infra.settings import get_settings
from adapters.infra.storage import S3Store
from adapters.model.clip import get_clip_scorer
from adapters.model.engine import get_engine
from adapters.steps import style_scans
from adapters.steps.style_scans import ScanOrder, ScanResult
from catalogs import load_profiles
from catalogs.uris import AssetsUri, CatalogUri
from flows import steps
from flows.artifacts import artifact_key
from flows.catalog import catalog_for_run
from tasks.layout import AssetsLayout
from tasks.style_scan import pick_styles, probe_for, scan_id


@flow(name="scan-style")
def scan_style(styles: list[str] | None = None, all_styles: bool = False, catalog: CatalogUri | None = None,  # noqa: PLR0913 (the UI's form)
               assets: AssetsUri | None = None, profile: str | None = None, snapshot: str | None = None,
               scales: list[float] | None = None, seeds: list[int] | None = None, size: int | None = None,
               probe_steps: int | None = None, triggered_by: Literal["cli", "event", "api", "test"] = "api") -> list[dict]:
    """Scan the named style sets (or every one with `all_styles`) over an IP-Adapter scale sweep.

    Plain parameters rather than one model: the deployment's trigger fills `catalog` from the
    event, and a flat parameter is what a trigger's template sets.

    The probe defaults to the profile's (`tasks.style_scan.default_probe`); `scales`, `seeds`,
    `size` and `probe_steps` replace parts of it. A style set whose scan id (references, profile,
    revision, probe) is already committed is not scanned again. Returns one result per style set.
    """
    logger = get_run_logger()
    settings = get_settings()
    store = S3Store.from_settings(settings)
    catalog = settings.catalog_uri(catalog)
    layout = AssetsLayout.at(assets or settings.assets)
    profile_name = profile or settings.profile
    profiles = load_profiles()
    if profile_name not in profiles:
        raise ValueError(f"style scan: unknown model profile {profile_name!r}; known: {sorted(profiles)}")
    if not styles and not all_styles:
        raise ValueError("style scan: name one or more style set ids, or scan them all")
    probe = probe_for(profiles[profile_name], scales=scales, seeds=seeds, size=size, steps=probe_steps)

    state = catalog_for_run(store, catalog, snapshot)
    chosen = list(state.styles) if all_styles else pick_styles(state.styles, state.quarantine, styles or [])
    revision, _, _ = steps.identity(profile_name, settings)
    results: list[ScanResult] = []
    todo = []
    for style in chosen:
        sid = scan_id(style, profile_name, revision, probe)
        done = steps.committed_scan(store, layout, style.style_id, sid)
        if done is not None:
            logger.info("%s", done.line())
            results.append(done)
        else:
            todo.append((style, sid))
    if todo:
        engine = get_engine(profile_name, settings)
        clip = get_clip_scorer("auto", profiles[profile_name], settings)
        for style, sid in todo:
            order = ScanOrder(scan_id=sid, assets=layout, catalog=catalog, snapshot_id=state.snapshot_id,
                              triggered_by=triggered_by, flow_run_id=str(flow_run.get_id() or ""))
            result = steps.run_scan(engine, clip, store, style, probe, order)
            logger.info("%s", result.line())
            report_scan(store, result)
            results.append(result)
    return [r.as_dict() for r in results]


def report_scan(store: S3Store, result: ScanResult) -> None:
    """A Prefect artifact with the scan's curves and probe sheet (embedded, small) and where they are stored."""
    plot, sheet = (base64.b64encode(b).decode() for b in style_scans.report_pictures(store, result))
    found = f"threshold **{result.threshold:g}**" if result.threshold is not None else "**no threshold in the range**"
    markdown = "\n".join([
        f"# Style scan of `{result.style_id}`", "",
        f"{found}; recommended ip_scale **{result.recommended:g}** (scan `{result.scan_id}`, {result.seconds:.1f} s)", "",
        result.reason, "",
        f"![curves](data:image/png;base64,{plot})", "",
        f"![probe sheet](data:image/jpeg;base64,{sheet})", "",
        f"- plot: `{result.plot}`", f"- sheet: `{result.sheet}`", f"- table: `{result.table}`",
    ])
    create_markdown_artifact(markdown, key=artifact_key(result.style_id, "style-scan"),
                             description=f"style scan {result.scan_id} of {result.style_id}")
