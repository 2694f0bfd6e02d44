"""The run's outputs after generation, before its commit: every image's outcome decided across the
run, the contact sheets and the gallery page.

Each overwrites its own still-uncommitted objects, so a retry is safe; the rows count once the
campaign commits them to the tables (adapters/lake.py).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from concurrent.futures import ThreadPoolExecutor

from PIL import Image

from adapters import publish
from adapters.fonts import sheet_font
from adapters.images import load_image
from adapters.storage import ObjectStore, parallel_map
from catalogs.models import CHANNEL_AXIS, Product, Selection, StyleSet
from tasks.canny import control_name
from tasks.channels import channel_of, outline_layout, row_layout
from tasks.gallery import render_gallery
from tasks.select import OUTCOME, select_images
from tasks.sheets import contact_sheet, tile_for

SHEET_TILE = 160  # pixels of a contact sheet tile's long side


def select_run(store: ObjectStore, parts: Sequence[dict], selection: Selection,
               owned: Collection[str] | None = None) -> list[dict]:
    """The run's `generations` rows from its staged parts, each with its outcome decided across the run.

    With `owned`, only those asset ids stay (the run holds their claims as it commits; another run
    that took a claim over records that asset instead).
    """
    rows = publish.read_staged(store, parts, "generations").to_dict("records")
    if owned is not None:
        keep = set(owned)
        rows = [r for r in rows if r["asset_id"] in keep]
    if rows:
        for row, outcome in zip(rows, select_images(rows, selection), strict=True):
            row.update({k: outcome[k] for k in OUTCOME})
    return rows


def write_sheets(store: ObjectStore, assets: str, run_id: str, rows: Sequence[dict], products: Sequence[Product],
                 styles: Sequence[StyleSet], controls: dict[str, str], *, title: str | None = None,
                 local_copy: str | None = None) -> dict[str, str]:
    """One contact sheet per product x style set (x channel, in a campaign with channels), stored under the
    run's `sheets/`; file name -> URI.

    Each is headed by the campaign's `title` (any language) where it has one, drawn in a font with CJK
    glyphs. A channel's sheet draws the channel's safe zones and product box over each image. The
    images are read from the run's local copy where its shards wrote them (`local_copy`), else from S3.
    """
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
        if local_copy and (path := publish.local_image_path(local_copy, run_id, row["asset_id"])).is_file():
            with Image.open(path) as image:
                image.load()
                return image
        return load_image(store, row["output_key"]) if row.get("output_key") else None

    def one(group: tuple[str, str, str | None]) -> tuple[str, str]:
        (product_id, style_id, channel), members = group, groups[group]
        product, style = by_product[product_id], by_style[style_id]
        header = [(product_id, pictures[product.image_key])]
        control = controls.get(control_name(product_id, members[0]))
        if control:
            header.append(("canny", pictures[control]))
        header += [(ref.key.rsplit("/", 1)[-1].rsplit(".", 1)[0], pictures[ref.key]) for ref in style.references]
        ordered = sorted(members, key=lambda r: (r["cell_index"], r["seed"]))
        shown = parallel_map(output, ordered)
        if channel:  # one channel per sheet: its axis says nothing there, its layout is drawn instead
            shown = [outline_layout(image, row_layout(r), SHEET_TILE) if image is not None else None
                     for r, image in zip(ordered, shown, strict=True)]
            ordered = [{**r, "cell": [kv for kv in r["cell"] if kv[0] != CHANNEL_AXIS]} for r in ordered]
        tiles = [tile_for(r, image) for r, image in zip(ordered, shown, strict=True)]
        selected = sum(bool(r.get("selected")) for r in members)
        where = f"{product_id} x {style_id}" + (f" · {channel} {members[0]['width']}x{members[0]['height']}"
                                                if channel else "")
        sheet = contact_sheet(tiles, title=" · ".join(filter(None, [title, where])),
                              subtitle=f"run {run_id} · {len(members)} images · {selected} selected", header=header,
                              tile_size=SHEET_TILE, font=font)
        name = f"{product_id}__{style_id}" + (f"__{channel}" if channel else "") + ".jpg"
        uri = publish.run_uri(assets, run_id, "sheets", name)
        store.put(uri, publish.encode_jpeg(sheet), content_type="image/jpeg")
        return name, uri

    # PIL drops the GIL while it resizes and encodes: two sheets at a time use two cores, and only
    # two sheets' images are held at once.
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="sheets") as pool:
        return dict(pool.map(one, list(groups)))


def write_gallery(store: ObjectStore, assets: str, run_id: str, campaign: str, rows: Sequence[dict],
                  sheets: dict[str, str], tables: Sequence[str], left_out: dict[str, str] | None = None, *,
                  title: str | None = None, reviews: dict[str, str] | None = None) -> str:
    """The run's `index.html`; returns its URI. `left_out` is shown as a warning at the top; `title` heads the page;
    `reviews` (asset id -> review state) marks the images once a decision exists."""
    uri = publish.run_uri(assets, run_id, "index.html")
    links = {name.removesuffix(".jpg").replace("__", " x "): f"sheets/{name}" for name in sheets}
    publish.put_text(store, uri, render_gallery(run_id, campaign, rows, sheets=links, tables=tables,
                                                  left_out=left_out, title=title, reviews=reviews),
                     "text/html; charset=utf-8")
    return uri
