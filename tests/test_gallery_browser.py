"""The gallery page in headless Chromium: it loads nothing from outside, and its filters work.

Needs Debian's `chromium` (`apt-get install -y chromium`) and the playwright package, which
drives that binary; no browser is ever downloaded. Leaves a screenshot in out/test-artifacts/.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from tasks.gallery import Gallery, render_gallery
from tests.helpers import ARTIFACTS, CHROMIUM, chromium_page

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is not installed (apt-get install -y chromium)")


def _rows() -> list[dict]:
    """Two products x two styles x three seeds; per product the best two are selected, one is gated."""
    rows = []
    for product in ("kettle", "mug"):
        for s, style in enumerate(("dawn", "noir")):
            for seed in range(3):
                n = len(rows)
                status = "gated" if (style, seed) == ("noir", 2) else "ok"
                rank = None if status == "gated" else 1 + s * 3 + seed
                rows.append({
                    "asset_id": f"{n:032x}", "product_id": product, "style_id": style, "cell_index": 0,
                    "cell": [("surface", "marble")], "prompt": f"a {product} on marble, {style}", "seed": seed,
                    "steps": 4, "scheduler": "unipc", "guidance": 5.0, "ip_scale": 0.6, "controlnet_scale": 1.0,
                    "width": 64, "height": 64, "profile": "tiny", "output_key": f"s3://a/runs/r/images/{n:032x}.png",
                    "status": status, "status_reason": "edge_f1 0.1 fails 'edge_f1 >= 0.3'" if status == "gated" else None,
                    "selected": rank is not None and rank <= 2, "rank_in_product": rank, "rank_in_cell": rank,
                    "edge_f1": 0.5, "product_ssim": 0.4, "product_delta_e": 8.0, "clip_text": 0.2, "clip_style": None,
                    "sharpness": 900.0 + n, "luminance": 0.5, "clipped_share": 0.0, "colourfulness": 30.0,
                    "score": None if rank is None else 1 - rank / 10,
                })
    return rows


@pytest.fixture
def gallery(tmp_path: Path) -> Path:
    rows = _rows()
    (tmp_path / "images").mkdir()
    for i, r in enumerate(rows):
        Image.new("RGB", (64, 64), (40 * i % 255, 90, 200 - 15 * i)).save(tmp_path / "images" / f"{r['asset_id']}.png")
    (tmp_path / "sheets").mkdir()
    Image.new("RGB", (32, 32)).save(tmp_path / "sheets" / "kettle__dawn.jpg")
    page = tmp_path / "index.html"
    page.write_text(render_gallery(Gallery("r1", "spring", rows, sheets={"kettle x dawn": "sheets/kettle__dawn.jpg"},
                                   tables=["s3://a/tables/generations/run_date=2026-11-25/r1-00000.parquet"])))
    return page


def test_gallery_filters_by_product_style_and_selection(gallery: Path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    requested: list[str] = []
    with chromium_page(sync_api, viewport={"width": 1200, "height": 900}) as page:
        page.on("request", lambda req: requested.append(req.url))
        page.goto(gallery.as_uri())
        page.wait_for_load_state("load")
        visible = "main figure:not([hidden])"
        assert page.locator(visible).count() == 12
        assert page.inner_text("#shown") == "12"
        # Every image loaded, from beside the page.
        assert page.evaluate("[...document.images].every(i => i.complete && i.naturalWidth === 64)")

        page.select_option("#f-product", "mug")
        assert page.locator(visible).count() == 6
        assert set(page.locator(visible).evaluate_all("els => els.map(e => e.dataset.product)")) == {"mug"}

        page.select_option("#f-status", "selected")
        shown = page.locator(visible)
        assert shown.count() == 2 and page.inner_text("#shown") == "2"
        assert all("selected" in t for t in shown.all_inner_texts())

        page.select_option("#f-status", "gated")
        page.select_option("#f-style", "noir")
        assert page.locator(visible).count() == 1
        assert "edge_f1 0.1 fails" in page.locator(visible).inner_text()

        page.select_option("#f-product", "")
        page.select_option("#f-style", "")
        page.select_option("#f-status", "")
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "gallery.png"), full_page=True)
    # Self-contained: nothing but the page itself and the files beside it.
    assert requested and all(url.startswith(gallery.parent.as_uri()) for url in requested), requested
    assert (ARTIFACTS / "gallery.png").stat().st_size > 10_000
