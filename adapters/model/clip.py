"""Scores that need weights: CLIP prompt alignment (`clip_text`) and style similarity (`clip_style`).

The CLIP model is loaded once per process and kept, like the engine. A model that cannot be
loaded (not in the offline cache, a broken folder) turns the CLIP scores off for the process
with one warning: the images still get every other score.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

from PIL import Image

from adapters.infra.settings import Settings
from adapters.model.engine import resolve_device, resolve_dtype
from adapters.model.kit import quiet_progress_bars
from adapters.model.weights import BUILTIN_KITS, TINY_SOURCE, _ref_revision, resolve_weights
from catalogs.models import ModelProfile, WeightsRef
from tasks.values import first_line

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

DEFAULT_CLIP = "openai/clip-vit-large-patch14"  # SD1.5's own text encoder family
TINY_CLIP_FOLDER = "clip"


def clip_weights(setting: str, profile: ModelProfile) -> WeightsRef | None:
    """The CLIP weights a campaign's `selection.clip_model` names; None when CLIP scoring is off.

    `auto` is the tiny kit's CLIP for a profile built from a tiny kit, openai/clip-vit-large-patch14 otherwise.
    """
    if setting == "none" or profile.pipeline == "sim":  # a simulated GPU's images have nothing for CLIP to see
        return None
    if setting == "auto":
        setting = TINY_SOURCE if profile.base.source in BUILTIN_KITS else DEFAULT_CLIP
    if setting == TINY_SOURCE:
        return WeightsRef(source=TINY_SOURCE, subfolder=TINY_CLIP_FOLDER)
    return WeightsRef(source=setting)


class ClipScorer:
    """A loaded CLIP model with caches for prompts and style sets."""

    def __init__(self, model, processor, *, name: str, device: str, dtype: torch.dtype):
        self.model = model
        self.processor = processor
        self.name = name
        self.device = device
        self.dtype = dtype
        self._texts: dict[str, torch.Tensor] = {}
        self._styles: dict[str, torch.Tensor] = {}
        self._lock = threading.Lock()

    def _unit(self, features) -> torch.Tensor:
        # transformers 5 returns an output object whose pooler_output is the projected embedding.
        import torch

        tensor = features if isinstance(features, torch.Tensor) else features.pooler_output
        tensor = tensor.float()
        return tensor / tensor.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    def image_embeds(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Unit-length image embeddings, one row per image."""
        import torch

        pixels = self.processor.image_processor(images=[im.convert("RGB") for im in images], return_tensors="pt")
        with torch.inference_mode():
            out = self.model.get_image_features(pixel_values=pixels["pixel_values"].to(self.device, self.dtype))
        return self._unit(out)

    def text_embeds(self, texts: Sequence[str]) -> torch.Tensor:
        """Unit-length text embeddings (prompts cut to the model's 77 tokens), cached per text."""
        import torch

        missing = sorted({t for t in texts if t not in self._texts})
        if missing:
            tokens = self.processor.tokenizer(missing, padding=True, truncation=True, return_tensors="pt")
            with torch.inference_mode():
                out = self.model.get_text_features(input_ids=tokens["input_ids"].to(self.device),
                                                   attention_mask=tokens["attention_mask"].to(self.device))
            for text, row in zip(missing, self._unit(out), strict=True):
                self._texts[text] = row
        return torch.stack([self._texts[t] for t in texts])

    def style_embeds(self, key: str, references: Sequence[Image.Image]) -> torch.Tensor:
        """Unit-length embeddings of a style set's references, cached by the style's content key."""
        if key not in self._styles:
            self._styles[key] = self.image_embeds(references)
        return self._styles[key]

    def score(self, images: Sequence[Image.Image], prompts: Sequence[str], *, style_key: str,
              references: Sequence[Image.Image], weights: Sequence[float]) -> list[tuple[float, float]]:
        """(clip_text, clip_style) per image: cosine to its prompt, and the weighted mean cosine to the references."""
        return self.score_and_embed(images, prompts, style_key=style_key, references=references, weights=weights)[0]

    def score_and_embed(self, images: Sequence[Image.Image], prompts: Sequence[str], *, style_key: str,
                        references: Sequence[Image.Image],
                        weights: Sequence[float]) -> tuple[list[tuple[float, float]], list[list[float]]]:
        """`score`'s (clip_text, clip_style) per image, and each image's unit embedding (kept for consistency)."""
        import torch

        with self._lock:
            imgs = self.image_embeds(images)
            text = (imgs * self.text_embeds(prompts)).sum(dim=-1)
            w = torch.tensor(list(weights), dtype=imgs.dtype, device=imgs.device)
            style = (imgs @ self.style_embeds(style_key, references).T) @ (w / w.sum())
        scores = [(float(t), float(s)) for t, s in zip(text.cpu(), style.cpu(), strict=True)]
        return scores, imgs.cpu().tolist()


_SCORERS: dict[tuple, ClipScorer | None] = {}
_SCORERS_LOCK = threading.Lock()


def get_clip_scorer(setting: str, profile: ModelProfile, settings: Settings) -> ClipScorer | None:
    """The process's CLIP scorer for a `clip_model` setting, loaded on first use; None when off or unloadable."""
    ref = clip_weights(setting, profile)
    if ref is None:
        return None
    device = resolve_device(settings.device)
    dtype = resolve_dtype(settings.dtype, device)
    key = (ref, device, dtype, str(settings.model_cache))
    with _SCORERS_LOCK:
        if key not in _SCORERS:
            try:
                _SCORERS[key] = _load(ref, settings, device=device, dtype=dtype)
            except Exception as exc:  # whatever breaks the load costs the CLIP columns (null), never the run
                log.warning("CLIP scores are off: %s: %s", type(exc).__name__, first_line(exc))
                _SCORERS[key] = None
        return _SCORERS[key]


def _load(ref: WeightsRef, settings: Settings, *, device: str, dtype: torch.dtype) -> ClipScorer:
    from pathlib import Path

    from transformers import CLIPModel, CLIPProcessor

    label = f"CLIP model {ref.source!r}"
    where = resolve_weights(ref, settings)
    hub = {} if Path(where).is_dir() else {"revision": ref.revision, "subfolder": ref.subfolder or ""}
    with quiet_progress_bars():
        model = CLIPModel.from_pretrained(where, dtype=dtype, **hub).eval().to(device)
        processor = CLIPProcessor.from_pretrained(where, **hub)
    return ClipScorer(model, processor, name=_ref_revision(ref, settings, label), device=device, dtype=dtype)
