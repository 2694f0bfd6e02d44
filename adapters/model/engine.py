"""The diffusion engine: IP-Adapter + ControlNet on a diffusers pipeline (SD1.5 or SDXL), batched.

One call = one product's canvas images x one style set's image embeddings x many prompts and
seeds. Image embeddings are computed once per style set (and per product for an adapter fed
the product photo), prompt embeddings once per prompt; the pipeline is loaded once per
process (`get_engine`). The img2img and inpainting pipelines of the other modes are built
from the same components with `from_pipe`, so they cost no extra memory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from PIL import Image, ImageOps

from adapters.infra.settings import Settings
from adapters.model.draws import Draw, checked_draws
from tasks.canny import canvas_kinds, cover_canvas, pad_to_square

if TYPE_CHECKING:  # torch is imported where a model runs: importing this module (and the flows) loads none
    import torch

log = logging.getLogger(__name__)

SCHEDULERS = {
    "unipc": "UniPCMultistepScheduler",
    "ddim": "DDIMScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "dpmpp_2m": "DPMSolverMultistepScheduler",
}
# Pipelines of the other modes, by (SDXL?, mode), built from the text-to-image pipeline's components.
DERIVED_PIPELINES = {
    (False, "img2img"): "StableDiffusionControlNetImg2ImgPipeline",
    (False, "preserve"): "StableDiffusionControlNetInpaintPipeline",
    (True, "img2img"): "StableDiffusionXLControlNetImg2ImgPipeline",
    (True, "preserve"): "StableDiffusionXLControlNetInpaintPipeline",
}
PROMPT_CACHE_SIZE = 4096
# What a caller may leave out of `params` (a campaign's planned jobs always carry all of them).
PARAM_DEFAULTS: dict[str, Any] = {
    "mode": "ip_adapter", "strength": 1.0, "ip_preset": "full", "ip_start": 0.0, "ip_end": 1.0,
    "controlnet_start": 0.0, "controlnet_end": 1.0,
}


@dataclass(frozen=True)
class StyleInput:
    """A style set's reference images and how they combine, keyed by content so embeddings are reused."""

    key: str
    images: tuple[Image.Image, ...]
    weights: tuple[float, ...]
    combine: str = "concat"
    negative: Image.Image | None = None

    @classmethod
    def from_images(
        cls,
        images: Sequence[Image.Image],
        shas: Sequence[str],
        *,
        weights: Sequence[float] | None = None,
        combine: str = "concat",
        negative: Image.Image | None = None,
        negative_sha: str = "",
    ) -> StyleInput:
        if combine not in ("concat", "average", "weighted"):
            raise ValueError(f"unknown combine rule {combine!r}; expected concat, average or weighted")
        weights = tuple(float(w) for w in (weights or [1.0] * len(images)))
        if not images or len(weights) != len(images) or len(shas) != len(images):
            raise ValueError(f"a style needs one sha256 and one weight per image: {len(images)} images, "
                             f"{len(shas)} sha256s, {len(weights)} weights")
        if negative is not None and not negative_sha:
            raise ValueError("a negative reference needs its sha256 (it keys the embedding cache)")
        payload = {"shas": list(shas), "weights": list(weights), "combine": combine, "negative": negative_sha}
        key = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
        return cls(key=key, images=tuple(images), weights=weights, combine=combine, negative=negative)


def resolve_device(setting: str) -> str:
    """`auto` picks CUDA, then MPS, then CPU."""
    import torch
    if setting != "auto":
        return setting
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def resolve_dtype(setting: str, device: str) -> torch.dtype:
    """`auto` is float16 on an accelerator and float32 on the CPU (half precision is slow there)."""
    import torch
    if setting != "auto":
        return getattr(torch, setting)
    return torch.float32 if device == "cpu" else torch.float16


def ip_block_scales(preset: str, scale: float, unet_config: Mapping[str, Any], xl: bool) -> float | dict:
    """The per-block IP-Adapter scales of a preset, in the form `set_ip_adapter_scale` takes.

    SDXL: InstantStyle's blocks (up_blocks.0.attentions.1 carries style, down_blocks.2.attentions.1
    layout). SD1.5-shaped UNets: the "style transfer" and "composition" layers of ComfyUI's
    IPAdapter_plus, which InstantStyle's co-author mapped for SD1.5: style is every cross-attention
    down block but the deepest, the deepest up block's last attention and every other up block;
    layout is the deepest cross-attention down block (its last attention full, the others at 1/4).
    """
    if preset == "full":
        return scale
    if xl:
        if preset == "style-only":
            return {"up": {"block_0": [0.0, scale, 0.0]}}
        return {"down": {"block_2": [0.0, scale]}}
    down = [i for i, t in enumerate(unet_config["down_block_types"]) if "CrossAttn" in t]
    up = [i for i, t in enumerate(unet_config["up_block_types"]) if "CrossAttn" in t]
    per_down = int(unet_config["layers_per_block"])
    if preset == "style-only":
        return {
            "down": {f"block_{i}": scale for i in down[:-1]},
            "up": {f"block_{i}": [0.0] * per_down + [scale] if i == up[0] else scale for i in up},
        }
    if preset == "layout-only":
        return {"down": {f"block_{down[-1]}": [0.25 * scale] * (per_down - 1) + [scale]}}
    raise ValueError(f"unknown IP-Adapter preset {preset!r}; expected full, style-only or layout-only")


def window_active(step: int, steps: int, start: float, end: float) -> bool:
    """Whether step `step` of `steps` lies in the [start, end] window: diffusers' ControlNet rule."""
    return not (step / steps < start or (step + 1) / steps > end)


@dataclass(frozen=True)
class EngineOptions:
    """The engine's speed switches. None changes an image beyond float rounding.

    `defaults(device)` is what `get_engine` applies: on CUDA scaled-dot-product attention (flash
    or memory-efficient kernels), channels-last convolutions and fused QKV projections; elsewhere
    SDPA only. torch.compile (and CUDA graphs, its "reduce-overhead" mode) stays off by default:
    it costs minutes of compilation per batch shape and process, and its worth has yet to be
    measured here (bench/gpu.py). `cache_embeddings` keeps prompt and reference embeddings
    between calls.
    """

    sdpa: bool = True
    channels_last: bool = True
    fuse_qkv: bool = True
    compile: bool = False
    cuda_graphs: bool = False
    cache_embeddings: bool = True

    @classmethod
    def defaults(cls, device: str) -> EngineOptions:
        if str(device).startswith("cuda"):
            return cls()
        # On a CPU channels-last and fused projections buy little and move pixels by float rounding.
        return cls(channels_last=False, fuse_qkv=False)


def apply_options(pipe, options: EngineOptions) -> EngineOptions:
    """Switch the pipeline's UNet, ControlNet(s) and VAE to `options`; return the options in effect.

    Reversible, so one loaded pipeline can be measured with each switch off in turn. Fused QKV
    needs SDPA; compile and CUDA graphs need CUDA (CUDA graphs imply compile). Attention
    processors are swapped one by one, so IP-Adapter's keep their weights and scales: diffusers'
    `fuse_qkv_projections` puts one plain fused processor on every layer, which silently drops
    the adapter.
    """
    import torch
    cuda = str(pipe.device).startswith("cuda")
    compiled = cuda and (options.compile or options.cuda_graphs)
    effective = replace(options, fuse_qkv=options.fuse_qkv and options.sdpa, compile=compiled,
                        cuda_graphs=compiled and options.cuda_graphs)
    denoisers = [pipe.unet, *getattr(pipe.controlnet, "nets", [pipe.controlnet])]
    memory_format = torch.channels_last if effective.channels_last else torch.contiguous_format
    for model in [*denoisers, pipe.vae]:
        _set_attention(model, effective.sdpa, effective.fuse_qkv)
        model.to(memory_format=memory_format)
    for model in denoisers:  # the VAE runs once per image: not worth minutes of compilation
        model._compiled_call_impl = None  # what nn.Module.compile sets; None is the eager forward
        if effective.compile:
            model.compile(mode="reduce-overhead" if effective.cuda_graphs else None)
    return effective


def _set_attention(model, sdpa: bool, fuse: bool) -> None:
    """Give every attention layer of `model` the kernel asked for, keeping IP-Adapter's layers adapters."""
    from diffusers.models.attention_processor import (
        Attention,
        AttnProcessor,
        AttnProcessor2_0,
        FusedAttnProcessor2_0,
        IPAdapterAttnProcessor,
        IPAdapterAttnProcessor2_0,
    )

    layers = {name: module for name, module in model.named_modules() if isinstance(module, Attention)}
    processors = {}
    for name, proc in model.attn_processors.items():
        attn = layers[name.removesuffix(".processor")]
        if isinstance(proc, IPAdapterAttnProcessor | IPAdapterAttnProcessor2_0):
            cls = IPAdapterAttnProcessor2_0 if sdpa else IPAdapterAttnProcessor
            if type(proc) is not cls:
                swapped = cls(proc.hidden_size, proc.cross_attention_dim, proc.num_tokens, proc.scale)
                swapped.to_k_ip, swapped.to_v_ip = proc.to_k_ip, proc.to_v_ip
                proc = swapped
        elif type(proc) in (AttnProcessor, AttnProcessor2_0, FusedAttnProcessor2_0):
            if fuse and not attn.fused_projections:
                attn.fuse_projections(fuse=True)
            proc = FusedAttnProcessor2_0() if fuse else AttnProcessor2_0() if sdpa else AttnProcessor()
        processors[name] = proc  # any other processor (LoRA, custom) is left as it is
    model.set_attn_processor(processors)


class Engine:
    """A loaded pipeline plus the caches that make batching pay.

    `pipe` is already on its device and in `dtype`; the device is read from it, and `versions`
    (recorded with every image) are this process's libraries.
    """

    def __init__(self, pipe, *, profile: str, revision: str, dtype: torch.dtype,
                 control_types: Sequence[str] = ("canny",), adapter_images: Sequence[str] = ("style",)):
        from adapters.model.weights import library_versions

        self.pipe = pipe
        self.profile = profile
        self.revision = revision
        self.dtype = dtype
        self.versions = library_versions()
        self.control_types = tuple(control_types)
        self.adapter_images = tuple(adapter_images)
        self.xl = hasattr(pipe, "text_encoder_2")
        self._pipes: dict[str, Any] = {"ip_adapter": pipe}
        self._base_scheduler_config = dict(pipe.scheduler.config)
        self._schedulers: dict[str, Any] = {}
        self._image_embeds: dict[tuple, torch.Tensor] = {}
        self._prompt_embeds: OrderedDict[tuple[str, str, bool], tuple[torch.Tensor | None, ...]] = OrderedDict()
        self._lock = threading.Lock()  # one pipeline call at a time per process
        self.options: EngineOptions | None = None  # None: the pipeline as loaded; see set_options

    @property
    def lock(self) -> threading.Lock:
        """Held for every pipeline call on this engine's components (the upscaler's tiles share them)."""
        return self._lock

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    @property
    def device_name(self) -> str:
        return str(self.pipe.device)

    # ------------------------------------------------------------------ caches

    def adapter_embeds(self, style: StyleInput, product: Image.Image | None, cfg: bool) -> list[torch.Tensor]:
        """One embedding tensor per IP-Adapter (negative half first under CFG), each cached by content."""
        out = []
        for k, image in enumerate(self.adapter_images):
            if image == "style":
                key = (k, "style", style.key, cfg)
                if key not in self._image_embeds:
                    self._image_embeds[key] = self._encode(k, style.images, style.weights, style.combine, style.negative, cfg)
            else:
                if product is None:
                    raise ValueError(f"IP-Adapter {k + 1} of profile {self.profile!r} is fed the product photo, but none was given")
                # Keyed by the canvas's pixels: the same photo on another canvas size is another image.
                pixels = hashlib.sha256(product.convert("RGB").tobytes()).hexdigest()
                key = (k, "product", pixels, product.size, cfg)
                if key not in self._image_embeds:
                    self._image_embeds[key] = self._encode(k, (product,), (1.0,), "concat", None, cfg)
            out.append(self._image_embeds[key])
        return out

    def _encode(self, k: int, images: Sequence[Image.Image], weights: Sequence[float], combine: str,
                negative: Image.Image | None, cfg: bool) -> torch.Tensor:
        import torch
        from diffusers.models.embeddings import ImageProjection

        projection = self.pipe.unet.encoder_hid_proj.image_projection_layers[k]
        hidden = not isinstance(projection, ImageProjection)  # "plus" adapters read hidden states
        device = self.pipe.device
        with torch.inference_mode():
            # Padded, not centre-cropped: the encoder's processor crops to a square and would cut the sides.
            pos, neg = self.pipe.encode_image([pad_to_square(im) for im in images], device, 1, hidden)
            if combine != "concat":
                w = torch.tensor(weights if combine == "weighted" else [1.0] * len(images), device=pos.device)
                w = (w / w.sum()).to(pos.dtype).view(-1, *([1] * (pos.dim() - 1)))
                pos, neg = (pos * w).sum(0, keepdim=True), neg[:1]
            if negative is not None:
                neg_embed, _ = self.pipe.encode_image([pad_to_square(negative)], device, 1, hidden)
                neg = neg_embed.expand_as(pos)
        pos, neg = pos[None], neg[None]  # (1, tokens, ...): one image prompt, repeated over the batch by diffusers
        return torch.cat([neg, pos]) if cfg else pos

    def prompt_embeds(self, prompt: str, negative: str, cfg: bool) -> tuple[torch.Tensor | None, ...]:
        """Text embeddings of one (prompt, negative prompt) pair, cached: (pos, neg) or SDXL's (pos, neg, pooled, neg pooled)."""
        import torch
        key = (prompt, negative, cfg)
        if key in self._prompt_embeds:
            self._prompt_embeds.move_to_end(key)
            return self._prompt_embeds[key]
        with torch.inference_mode():
            if self.xl:
                embeds = self.pipe.encode_prompt(prompt=prompt, device=self.pipe.device, num_images_per_prompt=1,
                                                 do_classifier_free_guidance=cfg, negative_prompt=negative or None)
            else:
                embeds = self.pipe.encode_prompt(prompt, self.pipe.device, 1, cfg, negative_prompt=negative or None)
        self._prompt_embeds[key] = tuple(embeds)
        if len(self._prompt_embeds) > PROMPT_CACHE_SIZE:
            self._prompt_embeds.popitem(last=False)
        return self._prompt_embeds[key]

    def _pipe_for(self, mode: str, scheduler: str):
        if mode not in self._pipes:
            if (self.xl, mode) not in DERIVED_PIPELINES:
                raise ValueError(f"unknown generation mode {mode!r}; expected ip_adapter, img2img or preserve")
            import diffusers
            from diffusers.utils import logging as diffusers_logging

            cls = getattr(diffusers, DERIVED_PIPELINES[(self.xl, mode)])
            extra = {"add_watermarker": False} if self.xl else {}
            # from_pipe casts the (shared) components to `dtype`, float32 unless told, and warns
            # about float32-pinned modules for every component even when there are none.
            level = diffusers_logging.get_verbosity()
            diffusers_logging.set_verbosity_error()
            try:
                derived = cls.from_pipe(self.pipe, dtype=self.dtype, **extra)
            finally:
                diffusers_logging.set_verbosity(level)
            derived.set_progress_bar_config(disable=True)
            self._pipes[mode] = derived
        pipe = self._pipes[mode]
        if scheduler not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {scheduler!r}; expected one of {sorted(SCHEDULERS)}")
        if scheduler not in self._schedulers:
            import diffusers

            self._schedulers[scheduler] = getattr(diffusers, SCHEDULERS[scheduler]).from_config(self._base_scheduler_config)
        pipe.scheduler = self._schedulers[scheduler]
        return pipe

    # ------------------------------------------------------------------ generation

    def generate(
        self,
        *,
        canvases: Mapping[str, Image.Image],
        style: StyleInput,
        draws: Sequence[Draw],
        params: Mapping[str, Any],
        split_on_oom: bool = True,
    ) -> list[Image.Image]:
        """One image per draw (prompt, negative, seed); each image's pixels depend only on its own draw.

        `canvases` holds the product's canvas images by kind: one control image per ControlNet
        of the profile, and `canvas` / `keep` where the mode or an adapter needs them. A CUDA
        out-of-memory halves the batch and goes on, unless `split_on_oom` is False (it is then
        raised: how a benchmark finds the largest batch that fits).
        """
        draws = checked_draws(draws)
        params = {**PARAM_DEFAULTS, **params}
        size = (params["width"], params["height"])
        for kind in canvas_kinds(params, self.control_types, self.adapter_images):
            if kind not in canvases:
                raise ValueError(f"{params['mode']} with profile {self.profile!r} needs canvas image {kind!r}; "
                                 f"got {sorted(canvases)}")
            if canvases[kind].size != size:
                raise ValueError(f"control image {kind!r} is {canvases[kind].size}, expected {size}")
        with self._lock:
            if not split_on_oom:
                return self._call(dict(canvases), style, draws, params)
            return self._generate_split(dict(canvases), style, draws, params)

    def _generate_split(self, canvases, style, draws: list[Draw], params) -> list[Image.Image]:
        import torch
        try:
            return self._call(canvases, style, draws, params)
        except torch.cuda.OutOfMemoryError:
            if len(draws) == 1:
                raise
            torch.cuda.empty_cache()
            half = len(draws) // 2
            log.warning("CUDA out of memory at batch %d; splitting into %d + %d", len(draws), half, len(draws) - half)
            return self._generate_split(canvases, style, draws[:half], params) + \
                self._generate_split(canvases, style, draws[half:], params)

    def set_options(self, options: EngineOptions) -> EngineOptions:
        """Apply speed switches to the loaded pipeline (`apply_options`); returns those in effect."""
        with self._lock:
            self.options = apply_options(self.pipe, options)
        return self.options

    def _call(self, canvases, style, draws: list[Draw], params) -> list[Image.Image]:
        import torch
        if self.options is not None and not self.options.cache_embeddings:
            # Every call embeds its prompts and references again, as a plain pipeline call does.
            self._image_embeds.clear()
            self._prompt_embeds.clear()
        mode = params["mode"]
        cfg = params["guidance"] > 1.0
        pipe = self._pipe_for(mode, params["scheduler"])
        kwargs = self._prompt_kwargs(draws, cfg)
        kwargs["ip_adapter_image_embeds"] = self.adapter_embeds(style, canvases.get("canvas"), cfg)
        controls = [canvases[t] for t in self.control_types]
        scales = params.get("control_scales") or {}
        cond_scales = [float(scales.get(t, params["controlnet_scale"])) for t in self.control_types]
        multi = len(controls) > 1
        kwargs.update(
            controlnet_conditioning_scale=cond_scales if multi else cond_scales[0],
            control_guidance_start=params["controlnet_start"],
            control_guidance_end=params["controlnet_end"],
            num_inference_steps=params["steps"],
            guidance_scale=params["guidance"],
            width=params["width"],
            height=params["height"],
            # CPU generators: the same seed gives the same starting noise on every device.
            generator=[torch.Generator("cpu").manual_seed(int(d.seed)) for d in draws],
            output_type="pil",
        )
        if mode == "ip_adapter":
            kwargs["image"] = controls if multi else controls[0]
            denoised_steps = params["steps"]
        else:
            # img2img starts from the style set's first reference; preserve from the product on the canvas.
            init = canvases["canvas"] if mode == "preserve" else cover_canvas(style.images[0], params["width"], params["height"])
            kwargs.update(image=init, control_image=controls if multi else controls[0], strength=params["strength"])
            if mode == "preserve":
                # One copy per image: the inpainting pipeline VAE-encodes a single init image with the
                # first generator only, which would make an image's pixels depend on its batch.
                kwargs["image"] = [init] * len(draws)
                kwargs["mask_image"] = [ImageOps.invert(canvases["keep"].convert("L"))] * len(draws)  # white = repaint
            denoised_steps = min(int(params["steps"] * params["strength"]), params["steps"])
        kwargs["callback_on_step_end"] = self._set_adapter_scales(params, max(denoised_steps, 1))
        with torch.inference_mode(), control_embedded_once(pipe.controlnet):
            images = list(pipe(**kwargs).images)
        if mode == "preserve":
            # The product's own pixels, not the model's rendering of them: exact where the mask is full.
            keep = canvases["keep"].convert("L")
            images = [Image.composite(canvases["canvas"].convert("RGB"), img, keep) for img in images]
        return images

    def _prompt_kwargs(self, draws: Sequence[Draw], cfg: bool) -> dict[str, Any]:
        import torch
        embeds = [self.prompt_embeds(d.prompt, d.negative, cfg) for d in draws]
        names = ("prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds")
        kwargs = {}
        for i, name in enumerate(names[: len(embeds[0])]):
            if embeds[0][i] is not None:
                kwargs[name] = torch.cat([e[i] for e in embeds])
        return kwargs

    def _set_adapter_scales(self, params: Mapping[str, Any], steps: int) -> Callable | None:
        """Set each adapter's (preset) scales for the first step; return the step callback that
        switches them off and on for the active window, or None when the window is every step."""
        product_scale = params.get("product_ip_scale", params["ip_scale"])
        configs = [
            ip_block_scales(params["ip_preset"], params["ip_scale"] if image == "style" else product_scale,
                            self.pipe.unet.config, self.xl)
            for image in self.adapter_images
        ]
        self.pipe.set_ip_adapter_scale(configs)
        start, end = params["ip_start"], params["ip_end"]
        if start <= 0 and end >= 1:
            return None
        processors = [p for p in self.pipe.unet.attn_processors.values() if hasattr(p, "to_k_ip")]
        on = [list(p.scale) for p in processors]

        def switch(active: bool) -> None:
            for proc, scales in zip(processors, on, strict=True):
                proc.scale = list(scales) if active else [0.0] * len(scales)

        switch(window_active(0, steps, start, end))

        def callback(pipe, step: int, timestep, callback_kwargs: dict) -> dict:
            # Called after step `step`: set the scales for the next one.
            switch(window_active(step + 1, pipe.num_timesteps, start, end))
            return callback_kwargs

        return callback


@contextmanager
def control_embedded_once(controlnet) -> Iterator[None]:
    """Within one pipeline call, embed each ControlNet's control image once, not once per image per step.

    diffusers runs a ControlNet's conditioning embedding (convolutions at full image
    resolution) on the control image repeated over the batch, at every step, although every
    row and every step sees the same image. Here the first call of a call embeds one row and
    the rest reuse it; a batch whose rows differ is embedded as given.
    """
    import torch
    nets = getattr(controlnet, "nets", [controlnet])
    embedders = [net.controlnet_cond_embedding for net in nets]
    for embedder in embedders:
        original = embedder.forward
        cache: dict[tuple, torch.Tensor] = {}

        def forward(cond: torch.Tensor, _original=original, _cache=cache) -> torch.Tensor:
            key = (cond.data_ptr(), tuple(cond.shape))  # the pipeline passes the same tensor every step
            if key not in _cache:
                first = cond[:1]
                same = torch.equal(cond, first.expand_as(cond))
                _cache[key] = _original(first).expand(cond.shape[0], -1, -1, -1) if same else _original(cond)
            return _cache[key]

        embedder.forward = forward
    try:
        yield
    finally:
        for embedder in embedders:
            del embedder.forward  # back to the class's own forward


_ENGINES: dict[tuple, Engine] = {}
_ENGINES_LOCK = threading.Lock()
_LOADS = 0  # pipelines this process has loaded: a warm GPU worker reports it with every shard


def import_torch() -> None:
    """Import torch now: a GPU worker does as it starts, so that its first shard does not wait for it."""
    import torch  # noqa: F401


def engine_loads() -> int:
    """How many times this process has loaded a pipeline (once per profile, device and dtype it served)."""
    return _LOADS


def get_engine(profile_name: str, settings: Settings) -> Engine:
    """The process's engine for a profile, loaded on first use and kept for the life of the process.

    The `sim` pipeline gets the simulated GPU (adapters/model/sim_engine.py) instead: no weights, no torch call.
    """
    from adapters.model.weights import load_pipeline, profile_revision
    from catalogs import load_profiles

    global _LOADS
    profile = load_profiles()[profile_name]  # a run's profile is checked where its request is applied
    sim = profile.pipeline == "sim"  # no torch: not even to find the device
    device = "sim" if sim else resolve_device(settings.device)
    dtype = None if sim else resolve_dtype(settings.dtype, device)
    key = (profile_name, device, dtype, str(settings.model_cache))
    with _ENGINES_LOCK:
        if key not in _ENGINES:
            _LOADS += 1
            if sim:
                from adapters.model.sim_engine import SimEngine

                _ENGINES[key] = SimEngine(profile=profile_name, seconds_per_image=settings.sim_seconds_per_image,
                                          control_types=profile.control_types, adapter_images=profile.adapter_images)
                return _ENGINES[key]
            pipe = load_pipeline(profile, settings, device=device, dtype=dtype)
            _ENGINES[key] = Engine(
                pipe,
                profile=profile_name,
                revision=profile_revision(profile, settings),
                dtype=dtype,
                control_types=profile.control_types,
                adapter_images=profile.adapter_images,
            )
            _ENGINES[key].set_options(EngineOptions.defaults(device))
        return _ENGINES[key]


def load_in_background(profile_name: str, settings: Settings) -> threading.Thread:
    """Start loading the process's engine for a profile (`get_engine`) in a background thread.

    A campaign whose shards run in its own process calls it as it starts: the weights load while
    the catalog is read, the run planned and the control images made, and the first shard finds
    the engine loaded (or waits for the load already under way). A load that fails here fails
    again, with its error, where the shard loads the engine.
    """

    def load() -> None:
        try:
            get_engine(profile_name, settings)
        except Exception as exc:  # the shard's own load reports it
            log.debug("background load of %s failed: %s", profile_name, exc)

    thread = threading.Thread(target=load, name=f"load-{profile_name}", daemon=True)
    thread.start()
    return thread


def model_identity(profile_name: str, settings: Settings) -> tuple[str, str, str]:
    """(profile revision, dtype name, device) without loading any weights: what planning needs."""
    from adapters.model.weights import profile_revision
    from catalogs import load_profiles

    profile = load_profiles()[profile_name]
    if profile.pipeline == "sim":
        return profile_revision(profile, settings), "none", "sim"
    device = resolve_device(settings.device)
    dtype = resolve_dtype(settings.dtype, device)
    return profile_revision(profile, settings), str(dtype).removeprefix("torch."), device
