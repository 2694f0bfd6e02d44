"""How long a run's gallery takes to show its first cards in headless Chromium, at --images images.

    nice -n 5 .venv/bin/python bench/gallery.py --images 100000 [--write-docs]

Writes the gallery of a generated run (10 products x 5 style sets x 2 channels x seeds, rows shaped
as `generations` rows) into a temporary folder with `tasks.gallery.gallery_files`, opens its
index.html from disk in Debian's headless Chromium (playwright), and times `goto` until the first
card is in the page; then the time a product x style x channel filter takes to show its cards.
Also reports the files' sizes: what a reader's browser reads to open it.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tasks.gallery import Gallery, gallery_files  # noqa: E402
from tests.helpers import chromium_page  # noqa: E402
from tests.test_gallery_scale import CHANNELS, PRODUCTS, STYLES  # noqa: E402


def rows(images: int) -> list[dict]:
    import tests.test_gallery_scale as shape

    shape.SEEDS = images // (PRODUCTS * STYLES * len(CHANNELS))
    return shape.rows()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()
    from playwright import sync_api

    start = time.perf_counter()
    files = gallery_files(Gallery("bench", "season", rows(args.images)))
    render = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        for path, text in files.items():
            (Path(tmp) / path).parent.mkdir(parents=True, exist_ok=True)
            (Path(tmp) / path).write_text(text)
        opened = []
        with chromium_page(sync_api, viewport={"width": 1200, "height": 900}) as page:
            for _ in range(3):
                start = time.perf_counter()
                page.goto((Path(tmp) / "index.html").as_uri())
                page.wait_for_selector("main figure")
                opened.append(time.perf_counter() - start)
            start = time.perf_counter()
            page.select_option("#f-product", "product-7")
            page.select_option("#f-style", "style-3")
            if "square" in files["index.html"]:
                page.select_option("#f-channel", "story")
            first = "document.querySelector('main figure:not([hidden])')"  # a one-page gallery hides the others
            page.wait_for_function(f"{first} && {first}.dataset.product === 'product-7'")
            filtered = time.perf_counter() - start
    index = len(files["index.html"].encode()) + len(files.get("gallery/index.js", "").encode())
    first_page = max((len(t.encode()) for p, t in files.items() if p.endswith("page-00000.js")), default=0)
    total = sum(len(t.encode()) for t in files.values())
    line = (f"{args.images:,} images: first cards after {min(opened):.2f} s (best of 3; {', '.join(f'{t:.2f}' for t in opened)}), "
            f"a product x style x channel filter {filtered:.2f} s; the page and its index {index / 1e3:.0f} KB, "
            f"the first card page {first_page / 1e3:.0f} KB, all files {total / 1e6:.1f} MB ({total / args.images:.0f} bytes "
            f"per image) in {len(files)} files; written in {render:.1f} s")
    print(line)
    if args.write_docs:
        from bench.harness import write_section

        write_section(ROOT / "docs" / "benchmarks.md", f"gallery-{args.images}", "\n".join([
            f"## Gallery of {args.images:,} images in Chromium (`bench/gallery.py`)", "",
            f"Command: `nice -n 5 .venv/bin/python bench/gallery.py --images {args.images} --write-docs`: "
            "headless Chromium (Debian), the gallery opened from disk, 2 cores shared with other work.", "",
            f"- {line}", ""]))


if __name__ == "__main__":
    main()
