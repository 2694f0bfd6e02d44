"""The run's outputs after generation, before the manifest: every image's outcome written into
the `generations` parts, the per-cell metrics, the contact sheets and the gallery page.

Each rewrites or overwrites its own still-uncommitted objects, so a retry is safe; none of it
counts until the campaign writes its manifest.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from adapters import publish
from adapters.fonts import sheet_font
from adapters.images import load_image
from adapters.storage import ObjectStore
from catalogs.models import Product, Selection, StyleSet
from tasks.canny import control_name
from tasks.gallery import render_gallery
from tasks.select import OUTCOME, cell_metrics, select_images
from tasks.sheets import contact_sheet, tile_for


def select_run(store: ObjectStore, parts: Sequence[dict], selection: Selection,
               owned: Collection[str] | None = None) -> tuple[list[dict], list[dict]]:
    """Decide every image's outcome across the run and rewrite each `generations` part with it.

    With `owned`, only those asset ids stay (the run holds their claims as it commits; another run
    that took a claim over records that asset instead). Returns the run's rows, with outcomes, and
    the parts' new manifest entries.
    """
    per_part = [publish.read_table(store, {"parts": [p]}, "generations").to_dict("records") for p in parts]
    if owned is not None:
        keep = set(owned)
        per_part = [[r for r in part_rows if r["asset_id"] in keep] for part_rows in per_part]
    rows = [r for part_rows in per_part for r in part_rows]
    if rows:
        for row, outcome in zip(rows, select_images(rows, selection), strict=True):
            row.update({k: outcome[k] for k in OUTCOME})
    new_parts = [publish.rewrite_table_part(store, p, part_rows) for p, part_rows in zip(parts, per_part, strict=True)]
    return rows, new_parts


def write_cell_metrics(store: ObjectStore, assets: str, run_date: str, run_id: str, campaign: str,
                       rows: Sequence[dict]) -> dict:
    """The run's `cell_metrics` part; returns its manifest entry."""
    return publish.put_table_part(store, assets, "cell_metrics", run_date, run_id,
                                  cell_metrics(rows, run_id=run_id, campaign=campaign))


def write_sheets(store: ObjectStore, assets: str, run_id: str, rows: Sequence[dict], products: Sequence[Product],
                 styles: Sequence[StyleSet], controls: dict[str, str], *, title: str | None = None) -> dict[str, str]:
    """One contact sheet per product x style set, stored under the run's `sheets/`; file name -> URI.

    Each is headed by the campaign's `title` (any language) where it has one, drawn in a font with CJK glyphs.
    """
    by_product = {p.product_id: p for p in products}
    by_style = {s.style_id: s for s in styles}
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["product_id"], r["style_id"]), []).append(r)
    sheets = {}
    for (product_id, style_id), members in groups.items():
        product, style = by_product[product_id], by_style[style_id]
        first = members[0]
        header = [(product_id, load_image(store, product.image_key))]
        control = controls.get(control_name(product_id, first))
        if control:
            header.append(("canny", load_image(store, control)))
        header += [(ref.key.rsplit("/", 1)[-1].rsplit(".", 1)[0], load_image(store, ref.key))
                   for ref in style.references]
        tiles = [tile_for(r, load_image(store, r["output_key"]) if r.get("output_key") else None)
                 for r in sorted(members, key=lambda r: (r["cell_index"], r["seed"]))]
        selected = sum(bool(r.get("selected")) for r in members)
        sheet = contact_sheet(tiles, title=" · ".join(filter(None, [title, f"{product_id} x {style_id}"])),
                              subtitle=f"run {run_id} · {len(members)} images · {selected} selected", header=header,
                              font=sheet_font())
        name = f"{product_id}__{style_id}.jpg"
        sheets[name] = publish.run_uri(assets, run_id, "sheets", name)
        store.put(sheets[name], publish.encode_jpeg(sheet), content_type="image/jpeg")
    return sheets


def write_gallery(store: ObjectStore, assets: str, run_id: str, campaign: str, rows: Sequence[dict],
                  sheets: dict[str, str], tables: Sequence[str], left_out: dict[str, str] | None = None, *,
                  title: str | None = None) -> str:
    """The run's `index.html`; returns its URI. `left_out` is shown as a warning at the top; `title` heads the page."""
    uri = publish.run_uri(assets, run_id, "index.html")
    links = {name.removesuffix(".jpg").replace("__", " x "): f"sheets/{name}" for name in sheets}
    publish.put_text(store, uri, render_gallery(run_id, campaign, rows, sheets=links, tables=tables,
                                                  left_out=left_out, title=title),
                     "text/html; charset=utf-8")
    return uri
