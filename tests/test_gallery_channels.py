"""The gallery of a campaign with channels, in headless Chromium: the channel filter and the safe-zone toggle.

Needs Debian's `chromium` and the playwright package (no browser is downloaded). Leaves a
screenshot with the safe zones shown in out/test-artifacts/gallery-channels.png.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from catalogs.models import ChannelSpec
from tasks.channels import layout_params, product_box, resolve_channel
from tasks.gallery import Gallery, render_gallery
from tasks.tables import layout_columns
from tests.helpers import ARTIFACTS, CHROMIUM, chromium_page

CHANNELS = ("square", "story", "banner")


def _rows() -> list[dict]:
    """Two products x three channels x two seeds, each row with its channel's resolved layout."""
    rows = []
    for product in ("kettle", "mug"):
        for channel in CHANNELS:
            layout = resolve_channel(channel, ChannelSpec(), "sd15")
            params = layout_params(layout, product_box(layout, 300, 200))
            for seed in range(2):
                n = len(rows)
                rows.append({
                    "asset_id": f"{n:032x}", "product_id": product, "style_id": "dawn", "cell_index": 0,
                    "cell": [("channel", channel)], "prompt": f"a {product} on marble", "seed": seed,
                    "steps": 4, "scheduler": "unipc", "width": layout.width, "height": layout.height, "profile": "sd15",
                    "output_key": f"s3://a/runs/r/images/{n:032x}.png", "status": "ok", "selected": seed == 0,
                    "rank_in_product": seed + 1, "rank_in_cell": seed + 1, "score": 1 - seed / 2,
                    "safe_zone_share": 0.0, "product_share": 0.3, "product_cut": 0.0,
                    **layout_columns(params),
                })
    return rows


@pytest.fixture
def gallery(tmp_path: Path) -> Path:
    rows = _rows()
    (tmp_path / "images").mkdir()
    for i, r in enumerate(rows):
        # Stored at a quarter of the canvas: the outline is drawn in canvas pixels and must scale with the image.
        Image.new("RGB", (r["width"] // 4, r["height"] // 4), (40 * i % 255, 120, 90)).save(
            tmp_path / "images" / f"{r['asset_id']}.png")
    page = tmp_path / "index.html"
    page.write_text(render_gallery(Gallery("r1", "placements", rows)))
    return page


def test_a_gallery_without_channels_has_no_channel_controls():
    page = render_gallery(Gallery("r1", "plain", [{"asset_id": "0" * 32, "product_id": "kettle", "style_id": "dawn",
                                           "cell_index": 0, "cell": [], "prompt": "p", "seed": 1, "width": 64,
                                           "height": 64, "output_key": "s3://a/x.png"}]))
    assert 'id="f-channel"' not in page and 'id="t-zones"' not in page and "<svg" not in page
    assert "in safe zone" not in page  # the channel checks are for placements


def test_channel_cards_show_the_channel_checks():
    page = render_gallery(Gallery("r1", "placements", _rows()))
    assert page.count("<td>in safe zone</td>") == page.count("<figure")


def test_each_channel_card_carries_its_safe_zones_and_product_box():
    page = render_gallery(Gallery("r1", "placements", _rows()))
    assert page.count('data-channel="banner"') == 4
    # The banner's copy side (the right 45% of 1024 px) and the story's top 14% of 1024 px.
    assert '<rect class="zone" x="563" y="0" width="461" height="576"/>' in page
    assert '<rect class="zone" x="0" y="0" width="576" height="144"/>' in page


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is not installed (apt-get install -y chromium)")
def test_gallery_filters_by_channel_and_draws_the_safe_zones_when_asked(gallery: Path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    with chromium_page(sync_api, viewport={"width": 1200, "height": 900}) as page:
        page.goto(gallery.as_uri())
        page.wait_for_load_state("load")
        visible = "main figure:not([hidden])"
        assert page.locator(visible).count() == 12

        page.select_option("#f-channel", "banner")
        assert page.locator(visible).count() == 4 and page.inner_text("#shown") == "4"
        assert set(page.locator(visible).evaluate_all("els => els.map(e => e.dataset.channel)")) == {"banner"}

        zone = page.locator(f"{visible} svg.zones rect.zone").first
        assert not zone.is_visible()  # off until asked
        page.check("#t-zones")
        assert zone.is_visible()
        # The outline covers the banner's right 45%, wherever and however large the image is drawn.
        image = page.locator(f"{visible} img").first.bounding_box()
        drawn = zone.bounding_box()
        assert abs(drawn["x"] - (image["x"] + image["width"] * 563 / 1024)) <= 2
        assert abs(drawn["x"] + drawn["width"] - (image["x"] + image["width"])) <= 2
        assert abs(drawn["height"] - image["height"]) <= 2
        box = page.locator(f"{visible} svg.zones rect.box").first.bounding_box()
        assert box["x"] + box["width"] <= drawn["x"] + 3  # the product stays out of the copy's room (2 px strokes)

        page.select_option("#f-channel", "")
        assert page.locator(visible).count() == 12
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "gallery-channels.png"), full_page=True)
        page.uncheck("#t-zones")
        assert not zone.is_visible()
    assert (ARTIFACTS / "gallery-channels.png").stat().st_size > 10_000
