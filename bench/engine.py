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
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adapters.engine import Engine, StyleInput, get_engine, resolve_device  # noqa: E402
from adapters.models import library_versions  # noqa: E402
from adapters.settings import Settings  # noqa: E402
from tasks.canny import canvas_images, pad_to_square  # noqa: E402

PROMPTS = [f"a product photo of a red kettle on {s}, {light}" for s in ("marble", "sand") for light in ("dawn", "dusk")]
NEGATIVE = "blurry, low quality"


@dataclass
class Side:
    name: str
    seconds: float
    images: list[Image.Image]

    @property
    def rate(self) -> float:
        return len(self.images) / self.seconds


def workload(n_images: int) -> list[tuple[str, int]]:
    """(prompt, seed) pairs: the prompt matrix's cells times seeds, as a campaign batch holds them."""
    seeds_per_prompt = max(1, n_images // len(PROMPTS))
    return [(p, 1000 + s) for p in PROMPTS for s in range(seeds_per_prompt)][:n_images]


def product(size: int) -> Image.Image:
    img = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    ImageDraw.Draw(img).ellipse((size // 5, size // 5, size - size // 5, size - size // 5), fill=(200, 40, 40, 255))
    return img


def references() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for w, h in ((96, 64), (64, 64), (64, 96))]


def run_engine(engine: Engine, params: dict, control: dict, style: StyleInput, jobs, batch: int) -> Side:
    images: list[Image.Image] = []
    start = time.perf_counter()
    for i in range(0, len(jobs), batch):
        chunk = jobs[i : i + batch]
        images += engine.generate(canvases=control, style=style, prompts=[p for p, _ in chunk],
                                  negatives=[NEGATIVE] * len(chunk), seeds=[s for _, s in chunk], params=params)
    _sync(engine)
    return Side(f"engine, batch {batch}", time.perf_counter() - start, images)


def run_loop(engine: Engine, params: dict, control: dict, refs: list[Image.Image], jobs) -> Side:
    import diffusers

    pipe = engine.pipe
    pipe.scheduler = diffusers.UniPCMultistepScheduler.from_config(pipe.scheduler.config)
    pipe.set_ip_adapter_scale(params["ip_scale"])
    padded = [pad_to_square(r) for r in refs]
    images = []
    start = time.perf_counter()
    for prompt, seed in jobs:
        out = pipe(prompt, negative_prompt=NEGATIVE, image=control["canny"], ip_adapter_image=[padded],
                   num_inference_steps=params["steps"], guidance_scale=params["guidance"],
                   controlnet_conditioning_scale=params["controlnet_scale"], width=params["width"],
                   height=params["height"], generator=[torch.Generator("cpu").manual_seed(seed)])
        images.append(out.images[0])
    _sync(engine)
    return Side("plain loop, 1 image per call", time.perf_counter() - start, images)


def _sync(engine: Engine) -> None:
    if str(engine.device).startswith("cuda"):
        torch.cuda.synchronize()


def max_diff(a: list[Image.Image], b: list[Image.Image]) -> int:
    return max(int(np.abs(np.asarray(x, np.int16) - np.asarray(y, np.int16)).max()) for x, y in zip(a, b, strict=True))


# --------------------------------------------------------------------------- full-size SD1.5, random weights


def full_size_engine(device: str, dtype: torch.dtype) -> Engine:
    """SD1.5's architecture (UNet, VAE, CLIP ViT-L text, ViT-H image encoder, ControlNet, IP-Adapter) from config."""
    from diffusers import AutoencoderKL, ControlNetModel, StableDiffusionControlNetPipeline, UNet2DConditionModel
    from transformers import (
        CLIPImageProcessor,
        CLIPTextConfig,
        CLIPTextModel,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    from adapters.kit import _build_tokenizer, _scheduler, ip_adapter_state

    torch.manual_seed(0)
    with torch.device(device):  # initialise on the device: 2 GB of random weights build fast there
        unet = UNet2DConditionModel(cross_attention_dim=768, attention_head_dim=8, sample_size=64)
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                            sample_size=512)
        text = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                            num_attention_heads=12, max_position_embeddings=77, projection_dim=768,
                                            hidden_act="quick_gelu"))
        image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
            hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16, image_size=224,
            patch_size=14, projection_dim=1024, hidden_act="gelu"))
        controlnet = ControlNetModel.from_unet(unet)
    pipe = StableDiffusionControlNetPipeline(
        vae=vae, text_encoder=text, tokenizer=_build_tokenizer()[0], unet=unet, controlnet=controlnet,
        scheduler=_scheduler(), safety_checker=None, feature_extractor=CLIPImageProcessor(size=224, crop_size=224),
        image_encoder=image_encoder, requires_safety_checker=False,
    )
    flat = ip_adapter_state(unet, seed=0, image_embed_dim=1024)
    nested: dict[str, dict] = {"image_proj": {}, "ip_adapter": {}}
    for key, value in flat.items():
        head, _, rest = key.partition(".")
        nested[head][rest] = value
    pipe.load_ip_adapter(nested, subfolder="", weight_name="")
    pipe.to(device, dtype)
    if device.startswith("cuda"):
        for module in (pipe.unet, pipe.controlnet, pipe.vae):
            module.to(memory_format=torch.channels_last)
    pipe.set_progress_bar_config(disable=True)
    return Engine(pipe, profile="sd15-architecture-random", revision="random", device=device, dtype=dtype,
                  versions=library_versions())


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


def write_section(doc: Path, key: str, body: str) -> None:
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    start, end = f"<!-- bench:{key} -->", f"<!-- /bench:{key} -->"
    block = f"{start}\n{body}\n{end}"
    if start in text:
        text = re.sub(re.escape(start) + r".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    doc.write_text(text)


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
    diff = max(max_diff(s.images, sides[-1].images) for s in sides[:-1])
    text = report(args, engine, params, sides, diff)
    print(text)
    if diff > 1:
        raise SystemExit(f"outputs differ by {diff}/255: the two sides did not make the same images")
    if not args.no_write:
        write_section(args.doc, "full" if args.full_size else "tiny", text)
        print(f"\nwritten to {args.doc}")


if __name__ == "__main__":
    main()
