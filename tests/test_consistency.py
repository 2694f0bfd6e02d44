"""One look across a campaign: the measures on constructed images, and selection that asks for agreement."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from catalogs import parse_campaign
from catalogs.models import Selection
from tasks import consistency
from tasks.consistency import background_look, colour_temperature, look_of, measure, spread, spread_columns
from tasks.scores import background_region
from tasks.select import OUTCOME, select_images

SIZE = 64


def _mask() -> np.ndarray:
    mask = np.zeros((SIZE, SIZE), dtype=bool)
    mask[20:44, 20:44] = True
    return mask


MASK = _mask()
BACKGROUND = background_region(MASK)


def picture(colour, *, seed: int, stripes=None, noise: float = 6.0) -> Image.Image:
    """A product (grey square) on a background of `colour` (or stripes of two colours), with a little noise."""
    rng = np.random.default_rng(seed)
    pixels = np.empty((SIZE, SIZE, 3))
    pixels[:] = colour
    if stripes is not None:
        pixels[:, ::2] = stripes[0]
        pixels[:, 1::2] = stripes[1]
    pixels += rng.normal(0, noise, pixels.shape)
    pixels[MASK] = (90, 90, 90)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


WARM = (214, 190, 160)  # beige in warm light


def campaign_images() -> dict[str, Image.Image]:
    """Five alike (warm beige, a little variation), one palette outlier (magenta and green stripes whose
    mean is the same beige: same lighting, other colours), one lighting outlier (the same beige, dimmed)."""
    alike = {f"alike-{i}": picture(np.add(WARM, (i * 3 - 6, i * 2 - 4, i - 2)), seed=i) for i in range(5)}
    return {**alike,
            "palette": picture(WARM, seed=9, stripes=(np.add(WARM, (40, -90, 80)), np.add(WARM, (-40, 60, -80)))),
            "lighting": picture(np.multiply(WARM, 0.7), seed=10)}


def scored_row(asset_id: str, image: Image.Image, **fields) -> dict:
    """A `generations` row as scoring leaves it: its background look measured on the image."""
    return {"asset_id": asset_id, "product_id": fields.pop("product", asset_id), "style_id": fields.pop("style", "warm"),
            "cell_index": 0, "cell": [("surface", "v0")], "seed": 0, "status": "ok", "status_reason": None,
            "background_hash": None, **background_look(image, BACKGROUND), **fields}


def test_the_measures_find_the_palette_outlier_and_the_lighting_outlier():
    rows = [scored_row(name, image) for name, image in campaign_images().items()]
    out = {r["asset_id"]: m for r, m in zip(rows, measure(rows, [look_of(r) for r in rows], ["ok"] * len(rows),
                                                                  "style_set"), strict=True)}
    by = {k: sorted(out, key=lambda a, k=k: -out[a][k]) for k in ("palette_distance", "lighting_distance",
                                                                  "consistency_distance")}
    assert by["palette_distance"][0] == "palette"
    assert by["lighting_distance"][0] == "lighting"
    # The stripes average to the same beige: their lighting is the alike images'.
    assert out["palette"]["lighting_distance"] < 0.5 < out["palette"]["palette_distance"]
    assert set(by["consistency_distance"][:2]) == {"palette", "lighting"}
    assert {a for a, m in out.items() if m["consistency_outlier"]} == {"palette", "lighting"}
    assert all(m["consistency_distance"] < 0.5 for a, m in out.items() if a.startswith("alike"))
    assert {m["consistency_within"] for m in out.values()} == {"style_set"}
    assert all(m["embedding_distance"] is None for m in out.values())  # no CLIP: the other two decide


def test_the_embedding_distance_ranks_the_image_whose_embedding_points_elsewhere():
    rng = np.random.default_rng(3)
    axis = rng.normal(size=32)
    images = campaign_images()
    rows = [scored_row(f"alike-{i}", images[f"alike-{i}"], clip_embedding=list(axis + rng.normal(0, 0.1, 32)))
            for i in range(5)]
    rows.append(scored_row("elsewhere", images["alike-0"], clip_embedding=list(rng.normal(size=32))))
    out = measure(rows, [look_of(r) for r in rows], ["ok"] * len(rows), "campaign")
    assert max(range(len(rows)), key=lambda i: out[i]["embedding_distance"]) == len(rows) - 1
    assert out[-1]["consistency_outlier"] and not any(m["consistency_outlier"] for m in out[:-1])
    looks = [look_of(r) for r in rows]
    assert consistency.mean_similarity(looks[:5]) > 0.9 > consistency.mean_similarity(looks)


def test_the_spread_grows_with_an_outlier_and_is_zero_for_identical_images():
    images = campaign_images()
    alike = [look_of(scored_row(a, images[a])) for a in images if a.startswith("alike")]
    same = look_of(scored_row("a", images["alike-0"]))
    assert spread([same, same, same]) == pytest.approx(0.0, abs=1e-9)
    with_outlier = spread([*alike, look_of(scored_row("p", images["palette"]))])
    assert spread(alike) < 0.25 < with_outlier and with_outlier > 2 * spread(alike)
    assert spread(alike[:1]) is None


def test_background_look_sees_only_the_background_and_colour_temperature_orders_warm_and_cool():
    red_product = picture(WARM, seed=1)
    red_product.paste((255, 0, 0), (20, 20, 44, 44))
    plain = background_look(picture(WARM, seed=1), BACKGROUND)
    assert background_look(red_product, BACKGROUND) == plain  # the product's colour never enters the palette
    assert len(plain["background_palette"]) <= consistency.PALETTE_COLOURS
    assert plain["background_palette"][0].startswith("#") and 70 < plain["background_lightness"] < 85
    assert colour_temperature(np.array([1.0, 0.8, 0.6])) < 5000 < 6000 < colour_temperature(np.array([0.8, 0.9, 1.0]))
    assert colour_temperature(np.zeros(3)) is None
    # A product that fills the canvas leaves no background to speak of: the whole image is described.
    assert background_region(np.ones((SIZE, SIZE), dtype=bool)).all()


def test_a_malformed_palette_is_refused_with_the_entry_named():
    with pytest.raises(ValueError, match="palette entry 'teal 0.5'"):
        look_of({"background_palette": ["teal 0.5"]})


# --------------------------------------------------------------------------- selection


def _selection_rows() -> list[dict]:
    """Three products in one style set, two images each. The clock's best image alone (sharper) is the
    cold one; its warm image agrees with the cup's and kettle's."""
    cold = (150, 175, 215)
    rows = []
    for product in ("cup", "kettle"):
        for seed, sharp in ((0, 900.0), (1, 100.0)):
            rows.append(scored_row(f"{product}-{seed}", picture(WARM, seed=seed), product=product, seed=seed,
                                   sharpness=sharp))
    rows.append(scored_row("clock-cold", picture(cold, seed=5), product="clock", seed=0, sharpness=900.0))
    rows.append(scored_row("clock-warm", picture(WARM, seed=6), product="clock", seed=1, sharpness=100.0))
    return rows


def _picked(rows: list[dict], selection: Selection) -> set[str]:
    return {r["asset_id"] for r, o in zip(rows, select_images(rows, selection), strict=True) if o["selected"]}


def test_consistency_changes_the_pick_to_the_image_that_agrees_with_the_other_products():
    rows = _selection_rows()
    alone = Selection(top_k=1, gates=(), weights={"sharpness": 1.0})
    assert _picked(rows, alone) == {"cup-0", "kettle-0", "clock-cold"}
    together = Selection(top_k=1, gates=(), weights={"sharpness": 1.0}, consistency={"weight": 2.0})
    assert _picked(rows, together) == {"cup-0", "kettle-0", "clock-warm"}
    # A weight below the quality's keeps the sharper image: agreement is weighed, not imposed.
    gentle = Selection(top_k=1, gates=(), weights={"sharpness": 1.0}, consistency={"weight": 0.5})
    assert _picked(rows, gentle) == {"cup-0", "kettle-0", "clock-cold"}
    # Deterministic whatever the order the rows come in; the top k per product is kept.
    assert _picked(list(reversed(rows)), together) == {"cup-0", "kettle-0", "clock-warm"}
    two = Selection(top_k=2, gates=(), weights={"sharpness": 1.0}, consistency={"weight": 2.0})
    assert len(_picked(rows, two)) == 6


def test_within_campaign_measures_agreement_across_style_sets():
    rows = _selection_rows()
    for r in rows:  # the clock is only made in another style set: alone in it, nothing to agree with ...
        if r["product_id"] == "clock":
            r["style_id"] = "cold-set"
    by_style = Selection(top_k=1, gates=(), weights={"sharpness": 1.0}, consistency={"weight": 2.0})
    assert "clock-cold" in _picked(rows, by_style)
    # ... unless the look is the campaign's, across its style sets.
    across = Selection(top_k=1, gates=(), weights={"sharpness": 1.0}, consistency={"weight": 2.0, "within": "campaign"})
    assert "clock-warm" in _picked(rows, across)
    out = select_images(rows, across)
    assert {o["consistency_within"] for o in out} == {"campaign"}


def test_runs_columns_report_the_spread_of_the_selected_images():
    rows = _selection_rows()

    def columns(selection: Selection) -> dict:
        return spread_columns([{**r, **o} for r, o in zip(rows, select_images(rows, selection), strict=True)])

    alone = columns(Selection(top_k=1, gates=(), weights={"sharpness": 1.0}))
    together = columns(Selection(top_k=1, gates=(), weights={"sharpness": 1.0}, consistency={"weight": 2.0}))
    spreads = dict(together["consistency_spreads"])
    assert set(spreads) == {"warm", "campaign"} and together["consistency_spread"] == pytest.approx(float(spreads["warm"]), abs=1e-3)
    assert alone["consistency_spread"] > 2 * together["consistency_spread"]


# Selection without `consistency` is what it was before consistency existed: the outcome of these rows was
# recorded from the selection code of schema version 7 (every outcome column, hashed).
PINNED_SELECTED = ["clock-dawn-1-1", "clock-dawn-2-1", "cup-dawn-1-2", "cup-dawn-2-1", "kettle-dawn-1-1",
                   "kettle-dawn-2-1"]
PINNED_OUTCOME_SHA256 = "23804d9ad2ced613537fc5ad68f4f265162c0c678b774d25bf1220cb4663981f"
OUTCOME_BEFORE = ("status", "status_reason", "duplicate_of", "gates_failed", "score", "rank_in_cell",
                  "rank_in_product", "selected")


def _pinned_rows() -> list[dict]:
    rng = np.random.default_rng(7)
    rows = []
    for p in ("cup", "clock", "kettle"):
        for s in ("dusk", "dawn"):
            for c in range(3):
                for seed in (1, 2):
                    h = f"{int(rng.integers(0, 2**63)):016x}"
                    values = rng.random(7) * [1, 1, 20, 0.4, 1, 900, 0.6]
                    rows.append({"asset_id": f"{p}-{s}-{c}-{seed}", "product_id": p, "style_id": s, "cell_index": c,
                                 "cell": [("surface", f"v{c}")], "seed": seed, "status": "ok", "status_reason": None,
                                 "background_hash": h,
                                 **{k: float(v) for k, v in zip(("edge_f1", "product_ssim", "product_delta_e",
                                                                 "clip_text", "clip_style", "sharpness",
                                                                 "clipped_share"), values, strict=True)}})
    rows[3]["background_hash"] = rows[2]["background_hash"]
    return rows


def test_without_the_consistency_key_selection_is_unchanged():
    rows = _pinned_rows()
    for r, image in zip(rows, [picture(np.add(WARM, (i % 50, 0, -(i % 40))), seed=i) for i in range(len(rows))],
                        strict=True):
        r.update(background_look(image, BACKGROUND))  # looks present: they are measured, never weighed
    out = select_images(rows, Selection(top_k=2))
    assert sorted(r["asset_id"] for r, o in zip(rows, out, strict=True) if o["selected"]) == PINNED_SELECTED
    before = [{k: o[k] for k in OUTCOME_BEFORE} for o in out]
    assert hashlib.sha256(json.dumps(before, sort_keys=True).encode()).hexdigest() == PINNED_OUTCOME_SHA256
    assert set(OUTCOME) >= set(consistency.COLUMNS)
    assert all(o["consistency_distance"] is not None for o in out)


@pytest.mark.parametrize(("consistency_spec", "message"), [
    ("{weight: 0}", "consistency.weight"),
    ("{weight: 1, within: channel}", "consistency.within"),
    ("{within: campaign}", "consistency.weight"),
])
def test_campaign_refuses_a_bad_consistency_section(consistency_spec, message):
    text = f"""
name: look
products: {{ids: [mug]}}
styles: {{ids: [s]}}
matrix: {{template: "{{product}}", seeds: 1}}
selection: {{consistency: {consistency_spec}}}
"""
    with pytest.raises(ValueError, match=message):
        parse_campaign(text)


def test_campaign_reads_the_consistency_section():
    spec = parse_campaign("""
name: look
products: {ids: [mug]}
styles: {ids: [s]}
matrix: {template: "{product}", seeds: 1}
selection: {consistency: {weight: 1.5, within: campaign}}
""")
    assert spec.selection.consistency.weight == 1.5 and spec.selection.consistency.within == "campaign"
    assert parse_campaign(spec.model_dump_json()).selection == spec.selection
    assert parse_campaign("""
name: look
products: {ids: [mug]}
styles: {ids: [s]}
matrix: {template: "{product}", seeds: 1}
""").selection.consistency is None  # without the key: each image alone, as before


# --------------------------------------------------------------------------- shown: the overview sheet and the gallery


def _campaign_outcome(consistency_spec: dict | None = None) -> tuple[list[dict], dict[str, Image.Image]]:
    """Four products in two style sets (warm dusk, cold dawn), three images each; the clock's sharpest image
    in each style set has the other style set's colours."""
    cold = (150, 175, 215)
    rows, images = [], {}
    for style, base, other in (("warm-dusk", WARM, cold), ("cold-dawn", cold, WARM)):
        for product in ("coffee-cup", "alarm-clock", "kettle", "rocket"):
            for seed in range(3):
                colour = other if (product, seed) == ("alarm-clock", 0) else base
                image = picture(colour, seed=len(rows))
                r = scored_row(f"{style}-{product}-{seed}", image, product=product, style=style, seed=seed,
                               sharpness=1000.0 - 100 * seed + (50 if style == "warm-dusk" else 0),
                               output_key=f"s3://a/runs/r1/images/{style}-{product}-{seed}.png",
                               prompt=f"{product} at {style}")
                rows.append(r)
                images[r["asset_id"]] = image
    selection = Selection(top_k=2, gates=(), weights={"sharpness": 1.0}, consistency=consistency_spec)
    return [{**r, **o} for r, o in zip(rows, select_images(rows, selection), strict=True)], images


def test_the_overview_shows_each_products_selected_image_per_style_set_with_the_spread():
    from adapters.infra.fonts import sheet_font
    from tasks.sheets import OUTLIER, SELECTED, overview_lines, overview_sheet
    from tests.helpers import ARTIFACTS

    rows, images = _campaign_outcome()
    lines = overview_lines(rows)
    assert [line.label for line in lines] == ["cold-dawn", "warm-dusk"]
    warm = lines[1]
    assert [p for p, _ in warm.picks] == ["alarm-clock", "coffee-cup", "kettle", "rocket"]
    # Each product shows its best selected image of the style set: the clock's is its cold outlier.
    assert all(r["selected"] and r["rank_in_product"] == 1 for _, r in warm.picks)
    assert warm.picks[0][1]["asset_id"] == "warm-dusk-alarm-clock-0" and warm.picks[0][1]["consistency_outlier"]
    assert warm.spread == pytest.approx(consistency.selected_spreads(rows, "style_set")["warm-dusk"])
    assert len(warm.swatches) >= 1 and all(len(c) == 3 for c in warm.swatches)
    sheet = overview_sheet(lines, images, title="autumn · overview", subtitle="run r1", tile_size=96, font=sheet_font())
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    sheet.save(ARTIFACTS / "overview.png")  # looked at by a person
    colours = {tuple(c) for c in np.asarray(sheet).reshape(-1, 3)}
    assert SELECTED in colours and OUTLIER in colours
    assert sheet.width > 4 * 96 and sheet.height > 2 * 96

    # Asked for one look, the clock's warm image is picked in warm dusk: its line agrees, its spread shrinks.
    agreed, _ = _campaign_outcome({"weight": 2.0})
    agreed_lines = overview_lines(agreed)
    assert agreed_lines[1].picks[0][1]["asset_id"] == "warm-dusk-alarm-clock-1"
    assert agreed_lines[1].spread < warm.spread / 2


def test_the_gallery_sorts_filters_and_marks_outliers_by_distance_to_the_look():
    from tasks.gallery import Gallery, render_gallery

    rows, _ = _campaign_outcome()
    page = render_gallery(Gallery("r1", "autumn", rows))
    assert page.count('class="badge outlier"') == sum(r["consistency_outlier"] for r in rows) == 2
    for r in rows:
        assert f'data-distance="{r["consistency_distance"]:.4f}" data-outlier="{int(r["consistency_outlier"])}"' in page
    assert 'id="f-sort"' in page and 'id="f-outlier"' in page and 'id="f-distance"' in page
    assert "<td>look</td>" in page
    # An image without a look (failed, or from before consistency) carries an empty distance.
    bare = {**rows[0], "consistency_distance": None, "consistency_outlier": False}
    assert 'data-distance="" data-outlier="0"' in render_gallery(Gallery("r1", "autumn", [bare]))


def test_the_gallery_page_sorts_by_distance_and_filters_outliers_in_a_browser(tmp_path):
    from pathlib import Path

    from tasks.gallery import Gallery, render_gallery
    from tests.helpers import ARTIFACTS, CHROMIUM, chromium_page

    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    rows, images = _campaign_outcome()
    (tmp_path / "images").mkdir()
    for asset_id, image in images.items():
        image.save(tmp_path / "images" / f"{asset_id}.png")
    page_file = tmp_path / "index.html"
    page_file.write_text(render_gallery(Gallery("r1", "autumn", rows)))
    distances = sorted(r["consistency_distance"] for r in rows)
    with chromium_page(sync_api, viewport={"width": 1200, "height": 900}) as page:
        page.goto(page_file.as_uri())
        page.wait_for_load_state("load")
        visible = "main figure:not([hidden])"

        def shown(attribute: str) -> list[str]:
            return page.locator(visible).evaluate_all(f"els => els.map(e => e.dataset.{attribute})")

        first = shown("order")
        assert first == [str(n) for n in range(len(rows))]  # best first: the page's own order
        page.select_option("#f-sort", "near")
        assert [float(d) for d in shown("distance")] == pytest.approx(distances, abs=1e-4)
        page.select_option("#f-sort", "far")
        assert [float(d) for d in shown("distance")] == pytest.approx(distances[::-1], abs=1e-4)
        page.check("#f-outlier")
        assert shown("outlier") == ["1", "1"] and page.inner_text("#shown") == "2"
        assert all("outlier" in t for t in page.locator(visible).all_inner_texts())
        page.uncheck("#f-outlier")
        page.fill("#f-distance", "0.5")
        assert all(float(d) <= 0.5 for d in shown("distance")) and len(shown("distance")) == len(rows) - 2
        page.fill("#f-distance", "")
        page.select_option("#f-sort", "")
        assert shown("order") == first
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.select_option("#f-sort", "far")
        page.screenshot(path=str(ARTIFACTS / "gallery-by-look.png"), full_page=False)


def test_the_stored_look_round_trips_through_parquet_and_duckdb_reads_the_embedding(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from adapters.infra.parquet_io import arrow_schema
    from tasks.tables import GENERATIONS

    duckdb = pytest.importorskip("duckdb")
    names = ("asset_id", "clip_embedding", "background_palette", "background_lightness", "background_cct")
    schema = arrow_schema([c for c in GENERATIONS if c.name in names])
    images = campaign_images()
    rows = [{k: v for k, v in scored_row(a, images[a], clip_embedding=[1.0, 0.0] if a != "palette" else [0.0, 1.0]).items()
             if k in names} for a in ("alike-0", "alike-1", "palette")]
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp_path / "part.parquet")
    back = pq.read_table(tmp_path / "part.parquet").to_pandas().to_dict("records")
    assert [look_of(r).palette.shape for r in back] == [look_of(r).palette.shape for r in rows]
    assert all(np.allclose(look_of(a).palette, look_of(b).palette) for a, b in zip(back, rows, strict=True))
    similar = duckdb.connect().execute(
        f"SELECT asset_id, list_cosine_similarity(clip_embedding, [1.0, 0.0]::FLOAT[]) FROM '{tmp_path}/part.parquet' "
        "ORDER BY asset_id").fetchall()
    assert similar == [("alike-0", 1.0), ("alike-1", 1.0), ("palette", 0.0)]
