"""The upscale stage per image: time and peak memory of the tile refinement at 2048 px, in tiles and in
one pass, on this machine with the tiny kit; and the FLOPs of SD1.5 with the real tile ControlNet's
architecture at 2048 px, counted by torch on the meta device (no weights, no memory), so a GPU budget
can be planned.

Each measured side runs in its own process (peak memory is that process's maximum resident set) under
an address-space limit, so a one-pass refinement that does not fit fails alone, never the machine.

    .venv/bin/python bench/upscale.py                     # tiny kit, 256 px -> 2048 px; writes docs/benchmarks.md
    .venv/bin/python bench/upscale.py --side tiled        # one side only (what each subprocess runs)
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import ROOT, write_section

LONG_SIDE = 2048
SOURCE = 256
TILE, OVERLAP = 512, 128  # SD1.5's native tile and a quarter of it: what the sd15 profile runs
STRENGTH, STEPS = 0.3, 20
MEMORY_LIMIT_GB = 8  # per measured process: well under this machine's 23 GiB, shared with others
SIDE_TIMEOUT = 1200  # seconds a side may run before it is stopped and reported as not finished


def run_side(side: str, cache: Path) -> dict:
    """One side of the measure in this process: the tiny kit's tile refinement, tiled or in one pass."""
    import torch

    from adapters.infra.settings import Settings
    from adapters.model.draws import Draw
    from adapters.model.upscale import tile_upscaler
    from catalogs.models import Upscale
    from tests.helpers import photo

    torch.set_num_threads(2)
    settings = Settings(model_cache=cache, device="cpu", dtype="float32")
    upscaler = tile_upscaler("tiny", settings)
    source = photo("coffee").resize((SOURCE, SOURCE))
    up = Upscale(long_side=LONG_SIDE, method="tile", strength=STRENGTH, steps=STEPS, tile=TILE, overlap=OVERLAP)
    start = time.perf_counter()
    image = upscaler.refine(source, (LONG_SIDE, LONG_SIDE), Draw("a product photo", "", 1), up=up,
                            tiled=side == "tiled")
    seconds = time.perf_counter() - start
    return {"side": side, "seconds": seconds, "size": list(image.size),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def measure(side: str, cache: Path) -> dict:
    """`run_side` in a subprocess under the memory limit; what it printed, or why it failed."""
    limit = MEMORY_LIMIT_GB * 2**30

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    cmd = [sys.executable, __file__, "--side", side, "--cache", str(cache)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=cap, cwd=ROOT, timeout=SIDE_TIMEOUT)
    except subprocess.TimeoutExpired:
        return {"side": side, "error": f"not finished in {SIDE_TIMEOUT // 60} minutes (stopped)"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"side": side, "error": f"exit {done.returncode}: {tail[:200]}"}
    return json.loads(lines[-1])


def flops_sd15_tile(size: int, tile: int, overlap: int) -> dict:
    """FLOPs of one image's tile refinement with SD1.5 + a tile ControlNet (control_v11f1e_sd15_tile has the
    canny ControlNet's shape): per denoising step with CFG (batch 2), VAE encode and decode, in tiles and in one pass."""
    import diffusers
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from tasks.upscale import tile_grid

    with torch.device("meta"):
        unet = diffusers.UNet2DConditionModel(cross_attention_dim=768, attention_head_dim=8, sample_size=64)
        controlnet = diffusers.ControlNetModel.from_unet(unet)
        vae = diffusers.AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                                      down_block_types=("DownEncoderBlock2D",) * 4,
                                      up_block_types=("UpDecoderBlock2D",) * 4)

    def count(fn) -> float:
        with FlopCounterMode(display=False) as counter, torch.inference_mode():
            fn()
        return float(counter.get_total_flops())

    def one_region(px: int) -> dict:
        latent = torch.empty(2, 4, px // 8, px // 8, device="meta")
        text = torch.empty(2, 77, 768, device="meta")
        cond = torch.empty(2, 3, px, px, device="meta")
        t = torch.tensor([500, 500], device="meta")

        def step() -> None:
            down, mid = controlnet(latent, t, encoder_hidden_states=text, controlnet_cond=cond, return_dict=False)
            unet(latent, t, encoder_hidden_states=text, down_block_additional_residuals=down,
                 mid_block_additional_residual=mid)

        image = torch.empty(1, 3, px, px, device="meta")
        return {"step": count(step), "encode": count(lambda: vae.encode(image)),
                "decode": count(lambda: vae.decode(latent[:1]))}

    steps_run = int(STEPS * STRENGTH)
    per_tile = one_region(tile)
    tiles = len(tile_grid(size, size, tile, overlap))
    tiled = tiles * (steps_run * per_tile["step"] + per_tile["encode"] + per_tile["decode"])
    whole = one_region(size)
    one_pass = steps_run * whole["step"] + whole["encode"] + whole["decode"]
    return {"tiles": tiles, "steps_run": steps_run, "tile_step": per_tile["step"], "tiled": tiled,
            "one_pass": one_pass, "one_pass_step": whole["step"]}


def report(sides: list[dict], flops: dict) -> str:
    def row(r: dict) -> str:
        if "error" in r:
            return f"| {r['side']} | did not finish: {r['error']} | |"
        return f"| {r['side']} | {r['seconds']:.1f} | {r['peak_rss_mb']:,.0f} |"

    tflop = 1e12
    return "\n".join([
        "## Upscale to 2048 px (`bench/upscale.py`)",
        "",
        f"`.venv/bin/python bench/upscale.py` on {platform.machine()} CPU ({platform.processor() or 'unknown'}), "
        "shared with other work: the tiny kit's tile refinement (Lanczos, then img2img with the kit's random tile "
        f"ControlNet at strength {STRENGTH}, {STEPS} steps, so {flops['steps_run']} run, UniPC, guidance 5) of one "
        f"{SOURCE} px image to {LONG_SIDE}x{LONG_SIDE}, in {TILE} px tiles overlapping {OVERLAP} px "
        f"({flops['tiles']} tiles) and in one pass. Each side in its own process under a {MEMORY_LIMIT_GB} GiB "
        "address-space limit; peak memory is the process's maximum resident set (the kit, torch and the pass).",
        "",
        "| side | seconds per image | peak memory (MiB) |",
        "|---|---|---|",
        *[row(r) for r in sides],
        "",
        f"FLOPs per {LONG_SIDE} px image for SD1.5 with the real tile ControlNet (control_v11f1e_sd15_tile has "
        "SD1.5's ControlNet shape), counted by `torch.utils.flop_counter` on the meta device: UNet + ControlNet "
        f"with classifier-free guidance (batch 2) per step, {flops['steps_run']} steps, VAE encode and decode "
        "(the text encoder, run once, is left out):",
        "",
        "| pass | FLOPs per step | FLOPs per image |",
        "|---|---|---|",
        f"| {flops['tiles']} tiles of {TILE} px | {flops['tile_step'] / tflop:.2f} T per tile | "
        f"{flops['tiled'] / tflop:.1f} T |",
        f"| one pass at {LONG_SIDE} px | {flops['one_pass_step'] / tflop:.1f} T | {flops['one_pass'] / tflop:.1f} T |",
        "",
        f"At an achieved 200 TFLOP/s (about a fifth of an H100 SXM's 989 TFLOP/s dense bf16 peak; measure it with "
        f"bench/gpu.py before planning), the tiled image is about {flops['tiled'] / (200 * tflop):.1f} s of GPU time "
        f"and one pass {flops['one_pass'] / (200 * tflop):.1f} s: one pass costs "
        f"{flops['one_pass'] / flops['tiled']:.1f}x the FLOPs (attention grows with the square of the pixels) and "
        "holds 16 times a tile's activations at once.",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--side", choices=("tiled", "one-pass"))
    parser.add_argument("--cache", type=Path)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if args.side:
        print(json.dumps(run_side(args.side, args.cache)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "models"
        from adapters.model.kit import ensure_tiny_kit

        ensure_tiny_kit(cache)
        sides = [measure("tiled", cache), measure("one-pass", cache)]
    flops = flops_sd15_tile(LONG_SIDE, TILE, OVERLAP)
    body = report(sides, flops)
    print(body)
    if not args.no_write:
        write_section(ROOT / "docs" / "benchmarks.md", "upscale", body)


if __name__ == "__main__":
    main()
