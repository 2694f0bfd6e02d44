"""Upscaling with a model: the ControlNet-tile refinement (`tile`) and the SD x4 upscaler (`x4`).

`tile` is the "hires fix" people know from AUTOMATIC1111 and ComfyUI: the image is brought to its
size with Lanczos (tasks/upscale.py), then refined by img2img at a low strength with a tile
ControlNet that is shown the picture itself, tile by tile. Tiles overlap and are blended
(`TileCanvas`), so memory is that of one tile whatever the output size. The noise of the whole
image is drawn once from the seed and each tile takes its own crop of it, so a tile starts from
the same noise a one-pass refinement would have at those pixels: tiled and one-pass results
differ only where a tile's context differs from the whole image's (its edges, and attention).

The refinement shares the loaded engine's components (UNet, VAE, text encoder, IP-Adapter):
only the tile ControlNet is loaded beside them. The IP-Adapter is switched off for it (scale 0,
a neutral image embedding): the picture being refined already carries the style.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from adapters.infra.settings import Settings
from adapters.model.draws import Draw
from adapters.model.engine import Engine, StyleInput, get_engine
from adapters.model.weights import load_tile_controlnet, load_x4_upscaler, upscale_revision
from catalogs import load_profiles
from catalogs.models import Upscale
from tasks.upscale import lanczos_to, refine_in_tiles, tile_grid

log = logging.getLogger(__name__)

LATENT_SCALE = 8  # the VAE's downscale: tiles start and end on this grid
NATIVE_TILE = {"tiny": 128, "sd15": 512, "sdxl": 1024}  # default tile size by size family
SCHEDULER = "UniPCMultistepScheduler"  # deterministic: a tile's pixels depend on its noise only


@dataclass(frozen=True)
class _Refinement:
    """What every tile of one refinement shares: the whole image's noise, the embeddings and the settings."""

    noise: torch.Tensor
    prompt_embeds: tuple
    adapter_embeds: list[torch.Tensor]
    up: Upscale
    cfg: bool


@dataclass
class TileUpscaler:
    """The tile refinement on one loaded engine: its components plus the profile's tile ControlNet."""

    engine: Engine
    pipe: object
    revision: str
    native_tile: int
    _neutral: dict | None = None

    def refine(self, image: Image.Image, size: tuple[int, int], draw: Draw, *, up: Upscale,
               tiled: bool = True) -> Image.Image:
        """`image` at `size` (multiples of 8): Lanczos, then the tile ControlNet's img2img, in tiles or in one pass.

        `draw` is the image's own prompt, negative prompt and seed."""
        if size[0] % LATENT_SCALE or size[1] % LATENT_SCALE:
            raise ValueError(f"tile upscale: size {size[0]}x{size[1]} must be multiples of {LATENT_SCALE}")
        base = lanczos_to(image, size)
        tile = up.tile or self.native_tile
        overlap = up.overlap if up.overlap is not None else tile // 4
        boxes = tile_grid(size[0], size[1], tile, overlap, LATENT_SCALE) if tiled else [(0, 0, *size)]
        cfg = up.guidance > 1.0
        with self.engine.lock, torch.inference_mode():
            adapters = self._adapter_embeds(cfg)
            self.engine.pipe.set_ip_adapter_scale([0.0] * len(adapters))
            # The whole image's noise, once; each tile takes its crop (see the module docstring).
            noise = torch.randn((1, 4, size[1] // LATENT_SCALE, size[0] // LATENT_SCALE),
                                generator=torch.Generator("cpu").manual_seed(int(draw.seed)))
            shared = _Refinement(noise=noise, prompt_embeds=self.engine.prompt_embeds(draw.prompt, draw.negative, cfg),
                                 adapter_embeds=adapters, up=up, cfg=cfg)
            return refine_in_tiles(base, boxes, overlap if tiled else 0, lambda crop, box: self._tile(crop, box, shared))

    def _adapter_embeds(self, cfg: bool) -> list[torch.Tensor]:
        # A neutral (grey) image for every adapter, embedded once; at scale 0 its value does not matter,
        # but an adapter-loaded UNet needs one of the right shape.
        if self._neutral is None or cfg not in self._neutral:
            grey = Image.new("RGB", (64, 64), (128, 128, 128))
            style = StyleInput.from_images([grey], ["neutral-grey-64"])
            self._neutral = {**(self._neutral or {}), cfg: self.engine.adapter_embeds(style, grey, cfg)}
        return self._neutral[cfg]

    def _tile(self, crop: Image.Image, box: Sequence[int], shared: _Refinement) -> Image.Image:
        pipe, up, embeds = self.pipe, shared.up, shared.prompt_embeds
        left, top = box[0] // LATENT_SCALE, box[1] // LATENT_SCALE
        piece = shared.noise[..., top:top + crop.height // LATENT_SCALE, left:left + crop.width // LATENT_SCALE]

        def prepare_latents(image, timestep, _batch_size, _per_prompt, dtype, device, *_generator):
            # In place of the pipeline's own, which it calls positionally (image, timestep, batch size, images
            # per prompt, dtype, device, generator): the latent's mode (no sampling, so no generator) and
            # this tile's crop of the noise.
            image = image.to(device=device, dtype=dtype)
            init = pipe.vae.encode(image).latent_dist.mode() * pipe.vae.config.scaling_factor
            return pipe.scheduler.add_noise(init, piece.to(device=device, dtype=dtype), timestep)

        kwargs = {"prompt_embeds": embeds[0]}
        if shared.cfg:
            kwargs["negative_prompt_embeds"] = embeds[1]
        pipe.prepare_latents = prepare_latents
        try:
            out = pipe(image=crop, control_image=crop, strength=up.strength, num_inference_steps=up.steps,
                       guidance_scale=up.guidance, controlnet_conditioning_scale=up.controlnet_scale,
                       width=crop.width, height=crop.height, ip_adapter_image_embeds=shared.adapter_embeds,
                       output_type="pil", **kwargs)
        finally:
            del pipe.prepare_latents
        return out.images[0]


_UPSCALERS: dict[tuple, object] = {}
_LOCK = threading.Lock()


def tile_upscaler(profile_name: str, settings: Settings) -> TileUpscaler:
    """The process's tile refinement for a profile: its engine (loaded once) and its tile ControlNet."""
    import diffusers

    from tasks.channels import size_family

    key = ("tile", profile_name)
    with _LOCK:
        if key not in _UPSCALERS:
            profile = load_profiles()[profile_name]
            engine = get_engine(profile_name, settings)
            net = load_tile_controlnet(profile, settings, dtype=engine.dtype).to(engine.pipe.device)
            if engine.xl:
                raise ValueError(f"profile {profile_name!r}: the tile upscale runs on SD1.5-shaped profiles; "
                                 "use method lanczos for SDXL")
            pipe = diffusers.StableDiffusionControlNetImg2ImgPipeline.from_pipe(engine.pipe, controlnet=net,
                                                                                dtype=engine.dtype)
            pipe.scheduler = getattr(diffusers, SCHEDULER).from_config(engine.pipe.scheduler.config)
            pipe.set_progress_bar_config(disable=True)
            _UPSCALERS[key] = TileUpscaler(engine=engine, pipe=pipe, revision=upscale_revision(profile, settings, "tile_controlnet"),
                                           native_tile=NATIVE_TILE[size_family(profile)])
        return _UPSCALERS[key]  # type: ignore[return-value]


@dataclass
class X4Upscaler:
    """The SD x4 upscaler pipeline of a profile (`upscaler:`): 4x the input, then Lanczos to the exact size."""

    pipe: object
    revision: str
    lock: threading.Lock

    def refine(self, image: Image.Image, size: tuple[int, int], draw: Draw, *, up: Upscale) -> Image.Image:
        """`image` at `size`: a quarter of it upscaled 4x with `draw`'s prompt, negative prompt and seed."""
        quarter = lanczos_to(image, (max(8, size[0] // 4), max(8, size[1] // 4)))
        with self.lock, torch.inference_mode():
            out = self.pipe(prompt=draw.prompt, negative_prompt=draw.negative or None, image=quarter,
                            num_inference_steps=up.steps, guidance_scale=up.guidance,
                            generator=torch.Generator("cpu").manual_seed(int(draw.seed))).images[0]
        return lanczos_to(out, size)


def x4_upscaler(profile_name: str, settings: Settings) -> X4Upscaler:
    """The process's x4 upscaler for a profile, loaded on first use, on the engine's device and dtype."""
    from adapters.model.engine import resolve_device, resolve_dtype

    key = ("x4", profile_name)
    with _LOCK:
        if key not in _UPSCALERS:
            profile = load_profiles()[profile_name]
            device = resolve_device(settings.device)
            pipe = load_x4_upscaler(profile, settings, device=device, dtype=resolve_dtype(settings.dtype, device))
            _UPSCALERS[key] = X4Upscaler(pipe=pipe, revision=upscale_revision(profile, settings, "upscaler"),
                                         lock=threading.Lock())
        return _UPSCALERS[key]  # type: ignore[return-value]
