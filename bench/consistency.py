"""What consistency costs a run, per 1,000 images: on the worker that scores, and at the gather.

    .venv/bin/python bench/consistency.py [--images 1000] [--size 512] [--write-docs]

Worker side, on `--size` px photos (scikit-image's samples, recoloured per image so no two are
alike) with a product region covering about a quarter of the canvas, in batches of 8 as a shard
scores them: the background region once per batch (`tasks.scores.background_region`), each image's
look (`tasks.consistency.background_look`), and keeping the CLIP embeddings (a (8, 768) tensor to
lists). Beside it, the weight-free scores every image already gets (`tasks.scores.pixel_scores`),
on a fifth of the images, scaled.

Times are CPU seconds of this process (`time.process_time`): the box is shared, and its wall
time says more about the neighbours' load than about this code. Every step runs on one thread.

Gather side, on `--images` scored rows (25 products x 2 style sets x cells x seeds, 768-d
embeddings): `select_images` without `selection.consistency` (each image alone, as before), with it
(within the style set, and within the campaign), the runs columns (`spread_columns`), the overview's
lines, and the generations part's parquet bytes with and without the new columns.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from catalogs.models import Selection  # noqa: E402
from tasks.consistency import background_look, spread_columns  # noqa: E402
from tasks.scores import background_region, edge_map, pixel_scores  # noqa: E402
from tasks.select import select_images  # noqa: E402
from tasks.sheets import overview_lines  # noqa: E402

BATCH = 8
EMBEDDING = 768  # CLIP ViT-L/14's projection: openai/clip-vit-large-patch14, the default clip_model
NEW_COLUMNS = ("clip_embedding", "background_palette", "background_lightness", "background_cct",
               "consistency_distance", "embedding_distance", "palette_distance", "lighting_distance",
               "consistency_outlier", "consistency_within")


def photos(size: int, count: int) -> list[Image.Image]:
    """`count` distinct size x size photos: scikit-image's samples, each recoloured and brightened its own way."""
    from skimage import data

    base = [data.coffee(), data.chelsea(), data.astronaut(), data.rocket(), data.immunohistochemistry()]
    rng = np.random.default_rng(0)
    out = []
    for i in range(count):
        image = Image.fromarray(base[i % len(base)]).convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
        gain = rng.uniform(0.6, 1.3, 3)
        out.append(Image.fromarray(np.clip(np.asarray(image) * gain, 0, 255).astype(np.uint8)))
    return out


def product_mask(size: int) -> np.ndarray:
    """An upright ellipse in the middle, a quarter of the canvas: where a product sits."""
    y, x = np.mgrid[:size, :size]
    return ((x - size / 2) / (size * 0.28)) ** 2 + ((y - size / 2) / (size * 0.36)) ** 2 <= 1


def worker_side(images: list[Image.Image], size: int, total: int) -> dict[str, float]:
    """Seconds per 1,000 images of the look, of keeping embeddings, and of the scores already computed."""
    import torch

    mask = product_mask(size)
    start = time.process_time()
    for n in range(0, total, BATCH):
        background = background_region(mask)
        for i in range(n, min(n + BATCH, total)):
            background_look(images[i % len(images)], background)
    look = time.process_time() - start

    embeds = torch.nn.functional.normalize(torch.randn(BATCH, EMBEDDING), dim=-1)
    start = time.process_time()
    for _ in range(0, total, BATCH):
        embeds.cpu().tolist()
    keep = time.process_time() - start

    canvas = images[0]
    control = edge_map(canvas, 100, 200)
    sample = max(BATCH, total // 5)
    start = time.process_time()
    for i in range(sample):
        pixel_scores(images[i % len(images)], product_canvas=canvas, control_edges=control, mask=mask,
                     canny_low=100, canny_high=200)
    scores = (time.process_time() - start) * total / sample
    per = 1000 / total
    return {"look": look * per, "keep": keep * per, "scores": scores * per}


def scored_rows(images: list[Image.Image], size: int, total: int) -> list[dict]:
    """`total` generations rows with scores and looks: 25 products x 2 style sets x cells x seeds."""
    rng = np.random.default_rng(1)
    background = background_region(product_mask(size))
    looks = [background_look(image, background) for image in images]
    axes = rng.normal(size=(2, EMBEDDING))
    rows = []
    for n in range(total):
        product, style = f"product-{n % 25:02d}", ("dusk", "dawn")[(n // 25) % 2]
        embedding = axes[(n // 25) % 2] + rng.normal(0, 0.6, EMBEDDING)
        rows.append({
            "asset_id": f"{n:064x}", "product_id": product, "style_id": style, "cell_index": (n // 50) % 4,
            "cell": [("surface", f"s{(n // 50) % 4}")], "seed": n // 200, "status": "ok", "status_reason": None,
            "background_hash": f"{int(rng.integers(0, 2**63)):016x}",
            "edge_f1": float(rng.uniform(0.2, 0.9)), "clip_text": float(rng.uniform(0.15, 0.35)),
            "sharpness": float(rng.uniform(50, 2000)), "clipped_share": float(rng.uniform(0, 0.2)),
            "clip_embedding": list((embedding / np.linalg.norm(embedding)).astype(np.float32)),
            **looks[n % len(looks)],
        })
    return rows


def gather_side(rows: list[dict]) -> dict[str, float]:
    """Seconds per 1,000 images of selection without and with consistency, the spreads and the overview's lines."""
    per = 1000 / len(rows)
    out = {}
    for name, spec in (("alone", None), ("style_set", {"weight": 1.0}),
                       ("campaign", {"weight": 1.0, "within": "campaign"})):
        selection = Selection(top_k=3, gates=(), weights={"edge_f1": 1.0, "clip_text": 1.0, "sharpness": 0.25},
                              consistency=spec)
        start = time.process_time()
        outcome = select_images(rows, selection)
        out[name] = (time.process_time() - start) * per
    done = [{**r, **o} for r, o in zip(rows, outcome, strict=True)]
    start = time.process_time()
    spread_columns(done)
    overview_lines(done)
    out["spreads"] = (time.process_time() - start) * per
    out["part_bytes"], out["part_bytes_without"] = _part_bytes(done), _part_bytes(
        [{k: v for k, v in r.items() if k not in NEW_COLUMNS} for r in done])
    return out


def _part_bytes(rows: list[dict]) -> float:
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), sink, compression="zstd")
    return len(sink.getvalue()) * 1000 / len(rows)


def report(args: argparse.Namespace, worker: dict[str, float], gather: dict[str, float]) -> str:
    extra_gather = gather["style_set"] + gather["spreads"]  # the whole selection counted: an upper bound
    total = worker["look"] + worker["keep"] + extra_gather
    lines = [
        f"Command: `.venv/bin/python bench/consistency.py --images {args.images} --size {args.size}`  ",
        f"Machine: this 2-core CPU box, shared with other work; {args.images} images of {args.size} px; "
        "figures are CPU seconds per 1,000 images (one thread).",
        "",
        "| where | step | CPU s / 1,000 images |",
        "|---|---|---|",
        f"| worker | each image's look (background palette, lightness, colour temperature) | {worker['look']:.2f} |",
        f"| worker | keeping the CLIP embeddings (768-d, already computed for clip_text/clip_style) | {worker['keep']:.3f} |",
        f"| worker | for scale: the weight-free scores every image already gets (`pixel_scores`) | {worker['scores']:.1f} |",
        f"| gather | selection, each image alone (as before; the looks are still measured) | {gather['alone']:.2f} |",
        f"| gather | selection with `consistency` within the style set | {gather['style_set']:.2f} |",
        f"| gather | selection with `consistency` within the campaign | {gather['campaign']:.2f} |",
        f"| gather | the runs spreads and the overview's lines | {gather['spreads']:.2f} |",
        "",
        f"The generations part: {gather['part_bytes_without'] / 1e3:.0f} kB per 1,000 rows without the consistency "
        f"columns, {gather['part_bytes'] / 1e3:.0f} kB with them (most of it the 768 floats of each embedding; "
        f"a 512 px PNG is about 400 kB).",
        "",
        f"Consistency adds at most **{total:.1f} s per 1,000 images** (look {worker['look']:.1f} s on the workers, "
        f"at most {extra_gather:.1f} s at the gather: all of a selection with consistency, and the spreads). A 512 px SD1.5 image takes 0.1-0.3 s "
        f"on a GPU, 100-300 s per 1,000: consistency is **{100 * total / 300:.1f}-{100 * total / 100:.1f}%** of "
        f"that, and {100 * worker['look'] / worker['scores']:.0f}% of the scoring the worker already does.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()
    images = photos(args.size, 50)
    worker = worker_side(images, args.size, args.images)
    gather = gather_side(scored_rows(images, args.size, args.images))
    text = report(args, worker, gather)
    print(text)
    if args.write_docs:
        from bench.harness import write_section

        write_section(ROOT / "docs" / "benchmarks.md", "consistency", text)


if __name__ == "__main__":
    main()
