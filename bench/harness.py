"""What the benchmarks share: the workload, the two ways of running it, and full-size models.

The workload is one campaign batch's worth of jobs: one product's canny map, one style set of
three references, the prompt matrix's cells times seeds. The engine runs it in batches; the
plain loop calls the diffusers pipeline once per image with the prompt text and the reference
images, as a script without the engine does. Full-size models are built from the published
configurations with random weights: speed does not depend on weight values.
"""

from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from adapters.model.draws import Draw  # noqa: E402
from adapters.model.engine import Engine, EngineOptions, StyleInput  # noqa: E402
from tests.helpers import noise_references, plain_pipeline_images  # noqa: E402

PROMPTS = [f"a product photo of a red kettle on {s}, {light}" for s in ("marble", "sand") for light in ("dawn", "dusk")]
NEGATIVE = "blurry, low quality"


@dataclass
class Side:
    name: str
    seconds: float
    images: list[Image.Image]
    peak_bytes: int | None = None
    extra: dict = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return len(self.images) / self.seconds


def workload(n_images: int) -> list[tuple[str, int]]:
    """(prompt, seed) pairs: the prompt matrix's cells times seeds, as a campaign batch holds them."""
    seeds_per_prompt = max(1, -(-n_images // len(PROMPTS)))
    return [(p, 1000 + s) for p in PROMPTS for s in range(seeds_per_prompt)][:n_images]


def references() -> list[Image.Image]:
    """The workload's style set: three noise references, one wide, one square, one tall."""
    return noise_references(0, ((96, 64), (64, 64), (64, 96)))


def sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def run_engine(engine: Engine, params: dict, control: dict, style: StyleInput, jobs, batch: int) -> Side:
    images: list[Image.Image] = []
    sync(engine.device_name)
    start = time.perf_counter()
    for i in range(0, len(jobs), batch):
        chunk = jobs[i : i + batch]
        images += engine.generate(canvases=control, style=style, params=params,
                                  draws=[Draw(p, NEGATIVE, s) for p, s in chunk])
    sync(engine.device_name)
    return Side(f"engine, batch {batch}", time.perf_counter() - start, images)


def run_loop(engine: Engine, params: dict, control: dict, refs: list[Image.Image], jobs) -> Side:
    """One `pipe(...)` call per image, text and references passed every time: no engine caches."""
    sync(engine.device_name)
    start = time.perf_counter()
    images = plain_pipeline_images(engine.pipe, control["canny"], refs, jobs, params, NEGATIVE)
    sync(engine.device_name)
    return Side("plain loop, 1 image per call", time.perf_counter() - start, images)


def write_section(doc: Path, key: str, body: str) -> None:
    """Replace (or append) the `<!-- bench:key -->` block of `doc` with `body`."""
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    start, end = f"<!-- bench:{key} -->", f"<!-- /bench:{key} -->"
    block = f"{start}\n{body}\n{end}"
    if start in text:
        text = re.sub(re.escape(start) + r".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    doc.write_text(text)


# --------------------------------------------------------------------------- full-size models, random weights


def _ip_adapter(pipe, image_embed_dim: int) -> None:
    from adapters.model.kit import ip_adapter_state

    flat = ip_adapter_state(pipe.unet, seed=0, image_embed_dim=image_embed_dim)
    nested: dict[str, dict] = {"image_proj": {}, "ip_adapter": {}}
    for key, value in flat.items():
        head, _, rest = key.partition(".")
        nested[head][rest] = value
    pipe.load_ip_adapter(nested, subfolder="", weight_name="")


def _clip_text(hidden: int, layers: int, heads: int, projection: int, act: str, with_projection: bool = False):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                            num_attention_heads=heads, max_position_embeddings=77, projection_dim=projection,
                            hidden_act=act)
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config)


def _clip_vision(hidden: int, intermediate: int, layers: int, heads: int, projection: int):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    return CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers, num_attention_heads=heads,
        image_size=224, patch_size=14, projection_dim=projection, hidden_act="gelu"))


def _vae(scaling_factor: float, sample_size: int, force_upcast: bool):
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                         down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                         sample_size=sample_size, scaling_factor=scaling_factor, force_upcast=force_upcast)


def full_size_engine(device: str, dtype: torch.dtype, pipeline: str = "sd15") -> Engine:
    """SD1.5 or SDXL at full size (published configurations), random weights, IP-Adapter + canny ControlNet.

    sd15: UNet (859M), VAE, CLIP ViT-L text encoder, ViT-H image encoder (h94's SD1.5 adapter),
    ControlNet copied from the UNet (control_v11p_sd15_canny's shape). sdxl: UNet (2.6B), VAE
    (force_upcast as shipped), CLIP ViT-L + OpenCLIP bigG text encoders, ViT-bigG image encoder
    (h94's ip-adapter_sdxl), a full ControlNet copied from the UNet (controlnet-canny-sdxl-1.0's shape).
    """
    from transformers import CLIPImageProcessor

    from adapters.model.kit import build_tokenizer, sd15_scheduler

    if pipeline not in ("sd15", "sdxl"):
        raise ValueError(f"unknown pipeline {pipeline!r}; expected sd15 or sdxl")
    import diffusers

    torch.manual_seed(0)
    tokenizer = build_tokenizer()[0]
    processor = CLIPImageProcessor(size=224, crop_size=224)
    with torch.device(device):  # initialise on the device: billions of random weights build fast there
        if pipeline == "sd15":
            unet = diffusers.UNet2DConditionModel(cross_attention_dim=768, attention_head_dim=8, sample_size=64)
            controlnet = diffusers.ControlNetModel.from_unet(unet)
            pipe = diffusers.StableDiffusionControlNetPipeline(
                vae=_vae(0.18215, 512, False), text_encoder=_clip_text(768, 12, 12, 768, "quick_gelu"),
                tokenizer=tokenizer, unet=unet, controlnet=controlnet, scheduler=sd15_scheduler(), safety_checker=None,
                feature_extractor=processor, image_encoder=_clip_vision(1280, 5120, 32, 16, 1024),
                requires_safety_checker=False)
            embed_dim = 1024
        else:
            unet = diffusers.UNet2DConditionModel(
                sample_size=128, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                block_out_channels=(320, 640, 1280), layers_per_block=2, transformer_layers_per_block=(1, 2, 10),
                attention_head_dim=(5, 10, 20), cross_attention_dim=2048, use_linear_projection=True,
                addition_embed_type="text_time", addition_time_embed_dim=256,
                projection_class_embeddings_input_dim=2816)
            controlnet = diffusers.ControlNetModel.from_unet(unet)
            pipe = diffusers.StableDiffusionXLControlNetPipeline(
                vae=_vae(0.13025, 1024, True), text_encoder=_clip_text(768, 12, 12, 768, "quick_gelu"),
                text_encoder_2=_clip_text(1280, 32, 20, 1280, "gelu", with_projection=True),
                tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet, controlnet=controlnet,
                scheduler=diffusers.EulerDiscreteScheduler(
                    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                    steps_offset=1, timestep_spacing="leading"),
                feature_extractor=processor, image_encoder=_clip_vision(1664, 8192, 48, 16, 1280),
                force_zeros_for_empty_prompt=True, add_watermarker=False)
            embed_dim = 1280
    _ip_adapter(pipe, embed_dim)
    pipe.to(device, dtype)
    pipe.set_progress_bar_config(disable=True)
    engine = Engine(pipe, profile=f"{pipeline}-architecture-random", revision="random", dtype=dtype)
    engine.set_options(EngineOptions.defaults(device))
    return engine
