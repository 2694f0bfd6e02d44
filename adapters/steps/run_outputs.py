"""The run's outputs after generation, before its commit: every image's outcome decided across the
run, the contact sheets and the gallery page.

Each overwrites its own still-uncommitted objects, so a retry is safe; the rows count once the
campaign commits them to the tables (adapters/infra/lake.py).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image

from adapters.catalog.images import load_image
from adapters.infra import lake
from adapters.infra.fonts import sheet_font
from adapters.infra.storage import PARALLEL_CALLS, ObjectStore, parallel_each, parallel_map
from adapters.steps import publish
from catalogs.models import CHANNEL_AXIS, Product, Selection, StyleSet
from tasks.canny import control_name
from tasks.channels import channel_of, outline_layout, row_layout
from tasks.consistency import CAMPAIGN, selected_spreads
from tasks.gallery import Gallery, iter_gallery_files
from tasks.layout import RunLayout, key_of
from tasks.rows import Rows, compact
from tasks.select import select_images
from tasks.sheets import contact_sheet, overview_lines, overview_sheet, sheet_pages, tile_for

SHEET_TILE = 160  # pixels of a contact sheet tile's long side
PAGES_AT_ONCE = 2  # contact sheet pages drawn at once
OVERVIEW = "overview.jpg"  # the campaign's overview sheet, beside the contact sheets (no product sheet lacks `__`)


@dataclass(frozen=True)
class Reports:
    """What every report of a run (contact sheets, overview, gallery) shares: where the run lives, its campaign
    and title, and the local copy its shards wrote the images into (None: read them from S3)."""

    run: RunLayout
    campaign: str
    title: str | None = None
    local_copy: str | None = None


def select_run(store: ObjectStore, parts: Sequence[dict], selection: Selection,
               owned: Collection[str] | None = None) -> Rows:
    """The run's `generations` rows from its staged parts, each with its outcome decided across the run.

    With `owned`, only those asset ids stay (the run holds their claims as it commits; another run
    that took a claim over records that asset instead). The rows stay in Arrow (`tasks.rows`): the
    table they are committed from is this one, with the outcome columns set.
    """
    kept = None if owned is None else pa.array(list(owned), pa.string())
    table = publish.read_staged_arrow(
        store, parts, "generations",
        keep=None if kept is None else lambda part: part.filter(pc.is_in(part.column("asset_id"), value_set=kept)))
    rows = Rows(compact(table))
    if not rows:
        return rows
    return rows.with_columns(select_images(rows, selection).lists)


def write_sheets(store: ObjectStore, reports: Reports, rows: Sequence[dict], products: Sequence[Product],
                 styles: Sequence[StyleSet], controls: dict[str, str]) -> dict[str, str]:
    """One contact sheet per product x style set (x channel, in a campaign with channels), stored under the
    run's `sheets/`; file name -> URI. A sheet too large for one picture is split into pages
    (`tasks.sheets.sheet_pages`: by rows, and across by seed), named `<...>__p01.jpg`, `__p02` ...

    Each is headed by the campaign's `title` (any language) where it has one, drawn in a font with CJK
    glyphs. A channel's sheet draws the channel's safe zones and product box over each image. The
    images are read from the run's local copy where its shards wrote them (`local_copy`), else from S3.
    """
    run_id, title = reports.run.run_id, reports.title
    by_product = {p.product_id: p for p in products}
    by_style = {s.style_id: s for s in styles}
    groups: dict[tuple[str, str, str | None], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["product_id"], r["style_id"], channel_of(r)), []).append(r)
    # The pictures that head the sheets, each read once (a product photo heads several sheets), all at once.
    wanted = {by_product[p].image_key for p, _, _ in groups} | {ref.key for _, s, _ in groups for ref in by_style[s].references}
    wanted |= {controls[c] for (p, _, _), members in groups.items() if (c := control_name(p, members[0])) in controls}
    order = sorted(wanted)
    pictures = dict(zip(order, parallel_map(lambda uri: load_image(store, uri), order), strict=True))
    font = sheet_font()

    def output(row: dict) -> Image.Image | None:
        # A finished image (upscaled, on white, pasted back) is shown in place of its source.
        return output_image(store, run_id, row.get("finish") or row, reports.local_copy)

    def one(page: tuple[tuple[str, str, str | None], list[dict], int, int]) -> tuple[str, str]:
        (product_id, style_id, channel), ordered, number, pages = page
        members = groups[(product_id, style_id, channel)]
        product, style = by_product[product_id], by_style[style_id]
        header = [(product_id, pictures[product.image_key])]
        control = controls.get(control_name(product_id, members[0]))
        if control:
            header.append(("canny", pictures[control]))
        header += [(ref.key.rsplit("/", 1)[-1].rsplit(".", 1)[0], pictures[ref.key]) for ref in style.references]
        # Only this page's images are held; the pages at once share the store's connections between them.
        shown = parallel_map(output, ordered, workers=PARALLEL_CALLS // PAGES_AT_ONCE)
        tiles = _tiles(ordered, shown, channel)
        selected = sum(bool(r.get("selected")) for r in members)
        where = f"{product_id} x {style_id}" + (f" · {channel} {members[0]['width']}x{members[0]['height']}"
                                                if channel else "")
        paging = f" · page {number} of {pages} ({len(ordered)} images)" if pages > 1 else ""
        sheet = contact_sheet(tiles, title=" · ".join(filter(None, [title, where])),
                              subtitle=f"run {run_id} · {len(members)} images · {selected} selected{paging}",
                              header=header, tile_size=SHEET_TILE, font=font)
        name = f"{product_id}__{style_id}" + (f"__{channel}" if channel else "") + \
            (f"__p{number:02d}" if pages > 1 else "") + ".jpg"
        uri = reports.run.sheet(name)
        store.put(uri, publish.encode_jpeg(sheet), content_type="image/jpeg")
        return name, uri

    pages = []
    for group, members in groups.items():
        ordered = sorted(members, key=lambda r: (r["cell_index"], r["seed"]))
        split = sheet_pages(_tiles(ordered, [None] * len(ordered), group[2]))
        pages += [(group, [ordered[i] for i in page], n, len(split)) for n, page in enumerate(split, start=1)]
    # PIL drops the GIL while it resizes and encodes: two pages at a time use two cores, and only
    # two pages' images are held at once.
    with ThreadPoolExecutor(max_workers=PAGES_AT_ONCE, thread_name_prefix="sheets") as pool:
        return dict(pool.map(one, pages))


def _tiles(ordered: Sequence[dict], shown: Sequence[Image.Image | None], channel: str | None) -> list:
    """The sheet tiles of `ordered` rows with their images; a channel's sheet draws its layout, not its axis."""
    if channel:  # one channel per sheet: its axis says nothing there, its layout is drawn instead
        shown = [outline_layout(image, row_layout(r), SHEET_TILE) if image is not None else None
                 for r, image in zip(ordered, shown, strict=True)]
        ordered = [{**r, "cell": [kv for kv in r["cell"] if kv[0] != CHANNEL_AXIS]} for r in ordered]
    return [tile_for(r, image) for r, image in zip(ordered, shown, strict=True)]


def output_image(store: ObjectStore, run_id: str, row: dict, local_copy: str | None) -> Image.Image | None:
    """A row's published image: from the run's local copy where its shard wrote it, else from S3; None without one."""
    if local_copy and (path := publish.local_image_path(local_copy, run_id, row["asset_id"])).is_file():
        with Image.open(path) as image:
            image.load()
            return image
    return load_image(store, row["output_key"]) if row.get("output_key") else None


def write_overview(store: ObjectStore, reports: Reports, rows: Sequence[dict]) -> dict[str, str]:
    """The campaign's overview sheet, beside the contact sheets: the image each product shows in each style set
    (its selected one), side by side, with the style set's spread (tasks/sheets.overview_sheet); file name -> URI."""
    run_id, title, local_copy = reports.run.run_id, reports.title, reports.local_copy
    lines = overview_lines(rows)
    shown = [row for line in lines for _, row in line.picks if row is not None]
    images = dict(zip([r["asset_id"] for r in shown],
                      parallel_map(lambda r: output_image(store, run_id, r, local_copy), shown), strict=True))
    campaign = selected_spreads(rows, CAMPAIGN)
    overall = " · ".join(f"{label} {'-' if v is None else f'{v:.2f}'}" for label, v in campaign.items())
    sheet = overview_sheet(lines, images, title=" · ".join(filter(None, [title, "overview"])),
                           subtitle=f"run {run_id} · spread of the selected images: {overall or '-'}"
                                    " · look = distance to the style set's look (1 = one clear difference)",
                           tile_size=SHEET_TILE, font=sheet_font())
    uri = reports.run.sheet(OVERVIEW)
    store.put(uri, publish.encode_jpeg(sheet), content_type="image/jpeg")
    return {OVERVIEW: uri}


def write_gallery(store: ObjectStore, reports: Reports, rows: Sequence[dict], sheets: dict[str, str], *,
                  left_out: dict[str, str] | None = None, reviews: dict[str, str] | None = None) -> str:
    """The run's gallery page (and, for a large run, its card pages: `tasks.gallery.gallery_files`), linking the
    run's tables; returns the page's URI. `left_out` is shown as a warning at the top; the campaign's title heads
    the page; `reviews` (asset id -> review state) marks the images once a decision exists."""
    run = reports.run
    links = {name.removesuffix(".jpg").replace("__", " x "): run.sheet_link(name) for name in sheets}
    tables = [run.assets.table(t) for t in lake.RUN_TABLES]
    files = iter_gallery_files(Gallery(run.run_id, reports.campaign, rows, sheets=links, tables=tables,
                                       title=reports.title, left_out=left_out or {}, reviews=reviews or {}))
    uri, index = run.gallery, key_of(run.root, run.gallery)
    page: list[str] = []

    def put(file: tuple[str, str]) -> None:
        path, text = file
        if path == index:  # the stream's last file: it names the pages, so it is written after them
            page.append(text)
        else:
            publish.put_text(store, run.gallery_file(path), text, "text/javascript; charset=utf-8")

    parallel_each(put, files)  # a page at a time, as made: never the whole gallery in memory
    publish.put_text(store, uri, page[0], "text/html; charset=utf-8")
    return uri
