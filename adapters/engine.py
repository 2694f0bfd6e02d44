"""The diffusion engine: IP-Adapter + ControlNet canny on a diffusers pipeline, batched.

One call = one control image x one style set's image embeddings x many prompts and seeds.
Image embeddings are computed once per style set, prompt embeddings once per prompt; the
pipeline is loaded once per process (`get_engine`).
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from adapters.settings import Settings

log = logging.getLogger(__name__)

SCHEDULERS = {
    "unipc": "UniPCMultistepScheduler",
    "ddim": "DDIMScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "dpmpp_2m": "DPMSolverMultistepScheduler",
}


@dataclass(frozen=True)
class StyleInput:
    """A style set's reference images, keyed by their content so embeddings are reused."""

    key: str
    images: tuple[Image.Image, ...]

    @classmethod
    def from_images(cls, images: Sequence[Image.Image], shas: Sequence[str]) -> StyleInput:
        key = hashlib.sha256("|".join(shas).encode()).hexdigest()
        return cls(key=key, images=tuple(images))


def resolve_device(setting: str) -> str:
    """`auto` picks CUDA, then MPS, then CPU."""
    if setting != "auto":
        return setting
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def resolve_dtype(setting: str, device: str) -> torch.dtype:
    """`auto` is float16 on an accelerator and float32 on the CPU (half precision is slow there)."""
    if setting != "auto":
        return getattr(torch, setting)
    return torch.float32 if device == "cpu" else torch.float16


class Engine:
    """A loaded pipeline plus the caches that make batching pay."""

    def __init__(self, pipe, *, profile: str, revision: str, device: str, dtype: torch.dtype, versions: dict[str, str]):
        self.pipe = pipe
        self.profile = profile
        self.revision = revision
        self.device = device
        self.dtype = dtype
        self.versions = versions
        self._base_scheduler_config = dict(pipe.scheduler.config)
        self._scheduler_name: str | None = None
        self._image_embeds: dict[tuple[str, bool], list[torch.Tensor]] = {}
        self._prompt_embeds: dict[tuple[str, str, bool], tuple[torch.Tensor, torch.Tensor | None]] = {}
        self._lock = threading.Lock()  # one pipeline call at a time per process

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    @property
    def device_name(self) -> str:
        return str(self.pipe.device)

    # ------------------------------------------------------------------ caches

    def image_embeds(self, style: StyleInput, cfg: bool) -> list[torch.Tensor]:
        """IP-Adapter embeddings of a style set (several references are concatenated), cached."""
        cache_key = (style.key, cfg)
        if cache_key not in self._image_embeds:
            self._image_embeds[cache_key] = self.pipe.prepare_ip_adapter_image_embeds(
                ip_adapter_image=[list(style.images)],
                ip_adapter_image_embeds=None,
                device=self.pipe.device,
                num_images_per_prompt=1,
                do_classifier_free_guidance=cfg,
            )
        return self._image_embeds[cache_key]

    def prompt_embeds(self, prompt: str, negative: str, cfg: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Text embeddings of one (prompt, negative prompt) pair, cached."""
        cache_key = (prompt, negative, cfg)
        if cache_key not in self._prompt_embeds:
            pos, neg = self.pipe.encode_prompt(prompt, self.pipe.device, 1, cfg, negative_prompt=negative or None)
            self._prompt_embeds[cache_key] = (pos, neg)
        return self._prompt_embeds[cache_key]

    def _use_scheduler(self, name: str) -> None:
        if name == self._scheduler_name:
            return
        if name not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {name!r}; expected one of {sorted(SCHEDULERS)}")
        import diffusers

        cls = getattr(diffusers, SCHEDULERS[name])
        self.pipe.scheduler = cls.from_config(self._base_scheduler_config)
        self._scheduler_name = name

    # ------------------------------------------------------------------ generation

    def generate(
        self,
        *,
        control: Image.Image,
        style: StyleInput,
        prompts: Sequence[str],
        negatives: Sequence[str],
        seeds: Sequence[int],
        params: dict,
    ) -> list[Image.Image]:
        """One image per (prompt, negative, seed); each image's pixels depend only on its own seed."""
        if not (len(prompts) == len(negatives) == len(seeds)) or not prompts:
            raise ValueError(f"prompts, negatives and seeds must be equal and non-empty lengths, got "
                             f"{len(prompts)}, {len(negatives)}, {len(seeds)}")
        if control.size != (params["width"], params["height"]):
            raise ValueError(f"control image is {control.size}, expected {(params['width'], params['height'])}")
        with self._lock:
            return self._generate_split(control, style, list(prompts), list(negatives), list(seeds), params)

    def _generate_split(self, control, style, prompts, negatives, seeds, params) -> list[Image.Image]:
        try:
            return self._call(control, style, prompts, negatives, seeds, params)
        except torch.cuda.OutOfMemoryError:
            if len(prompts) == 1:
                raise
            torch.cuda.empty_cache()
            half = len(prompts) // 2
            log.warning("CUDA out of memory at batch %d; splitting into %d + %d", len(prompts), half, len(prompts) - half)
            return self._generate_split(control, style, prompts[:half], negatives[:half], seeds[:half], params) + \
                self._generate_split(control, style, prompts[half:], negatives[half:], seeds[half:], params)

    def _call(self, control, style, prompts, negatives, seeds, params) -> list[Image.Image]:
        cfg = params["guidance"] > 1.0
        self._use_scheduler(params["scheduler"])
        self.pipe.set_ip_adapter_scale(params["ip_scale"])
        pairs = [self.prompt_embeds(p, n, cfg) for p, n in zip(prompts, negatives, strict=True)]
        prompt_embeds = torch.cat([p for p, _ in pairs])
        negative_embeds = torch.cat([n for _, n in pairs]) if cfg else None
        # CPU generators: the same seed gives the same starting noise on every device.
        generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
        with torch.inference_mode():
            out = self.pipe(
                prompt_embeds=prompt_embeds,
                negative_prompt_embeds=negative_embeds,
                image=control,
                ip_adapter_image_embeds=self.image_embeds(style, cfg),
                num_inference_steps=params["steps"],
                guidance_scale=params["guidance"],
                controlnet_conditioning_scale=params["controlnet_scale"],
                width=params["width"],
                height=params["height"],
                generator=generators,
                output_type="pil",
            )
        return list(out.images)


_ENGINES: dict[tuple, Engine] = {}
_ENGINES_LOCK = threading.Lock()


def get_engine(profile_name: str, settings: Settings) -> Engine:
    """The process's engine for a profile, loaded on first use and kept for the life of the process."""
    from catalogs import load_profiles

    from adapters.models import library_versions, load_pipeline, profile_revision

    device = resolve_device(settings.device)
    dtype = resolve_dtype(settings.dtype, device)
    key = (profile_name, device, dtype, str(settings.model_cache))
    with _ENGINES_LOCK:
        if key not in _ENGINES:
            profiles = load_profiles()
            if profile_name not in profiles:
                raise ValueError(f"unknown model profile {profile_name!r}; known: {sorted(profiles)}")
            profile = profiles[profile_name]
            pipe = load_pipeline(profile, settings, device=device, dtype=dtype)
            _ENGINES[key] = Engine(
                pipe,
                profile=profile_name,
                revision=profile_revision(profile, settings),
                device=device,
                dtype=dtype,
                versions=library_versions(),
            )
        return _ENGINES[key]


def model_identity(profile_name: str, settings: Settings) -> tuple[str, str, str]:
    """(profile revision, dtype name, device) without loading any weights: what planning needs."""
    from catalogs import load_profiles

    from adapters.models import profile_revision

    profiles = load_profiles()
    if profile_name not in profiles:
        raise ValueError(f"unknown model profile {profile_name!r}; known: {sorted(profiles)}")
    device = resolve_device(settings.device)
    dtype = resolve_dtype(settings.dtype, device)
    return profile_revision(profiles[profile_name], settings), str(dtype).removeprefix("torch."), device
