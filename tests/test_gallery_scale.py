"""A 100,000-image run's gallery in headless Chromium: it opens with its index and first card page only,
and its filters (product, style, channel, selection) read only the pages they need.

Needs Debian's `chromium` and the playwright package, as tests/test_gallery_browser.py does.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tasks.gallery import PAGE_CARDS, PAGES, Gallery, gallery_files
from tests.helpers import CHROMIUM, chromium_page

pytestmark = pytest.mark.slow
needs_chromium = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is not installed (apt-get install -y chromium)")

PRODUCTS, STYLES, CHANNELS, SEEDS = 10, 5, ("square", "story"), 1000  # 100,000 images


def rows() -> list[dict]:
    out = []
    for p in range(PRODUCTS):
        for s in range(STYLES):
            for channel in CHANNELS:
                for seed in range(SEEDS):
                    n = len(out)
                    rank = seed + 1
                    out.append({
                        "asset_id": f"{n:032x}", "product_id": f"product-{p}", "style_id": f"style-{s}", "cell_index": 0,
                        "cell": [("channel", channel)], "channel": channel, "prompt": f"product {p} in style {s}",
                        "seed": seed, "steps": 4, "scheduler": "unipc", "guidance": 5.0, "ip_scale": 0.6,
                        "controlnet_scale": 1.0, "width": 64, "height": 64 if channel == "square" else 112,
                        "profile": "sim", "output_key": f"s3://a/runs/r/images/{n:032x}.png", "status": "ok",
                        "selected": rank <= 3 and s == 0, "rank_in_product": rank, "rank_in_cell": rank,
                        "edge_f1": 0.5, "score": 1.0 - seed / SEEDS, "safe_zones": [],
                    })
    return out


@pytest.fixture(scope="module")
def large_gallery(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    folder = tmp_path_factory.mktemp("large-gallery")
    files = gallery_files(Gallery("r-100k", "season", rows(),
                                  sheets={"product-0 x style-0": "sheets/product-0__style-0__p01.jpg"}))
    for path, text in files.items():
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_text(text)
    return folder / "index.html", files


def test_a_large_gallery_is_an_index_and_pages_of_flat_size(large_gallery):
    page, files = large_gallery
    cards = [f for f in files if f.startswith(f"{PAGES}/page-")]
    assert len(cards) == PRODUCTS * STYLES * len(CHANNELS) * -(-SEEDS // PAGE_CARDS)
    assert len(files["index.html"]) < 50_000 and len(files[f"{PAGES}/index.js"]) < 100_000
    assert max(len(files[f].encode()) for f in cards) < PAGE_CARDS * 2_000  # per image flat, whatever the run's size


def scroll_until(page, cards: int, timeout: float = 180) -> None:
    """Scroll to the end of the page until at least `cards` cards are shown (the wait is generous: this checks
    that the pages come in, not how fast; bench/gallery.py measures the speed)."""
    deadline = time.monotonic() + timeout
    while page.locator("main figure").count() < cards:
        assert time.monotonic() < deadline, f"{page.locator('main figure').count()} cards shown, not {cards}"
        page.mouse.wheel(0, 100_000)
        page.wait_for_timeout(100)


@needs_chromium
def test_a_100000_image_gallery_opens_with_one_page_and_filters_in_chromium(large_gallery):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    index, _ = large_gallery
    requested: list[str] = []
    card = "main figure"
    with chromium_page(sync_api, viewport={"width": 1200, "height": 900}) as page:
        page.on("request", lambda req: requested.append(req.url.rsplit("/", 1)[-1]))
        start = time.perf_counter()
        page.goto(index.as_uri())
        page.wait_for_selector(card)
        print(f"first cards of 100,000 shown after {time.perf_counter() - start:.2f} s")
        assert page.inner_text("#shown") == "100000"
        assert 0 < page.locator(card).count() <= PAGE_CARDS
        assert "page-00000.js" in requested and "page-00099.js" not in requested

        page.select_option("#f-product", "product-7")
        page.select_option("#f-style", "style-3")
        page.select_option("#f-channel", "story")
        page.wait_for_function("document.querySelector('main figure') !== null")
        assert page.inner_text("#shown") == str(SEEDS)
        shown = page.locator(card).evaluate_all("els => els.map(e => [e.dataset.product, e.dataset.style, e.dataset.channel])")
        assert shown and {tuple(s) for s in shown} == {("product-7", "style-3", "story")}

        page.select_option("#f-product", "")
        page.select_option("#f-style", "")
        page.select_option("#f-channel", "")
        page.select_option("#f-status", "selected")
        selected = PRODUCTS * len(CHANNELS) * 3
        assert page.inner_text("#shown") == str(selected)
        scroll_until(page, selected)  # the pages that hold selected images come in as the reader scrolls
        page.wait_for_function("!queue.length && !waiting")
        assert page.locator(card).count() == selected
        assert set(page.locator(card).evaluate_all("els => els.map(e => e.dataset.selected)")) == {"1"}

        # Scrolling to the end of an unfiltered gallery reads the next pages as they come into view.
        page.select_option("#f-status", "")
        page.wait_for_selector(card)
        before = page.locator(card).count()
        scroll_until(page, before + 1)
    # Only the index and the pages the filters wanted were ever read: the selected images' pages and a few more.
    pages = {r for r in requested if r.startswith("page-")}
    assert len(pages) < 0.5 * PRODUCTS * STYLES * len(CHANNELS) * 2, sorted(pages)
