"""The engine on the tiny kit: determinism, control, IP-Adapter scale, several references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from adapters.engine import Engine, StyleInput, get_engine
from adapters.settings import Settings

PARAMS = {"width": 64, "height": 64, "steps": 2, "scheduler": "unipc", "guidance": 5.0,
          "ip_scale": 0.8, "controlnet_scale": 1.0}


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def max_diff(a: Image.Image, b: Image.Image) -> int:
    return int(np.abs(pixels(a) - pixels(b)).max())


def control(shape: str) -> Image.Image:
    img = Image.new("RGB", (64, 64), "black")
    draw = ImageDraw.Draw(img)
    if shape == "circle":
        draw.ellipse((12, 12, 52, 52), outline="white", width=2)
    else:
        draw.rectangle((8, 20, 56, 44), outline="white", width=2)
    return img


def reference(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8))


def style(*seeds: int) -> StyleInput:
    return StyleInput.from_images([reference(s) for s in seeds], [f"ref{s}" for s in seeds])


@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> Engine:
    settings = Settings(model_cache=tmp_path_factory.mktemp("models"), device="cpu", dtype="float32")
    return get_engine("tiny", settings)


def generate(engine: Engine, *, prompts=("a red kettle on marble",), seeds=(7,), ctrl="circle", sty=None, **params):
    return engine.generate(
        control=control(ctrl), style=sty or style(1),
        prompts=list(prompts), negatives=["blurry"] * len(prompts), seeds=list(seeds), params={**PARAMS, **params},
    )


def test_same_seed_same_pixels_and_other_seed_differs(engine):
    a, b = generate(engine, prompts=["p", "p"], seeds=[7, 8])
    (again,) = generate(engine, prompts=["p"], seeds=[7])
    assert max_diff(a, again) <= 1  # batched vs solo: at most 1/255 from reduction order
    assert max_diff(a, b) > 10


def test_image_does_not_depend_on_its_batch(engine):
    batch = generate(engine, prompts=["x", "a kettle", "y"], seeds=[1, 7, 2])
    (solo,) = generate(engine, prompts=["a kettle"], seeds=[7])
    assert max_diff(batch[1], solo) <= 1


def test_control_image_changes_the_output(engine):
    (circle,) = generate(engine, ctrl="circle")
    (rect,) = generate(engine, ctrl="rect")
    assert max_diff(circle, rect) > 10
    (off,) = generate(engine, ctrl="rect", controlnet_scale=0.0)
    (off2,) = generate(engine, ctrl="circle", controlnet_scale=0.0)
    assert max_diff(off, off2) <= 1  # with the ControlNet switched off the control no longer matters


def test_ip_scale_zero_equals_the_pipeline_without_an_adapter(engine):
    from diffusers import StableDiffusionControlNetPipeline

    (zero,) = generate(engine, ip_scale=0.0)
    (full,) = generate(engine, ip_scale=1.0)
    assert max_diff(zero, full) > 10

    p = engine.pipe
    plain = StableDiffusionControlNetPipeline(
        vae=p.vae, text_encoder=p.text_encoder, tokenizer=p.tokenizer, unet=_unet_without_adapter(p),
        controlnet=p.controlnet, scheduler=p.scheduler.__class__.from_config(p.scheduler.config),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    plain.set_progress_bar_config(disable=True)
    out = plain("a red kettle on marble", negative_prompt="blurry", image=control("circle"), num_inference_steps=2,
                guidance_scale=5.0, width=64, height=64, generator=[torch.Generator("cpu").manual_seed(7)]).images[0]
    assert max_diff(zero, out) <= 1


def _unet_without_adapter(pipe):
    import copy

    from diffusers.models.attention_processor import AttnProcessor2_0

    unet = copy.deepcopy(pipe.unet)
    unet.set_attn_processor(AttnProcessor2_0())
    unet.encoder_hid_proj = None
    unet.config.encoder_hid_dim_type = None
    return unet


def test_several_references_work_and_each_one_counts(engine):
    (one,) = generate(engine, sty=style(1))
    (three,) = generate(engine, sty=style(1, 2, 3))
    (three_other,) = generate(engine, sty=style(1, 2, 4))
    assert max_diff(one, three) > 5
    assert max_diff(three, three_other) > 0


def test_embeddings_are_computed_once_per_style_and_prompt(engine, monkeypatch):
    calls = {"image": 0, "text": 0}
    real_image, real_text = engine.pipe.prepare_ip_adapter_image_embeds, engine.pipe.encode_prompt

    # The pipeline also calls both with ready embeddings, which only reshapes them: count real encodes.
    def count_image(*a, **k):
        ready = k["ip_adapter_image_embeds"] if "ip_adapter_image_embeds" in k else a[1]
        calls["image"] += ready is None
        return real_image(*a, **k)

    def count_text(prompt, *a, **k):
        calls["text"] += prompt is not None
        return real_text(prompt, *a, **k)

    monkeypatch.setattr(engine.pipe, "prepare_ip_adapter_image_embeds", count_image)
    monkeypatch.setattr(engine.pipe, "encode_prompt", count_text)
    fresh = style(11, 12)
    generate(engine, prompts=["cache me", "cache me too"], seeds=[1, 2], sty=fresh)
    generate(engine, prompts=["cache me", "cache me too"], seeds=[3, 4], sty=fresh)
    assert calls == {"image": 1, "text": 2}


def test_bad_batch_is_refused_before_any_work(engine):
    with pytest.raises(ValueError, match="equal and non-empty"):
        engine.generate(control=control("circle"), style=style(1), prompts=["a"], negatives=[], seeds=[1], params=PARAMS)
    with pytest.raises(ValueError, match="control image is"):
        engine.generate(control=control("circle"), style=style(1), prompts=["a"], negatives=[""], seeds=[1],
                        params={**PARAMS, "width": 128})
