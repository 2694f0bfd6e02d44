"""The engine on the tiny kits: every generation control changes the pixels, and batching never does.

Each test compares images made with and without one control; `max_diff` is the largest
per-pixel difference in 1/255 steps. Batched vs solo runs may differ by 1 (reduction order).
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from adapters.infra.settings import Settings
from adapters.model.draws import Draw
from adapters.model.engine import Engine, StyleInput, get_engine, ip_block_scales, window_active
from tasks.canny import canvas_images, canvas_kinds, cover_canvas, pad_to_square
from tests.helpers import ROOT, max_diff, product, reference

PARAMS = {"width": 64, "height": 64, "steps": 2, "scheduler": "unipc", "guidance": 5.0,
          "ip_scale": 0.8, "controlnet_scale": 1.0, "canny_low": 100, "canny_high": 200}


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def style(*seeds: int, **kwargs) -> StyleInput:
    return StyleInput.from_images([reference(s) for s in seeds], [f"ref{s}" for s in seeds], **kwargs)


def canvases(engine: Engine, params: dict, shape: str = "circle", item: Image.Image | None = None) -> dict:
    return canvas_images(item or product(shape=shape), None, params, canvas_kinds(params, engine.control_types, engine.adapter_images))


@pytest.fixture(scope="module")
def settings(private_model_cache) -> Settings:
    return Settings(model_cache=private_model_cache, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def engine(settings) -> Engine:
    return get_engine("tiny", settings)


def generate(engine: Engine, *, prompts=("a red kettle on marble",), seeds=(7,), shape="circle", sty=None,
             canvas=None, **params):
    params = {**PARAMS, **params}
    return engine.generate(
        canvases=canvas or canvases(engine, params, shape), style=sty or style(1),
        draws=[Draw(p, "blurry", s) for p, s in zip(prompts, seeds, strict=True)], params=params,
    )


# --------------------------------------------------------------------------- reproducibility


@pytest.mark.parametrize("mode", ["ip_adapter", "img2img", "preserve"])
def test_image_does_not_depend_on_its_batch(engine, mode):
    batch = generate(engine, prompts=["x", "a kettle", "y"], seeds=[1, 7, 2], mode=mode, strength=0.75)
    (solo,) = generate(engine, prompts=["a kettle"], seeds=[7], mode=mode, strength=0.75)
    assert max_diff(batch[1], solo) <= 1
    assert max_diff(batch[0], batch[2]) > 10  # each seed still gives its own image


def test_same_seed_same_pixels_and_other_seed_differs(engine):
    a, b = generate(engine, prompts=["p", "p"], seeds=[7, 8])
    (again,) = generate(engine, prompts=["p"], seeds=[7])
    assert max_diff(a, again) <= 1
    assert max_diff(a, b) > 10


def test_out_of_memory_halves_the_batch_with_the_same_pixels(engine, monkeypatch):
    whole = generate(engine, prompts=["a", "b", "c"], seeds=[1, 2, 3])
    real_call, sizes = engine._call, []

    def small_gpu(canvases, style, draws, params):
        sizes.append(len(draws))
        if len(draws) > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_call(canvases, style, draws, params)

    monkeypatch.setattr(engine, "_call", small_gpu)
    split = generate(engine, prompts=["a", "b", "c"], seeds=[1, 2, 3])
    assert sizes == [3, 1, 2, 1, 1]
    assert all(max_diff(x, y) <= 1 for x, y in zip(whole, split, strict=True))


# --------------------------------------------------------------------------- ControlNet


def test_control_image_changes_the_output_unless_its_scale_is_zero(engine):
    (circle,) = generate(engine, shape="circle")
    (rect,) = generate(engine, shape="rect")
    assert max_diff(circle, rect) > 10
    (off,) = generate(engine, shape="rect", controlnet_scale=0.0)
    (off2,) = generate(engine, shape="circle", controlnet_scale=0.0)
    assert max_diff(off, off2) <= 1


def test_controlnet_window_limits_where_the_control_acts(engine):
    full = generate(engine, shape="circle", steps=4)[0]
    late = generate(engine, shape="circle", steps=4, controlnet_start=0.5)[0]
    early = generate(engine, shape="circle", steps=4, controlnet_end=0.5)[0]
    assert max_diff(full, late) > 5 and max_diff(full, early) > 5 and max_diff(late, early) > 5


def test_canny_thresholds_shape_the_control_image():
    photo = Image.fromarray(np.uint8(np.linspace(0, 255, 64 * 64).reshape(64, 64) % 97 * 2.5)).convert("RGB")
    ImageDraw.Draw(photo).ellipse((16, 16, 48, 48), outline=(60, 60, 60), width=2)
    low = canvas_images(photo, None, {**PARAMS, "canny_low": 10, "canny_high": 40}, ["canny"])["canny"]
    high = canvas_images(photo, None, {**PARAMS, "canny_low": 200, "canny_high": 250}, ["canny"])["canny"]
    assert (pixels(low) > 0).sum() > (pixels(high) > 0).sum()


def test_second_controlnet_takes_its_own_control_image_and_scale(settings):
    multi = get_engine("tiny-multi", settings)
    params = {**PARAMS, "ip_scale": 0.0, "product_ip_scale": 0.0}
    base = canvases(multi, params, "circle")
    other_depth = {**base, "depth": canvases(multi, params, "rect")["depth"]}
    (a,) = generate(multi, canvas=base, **params)
    (b,) = generate(multi, canvas=other_depth, **params)
    assert max_diff(a, b) > 5
    depth_off = {**params, "control_scales": {"canny": 1.0, "depth": 0.0}}
    (c,) = generate(multi, canvas=base, **depth_off)
    (d,) = generate(multi, canvas=other_depth, **depth_off)
    assert max_diff(c, d) == 0


# --------------------------------------------------------------------------- IP-Adapter


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
    control = canvases(engine, PARAMS)["canny"]
    out = plain("a red kettle on marble", negative_prompt="blurry", image=control, num_inference_steps=2,
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


def test_concat_equals_diffusers_with_the_padded_images(engine):
    """The engine's cached embeddings give what the pipeline makes from the images itself."""
    refs = [reference(1, (48, 32)), reference(2)]
    (ours,) = generate(engine, sty=StyleInput.from_images(refs, ["a", "b"]))
    engine.pipe.set_ip_adapter_scale(0.8)
    theirs = engine.pipe(
        "a red kettle on marble", negative_prompt="blurry", image=canvases(engine, PARAMS)["canny"],
        ip_adapter_image=[[pad_to_square(r) for r in refs]], num_inference_steps=2, guidance_scale=5.0,
        width=64, height=64, generator=[torch.Generator("cpu").manual_seed(7)],
    ).images[0]
    assert max_diff(ours, theirs) <= 1


def test_several_references_combine_by_concat_average_or_weight(engine):
    (one,) = generate(engine, sty=style(1))
    (concat,) = generate(engine, sty=style(1, 2, 3))
    (concat_other,) = generate(engine, sty=style(1, 2, 4))
    assert max_diff(one, concat) > 5 and max_diff(concat, concat_other) > 0
    (average,) = generate(engine, sty=style(1, 2, 3, combine="average"))
    (weighted,) = generate(engine, sty=style(1, 2, 3, combine="weighted", weights=[1.0, 1.0, 8.0]))
    (equal_weights,) = generate(engine, sty=style(1, 2, 3, combine="weighted", weights=[2.0, 2.0, 2.0]))
    assert max_diff(average, concat) > 5
    assert max_diff(weighted, average) > 5
    assert max_diff(equal_weights, average) <= 1


def test_references_are_padded_to_square_not_cropped(engine):
    """Two tall references that differ only in their top third: a centre crop would see the same image."""
    top = reference(1, (32, 96))
    other_top = top.copy()
    other_top.paste(reference(9, (32, 32)), (0, 0))
    (a,) = generate(engine, sty=StyleInput.from_images([top], ["t1"]))
    (b,) = generate(engine, sty=StyleInput.from_images([other_top], ["t2"]))
    assert max_diff(a, b) > 2
    cropped = [engine.pipe.feature_extractor(im, return_tensors="pt").pixel_values for im in (top, other_top)]
    assert torch.equal(*cropped), "the premise: the encoder's own processor crops the difference away"


def test_negative_reference_replaces_the_zero_unconditional_embedding(engine):
    (plain,) = generate(engine, sty=style(1))
    (neg_a,) = generate(engine, sty=style(1, negative=reference(5), negative_sha="n5"))
    (neg_b,) = generate(engine, sty=style(1, negative=reference(6), negative_sha="n6"))
    assert max_diff(plain, neg_a) > 5 and max_diff(neg_a, neg_b) > 2
    # Without classifier-free guidance there is no unconditional branch for it to act on.
    (no_cfg,) = generate(engine, sty=style(1), guidance=1.0)
    (no_cfg_neg,) = generate(engine, sty=style(1, negative=reference(5), negative_sha="n5"), guidance=1.0)
    assert max_diff(no_cfg, no_cfg_neg) == 0


def test_presets_feed_different_blocks(engine):
    (full,) = generate(engine, ip_preset="full")
    (style_only,) = generate(engine, ip_preset="style-only")
    (layout_only,) = generate(engine, ip_preset="layout-only")
    (off,) = generate(engine, ip_scale=0.0)
    assert min(max_diff(full, style_only), max_diff(full, layout_only), max_diff(style_only, layout_only)) > 2
    assert max_diff(style_only, off) > 2 and max_diff(layout_only, off) > 2


def test_sd15_presets_are_the_ipadapter_plus_style_and_composition_layers():
    sd15 = {"down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
            "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3, "layers_per_block": 2}
    assert ip_block_scales("style-only", 0.5, sd15, xl=False) == {
        "down": {"block_0": 0.5, "block_1": 0.5},
        "up": {"block_1": [0.0, 0.0, 0.5], "block_2": 0.5, "block_3": 0.5},
    }
    assert ip_block_scales("layout-only", 0.5, sd15, xl=False) == {"down": {"block_2": [0.125, 0.5]}}
    assert ip_block_scales("style-only", 0.5, {}, xl=True) == {"up": {"block_0": [0.0, 0.5, 0.0]}}
    assert ip_block_scales("full", 0.5, sd15, xl=False) == 0.5


def test_adapter_window_switches_it_on_and_off_by_step(engine):
    assert [window_active(i, 4, 0.25, 0.75) for i in range(4)] == [False, True, True, False]
    (off,) = generate(engine, ip_scale=0.0, steps=4)
    (never,) = generate(engine, ip_start=0.0, ip_end=0.0, steps=4)
    assert max_diff(off, never) == 0  # a window that ends at 0 is no adapter at all
    (full,) = generate(engine, steps=4)
    (first_half,) = generate(engine, ip_end=0.5, steps=4)
    (second_half,) = generate(engine, ip_start=0.5, steps=4)
    assert min(max_diff(full, first_half), max_diff(first_half, second_half), max_diff(first_half, off)) > 2
    (again,) = generate(engine, steps=4)
    assert max_diff(full, again) == 0, "the window leaves the next call's scales as they were"


def test_second_adapter_is_fed_the_product(settings):
    multi = get_engine("tiny-multi", settings)
    params = {**PARAMS, "ip_scale": 0.0, "product_ip_scale": 1.0}
    base = canvases(multi, params, "circle")
    blue = {**base, "canvas": canvases(multi, params, item=product(shape="circle", colour=(30, 60, 220)))["canvas"]}
    (red_out,) = multi.generate(canvases=base, style=style(1), draws=[Draw("p", "", 1)], params=params)
    (blue_out,) = multi.generate(canvases=blue, style=style(1), draws=[Draw("p", "", 1)], params=params)
    assert max_diff(red_out, blue_out) > 2
    off = {**params, "product_ip_scale": 0.0}
    (red_off,) = multi.generate(canvases=base, style=style(1), draws=[Draw("p", "", 1)], params=off)
    (blue_off,) = multi.generate(canvases=blue, style=style(1), draws=[Draw("p", "", 1)], params=off)
    assert max_diff(red_off, blue_off) == 0


# --------------------------------------------------------------------------- modes


def test_img2img_starts_from_the_first_reference_and_strength_decides_how_far(engine):
    """With the adapter off, the reference reaches the image only as its init image: the lower the
    strength, the more two references' images differ (the random VAE makes "closer to the init"
    meaningless, so this compares outputs with each other)."""
    def spread(strength: float) -> float:
        a, b = (generate(engine, mode="img2img", strength=strength, steps=4, sty=style(s), ip_scale=0.0)[0] for s in (1, 2))
        return float(np.abs(pixels(a) - pixels(b)).mean())

    gentle, strong = spread(0.3), spread(1.0)
    assert gentle > 5 and gentle > 2 * strong
    covered = cover_canvas(Image.new("RGB", (96, 48), (200, 0, 0)), 64, 64)
    assert covered.size == (64, 64) and covered.getextrema() == ((200, 200), (0, 0), (0, 0)), "no letterbox margins"


def test_preserve_keeps_every_product_pixel_and_repaints_the_background(engine):
    params = {**PARAMS, "mode": "preserve"}
    canvas = canvases(engine, params)
    outputs = generate(engine, prompts=["a", "b"], seeds=[1, 2], canvas=canvas, mode="preserve")
    keep = np.asarray(canvas["keep"]) == 255
    source = pixels(canvas["canvas"])
    assert keep.sum() > 500 and (~keep).sum() > 500
    for out in outputs:
        assert np.array_equal(pixels(out)[keep], source[keep])
        assert np.abs(pixels(out)[~keep] - source[~keep]).mean() > 10  # the white background was repainted


def test_preserve_refuses_a_product_without_a_mask(engine):
    flat = Image.new("RGB", (64, 64), (250, 250, 250))
    with pytest.raises(ValueError, match="preserve mode needs the product's mask"):
        canvas_images(flat, None, {**PARAMS, "mode": "preserve"}, ["canny", "canvas", "keep"])
    with pytest.raises(ValueError, match="needs canvas image 'canvas'"):
        generate(engine, mode="preserve", canvas=canvases(engine, PARAMS))


# --------------------------------------------------------------------------- SDXL


def test_sdxl_profile_generates_reproducibly_with_every_control(settings):
    xl = get_engine("tiny-sdxl", settings)
    assert xl.xl
    batch = generate(xl, prompts=["x", "a kettle"], seeds=[1, 7])
    (solo,) = generate(xl, prompts=["a kettle"], seeds=[7])
    assert max_diff(batch[1], solo) <= 1
    (off,) = generate(xl, ip_scale=0.0)
    (full,) = generate(xl)
    (style_only,) = generate(xl, ip_preset="style-only")
    assert max_diff(off, full) > 2 and max_diff(full, style_only) > 2
    (rect,) = generate(xl, shape="rect")
    assert max_diff(full, rect) > 2
    for mode in ("img2img", "preserve"):
        (out,) = generate(xl, mode=mode, strength=0.75)
        assert out.size == (64, 64)


# --------------------------------------------------------------------------- caches and input checks


def test_embeddings_are_computed_once_per_style_and_prompt(engine, monkeypatch):
    calls = {"image": 0, "text": 0}
    real_image, real_text = engine.pipe.encode_image, engine.pipe.encode_prompt

    def count_image(*a, **k):
        calls["image"] += 1
        return real_image(*a, **k)

    def count_text(prompt, *a, **k):
        calls["text"] += prompt is not None  # the pipeline also calls it with ready embeddings
        return real_text(prompt, *a, **k)

    monkeypatch.setattr(engine.pipe, "encode_image", count_image)
    monkeypatch.setattr(engine.pipe, "encode_prompt", count_text)
    fresh = style(11, 12)
    generate(engine, prompts=["cache me", "cache me too"], seeds=[1, 2], sty=fresh)
    generate(engine, prompts=["cache me", "cache me too"], seeds=[3, 4], sty=fresh, mode="img2img")
    assert calls == {"image": 1, "text": 2}
    generate(engine, prompts=["cache me"], seeds=[1], sty=style(11, 12, combine="average"))
    assert calls["image"] == 2, "another combine rule is another embedding"


def test_bad_batch_is_refused_before_any_work(engine):
    good = canvases(engine, PARAMS)
    with pytest.raises(ValueError, match="needs at least one image to draw"):
        engine.generate(canvases=good, style=style(1), draws=[], params=PARAMS)
    with pytest.raises(ValueError, match="control image 'canny' is"):
        engine.generate(canvases=good, style=style(1), draws=[Draw("a", "", 1)], params={**PARAMS, "width": 128})
    with pytest.raises(ValueError, match="one sha256 and one weight per image"):
        StyleInput.from_images([reference(1)], ["a"], weights=[1.0, 2.0])


# --------------------------------------------------------------------------- through the campaign flow


def test_example_campaign_with_every_control_runs_end_to_end(campaign_env, store):
    """catalogs/examples/every-control.yaml, trimmed to 1 seed and 1 optional part, run by the real flow."""
    from adapters.steps import publish
    from catalogs.models import RunRequest
    from flows.campaign import run_campaign

    catalog = campaign_env["catalog"]
    text = (ROOT / "catalogs" / "examples" / "every-control.yaml").read_text()
    text = text.replace("seeds: 2 ", "seeds: 1 ").replace("|high detail|film grain", "|film grain")
    store.put(f"{catalog}/campaigns/every-control.yaml", text.encode(), content_type="application/yaml")
    summary = run_campaign(RunRequest(campaign="every-control", triggered_by="test"))

    gens = publish.read_table(store, json.loads(store.get(summary.manifest)), "generations")
    cells = 2 * 2 * 2 * 3 * 2  # surface+lighting (zipped) x style x ip_scale+controlnet_scale+guidance+steps (zipped) x mode x optional part
    ip_rows, preserve_rows = gens[gens["mode"] == "ip_adapter"], gens[gens["mode"] == "preserve"]
    assert len(ip_rows) == 2 * cells // 3 == (gens["mode"] == "img2img").sum()  # both products
    # The coffee photo has no mask (no alpha, no plain background): its preserve images are left out.
    assert set(preserve_rows["product_id"]) == {"brand-logo"} and len(preserve_rows) == cells // 3
    assert summary.images_generated == len(gens)
    row = preserve_rows.iloc[0]
    assert row["ip_preset"] == "style-only" and row["ip_end"] == 0.8 and row["strength"] == 0.9
    assert dict(row["control_scales"]) == {"canny": "0.9", "depth": "0.4"} and len(row["control_keys"]) == 2
    assert row["negative_reference_key"].endswith("styles/earthy-textures/gravel.png") and len(row["negative_reference_sha256"]) == 64
    assert row["product_ip_scale"] == 0.3 and set(dict(row["cell"])) == {"surface", "lighting", "style", "ip_scale", "controlnet_scale",
                                                               "guidance", "steps", "mode", "optional"}
    assert {r["style_id"] for _, r in gens.iterrows()} == {"space-age", "earthy-textures"}
    assert all(dict(c)["style"] == s for c, s in zip(gens["cell"], gens["style_id"], strict=True))

    # Preserve mode: every product pixel of every published image is the product photo's own.
    keep = np.asarray(Image.open(io.BytesIO(store.get(row["mask_key"])))) == 255
    canvas_uri = row["mask_key"].replace("_keep.png", "_canvas.png")
    source = pixels(Image.open(io.BytesIO(store.get(canvas_uri))).convert("RGB"))
    assert keep.sum() > 100
    for r in preserve_rows.itertuples():
        out = pixels(Image.open(io.BytesIO(store.get(r.output_key))).convert("RGB"))
        assert np.array_equal(out[keep], source[keep])
