"""`stylematrix style ...`: style sets' copy thresholds (the `scan-style` flow)."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from adapters.infra.settings import get_settings
from flows.cli_errors import ASSETS_URI, CATALOG_URI, USER_ERRORS, fail

style_app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,  # plain help: see cli.py
                        help="Style sets: scan each one's IP-Adapter scale sweep for the scale where it starts copying.")


def parse_scales(text: str) -> list[float]:
    """`0:1.2:0.1` (start:stop:step, stop included) or `0,0.4,0.8`; ValueError naming the text otherwise."""
    from tasks.style_scan import sweep

    try:
        if ":" in text:
            start, stop, step = (float(x) for x in text.split(":"))
            return list(sweep(start, stop, step))
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise ValueError(f"--scales {text!r}: expected start:stop:step or a comma list of numbers ({exc})") from None


@style_app.command()
def scan(
    style_ids: Annotated[list[str] | None, typer.Argument(metavar="STYLE_ID...", help="style set ids to scan")] = None,
    all_styles: Annotated[bool, typer.Option("--all", help="scan every style set of the catalog")] = False,
    profile: Annotated[str | None, typer.Option(help="model profile (default STYLEMATRIX_PROFILE)")] = None,
    scales: Annotated[str | None, typer.Option(help="IP-Adapter scales: start:stop:step or a comma list (default 0:1.2:0.1)")] = None,
    seeds: Annotated[str | None, typer.Option(help="probe seeds, a comma list (default 0,1)")] = None,
    size: Annotated[int | None, typer.Option(help="probe image side in pixels (default: the profile's)")] = None,
    steps: Annotated[int | None, typer.Option(help="denoising steps per probe image (default: the profile's)")] = None,
    catalog: Annotated[str | None, typer.Option(callback=CATALOG_URI, help="s3://bucket[/prefix] of the catalog (default STYLEMATRIX_CATALOG)")] = None,
    assets: Annotated[str | None, typer.Option(callback=ASSETS_URI, help="s3://bucket[/prefix] for outputs (default STYLEMATRIX_ASSETS)")] = None,
    snapshot: Annotated[str | None, typer.Option(help="catalog snapshot id to read (default: the latest)")] = None,
) -> None:
    """Find each style set's copy threshold and recommended ip_scale; an unchanged style set is not scanned again."""
    from adapters.infra.storage import S3Store

    start = time.perf_counter()
    settings = get_settings()
    catalog, assets = settings.catalog_uri(catalog), assets or settings.assets
    try:
        if not style_ids and not all_styles:
            raise ValueError("style scan: name one or more style set ids, or pass --all")
        if style_ids and all_styles:
            raise ValueError("style scan: name style set ids or pass --all, not both")
        sweep_scales = parse_scales(scales) if scales else None
        try:
            probe_seeds = [int(s) for s in seeds.split(",")] if seeds else None
        except ValueError:
            raise ValueError(f"--seeds {seeds!r}: expected a comma list of whole numbers") from None
        store = S3Store.from_settings(settings)
        store.check_reachable(catalog)
        store.check_reachable(assets)
        from flows.style_scan import scan_style

        results = scan_style(styles=style_ids or None, all_styles=all_styles, catalog=catalog, assets=assets,
                             profile=profile, snapshot=snapshot, scales=sweep_scales, seeds=probe_seeds, size=size,
                             probe_steps=steps, triggered_by="cli")
    except USER_ERRORS as exc:
        fail(exc)
    from adapters.steps.style_scans import ScanResult

    for result in (ScanResult(**r) for r in results):
        typer.echo(result.line())
        typer.echo(f"  {result.reason}")
        typer.echo(f"  plot:  {result.plot}")
        typer.echo(f"  sheet: {result.sheet}")
        typer.echo(f"  table: {result.table}")
    typer.echo(f"  wall time: {time.perf_counter() - start:.1f} s")
