"""Images per second of the batched engine against a plain loop of diffusers calls, side by side.

The loop is what a script without the engine does: one `pipe(...)` call per image, with the
prompt text and the reference images, so each call encodes them again. Both sides make the
same images (same prompts, seeds, scheduler, padded references); the run fails if any pixel
differs by more than 1/255.

    .venv/bin/python bench/engine.py               # tiny kit on this machine; writes docs/benchmarks.md
    .venv/bin/python bench/engine.py --full-size   # SD1.5's full architecture, random weights (for a GPU)
"""

from __future__ import annotations

import argparse
import platform
import tempfile
from pathlib import Path

import torch
from harness import (
    ROOT,
    Side,
    full_size_engine,
    references,
    run_engine,
    run_loop,
    workload,
    write_section,
)

from adapters.infra.settings import Settings
from adapters.model.engine import Engine, StyleInput, get_engine, resolve_device
from adapters.model.weights import library_versions
from tasks.canny import canvas_images
from tests.helpers import pixel_diffs, product

# --------------------------------------------------------------------------- report


def report(args: argparse.Namespace, engine: Engine, params: dict, sides: list[Side], diff: int) -> str:
    loop = sides[-1]
    device = str(engine.pipe.device)
    if device.startswith("cuda"):
        device += f" ({torch.cuda.get_device_name()})"
    versions = library_versions()
    lines = [
        f"Command: `.venv/bin/python bench/engine.py{' --full-size' if args.full_size else ''} --images {args.images} "
        f"--batch {' '.join(str(b) for b in args.batch)} --repeat {args.repeat}"
        f"{f' --steps {args.steps}' if args.steps else ''}{f' --size {args.size}' if args.size else ''}`  ",
        f"Model: {'SD1.5 architecture, random weights' if args.full_size else 'tiny kit (random weights)'}, "
        f"IP-Adapter (3 references) + canny ControlNet, {params['width']} px, {params['steps']} steps, "
        f"UniPC, guidance {params['guidance']}, {engine.dtype_name} on {device}  ",
        f"Machine: {platform.machine()}, {torch.get_num_threads()} torch threads; torch {versions['torch']}, "
        f"diffusers {versions['diffusers']}  ",
        f"Same outputs: largest pixel difference between the two sides {diff}/255 over {len(loop.images)} images.  ",
        f"Timing: best of {args.repeat} rounds per side, the sides alternating within each round.",
        "",
        "| side | images | seconds | images/s | vs plain loop |",
        "|---|---|---|---|---|",
    ]
    for side in sides:
        lines.append(f"| {side.name} | {len(side.images)} | {side.seconds:.2f} | {side.rate:.2f} | {side.rate / loop.rate:.2f}x |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full-size", action="store_true", help="SD1.5's full architecture with random weights")
    parser.add_argument("--images", type=int, default=None, help="images per side (default 32 tiny, 16 full size)")
    parser.add_argument("--batch", type=int, nargs="+", default=None, help="engine batch sizes (default 1 and 8)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds, sides alternating; each side's best round counts")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--size", type=int, default=None)
    parser.add_argument("--doc", type=Path, default=ROOT / "docs" / "benchmarks.md", help="where to write the result")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    args.images = args.images or (16 if args.full_size else 32)
    batches = args.batch = args.batch or [1, 8, 16]
    size, steps = args.size or (512 if args.full_size else 128), args.steps or (30 if args.full_size else 4)
    params = {"width": size, "height": size, "steps": steps, "scheduler": "unipc", "guidance": 5.0,
              "ip_scale": 0.6, "controlnet_scale": 1.0, "canny_low": 100, "canny_high": 200}

    if args.full_size:
        device = resolve_device("auto")
        engine = full_size_engine(device, torch.float32 if device == "cpu" else torch.float16)
    else:
        with tempfile.TemporaryDirectory() as cache:
            engine = get_engine("tiny", Settings(model_cache=Path(cache), device="cpu", dtype="float32"))
    refs = references()
    style = StyleInput.from_images(refs, ["r1", "r2", "r3"])
    control = canvas_images(product(size), None, params, ["canny"])
    jobs = workload(args.images)

    # Warm up both paths (first-call allocations, lazy imports) before anything is timed.
    run_engine(engine, params, control, style, jobs[:2], 2)
    run_loop(engine, params, control, refs, jobs[:1])
    # Rounds alternate the sides, and each side keeps its fastest round: a neighbour's load that
    # slows one round does not decide the ratio.
    rounds = []
    for _ in range(args.repeat):
        rounds.append([run_engine(engine, params, control, style, jobs, b) for b in batches] +
                      [run_loop(engine, params, control, refs, jobs)])
    sides = [min(attempts, key=lambda side: side.seconds) for attempts in zip(*rounds, strict=True)]
    diff = max(pixel_diffs(s.images, sides[-1].images)[0] for s in sides[:-1])
    text = report(args, engine, params, sides, diff)
    print(text)
    if diff > 1:
        raise SystemExit(f"outputs differ by {diff}/255: the two sides did not make the same images")
    if not args.no_write:
        write_section(args.doc, "full" if args.full_size else "tiny", text)
        print(f"\nwritten to {args.doc}")


if __name__ == "__main__":
    main()
