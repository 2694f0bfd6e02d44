"""Marketplace main images, their checks, the grounded shadow, paste-back at the finished size, upscale tiling."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from catalogs.models import Campaign, ChannelSpec, Shadow, Upscale
from tasks.canny import canvas_mask, fit_to_canvas
from tasks.finish import channel_plan, compose_white, final_size, paste_back, scale_box, to_finish
from tasks.marketplace import MARKETPLACES, marketplace_checks, product_fill
from tasks.shadow import shadow_alpha
from tasks.upscale import lanczos_to, refine_in_tiles, seam_band, target_size, tile_grid
from tests.helpers import PRODUCTS, STYLES, campaign, photo, plan, product

AMAZON = MARKETPLACES["amazon-main"]


def _photo_with_mask(side: int = 600) -> tuple[Image.Image, Image.Image]:
    """A product photo (a kettle-like shape on a grey studio backdrop, with detail) and its mask."""
    picture = photo("astronaut").resize((side, side))
    mask = Image.new("L", (side, side), 0)
    ImageDraw.Draw(mask).rounded_rectangle((side // 5, side // 8, side * 4 // 5, side * 7 // 8), radius=side // 10,
                                           fill=255)
    return picture, mask


def test_a_composed_main_image_passes_its_marketplace_checks():
    picture, mask = _photo_with_mask()
    done = compose_white(picture, mask, (AMAZON.width, AMAZON.height), AMAZON.fill, AMAZON.shadow)
    assert done.image.size == (2000, 2000)
    checks, reasons = marketplace_checks(done.image, done.product, AMAZON, shadow=done.shadow)
    assert reasons == []
    assert checks["long_side"] == 2000 and checks["text_added"] is False
    assert checks["product_fill"] == pytest.approx(0.9, abs=0.01) and checks["white_background_share"] >= 0.98
    rgb = np.asarray(done.image)
    assert (rgb[0] == 255).all() and (rgb[:, -1] == 255).all()  # pure white where there is no shadow
    # The shadow is there (grey under the product), and only the shadow is not white outside the product.
    below = rgb[done.product.nonzero()[0].max() + 3, 1000]
    assert below.max() < 250
    off_white = ~(rgb >= 252).all(axis=2) & ~done.product
    assert not (off_white & ~done.shadow).any()


@pytest.mark.parametrize(("what", "expected"), [
    ("small", "product_fill 0.50 < 0.85"),
    ("grey", "white_background_share"),
    ("800", "long_side 800 px < 1000"),
])
def test_a_main_image_that_breaks_a_rule_fails_that_check_with_a_reason(what, expected):
    picture, mask = _photo_with_mask()
    size = (800, 800) if what == "800" else (2000, 2000)
    fill = 0.5 if what == "small" else AMAZON.fill
    done = compose_white(picture, mask, size, fill)
    image = done.image
    if what == "grey":
        grey = Image.new("RGB", image.size, (200, 200, 200))
        image = Image.composite(image, grey, Image.fromarray(done.product.astype(np.uint8) * 255))
    checks, reasons = marketplace_checks(image, done.product, AMAZON)
    assert len(reasons) == 1 and reasons[0].startswith(expected), reasons
    # The same image meets JD's 800 px minimum and 0.7 fill where it meets them.
    if what == "800":
        assert marketplace_checks(image, done.product, MARKETPLACES["jd-main"])[1] == []
    if what == "grey":
        assert checks["white_background_share"] == 0.0


def test_text_added_fails_and_product_fill_is_the_longer_side_share():
    mask = np.zeros((100, 200), dtype=bool)
    mask[10:60, 20:180] = True  # 160 of 200 across, 50 of 100 down
    assert product_fill(mask) == pytest.approx(0.8)
    image = Image.new("RGB", (200, 100), (255, 255, 255))
    _, reasons = marketplace_checks(image, mask, MARKETPLACES["jd-main"], text_added=True)
    assert any(r.startswith("text_added") for r in reasons) and any(r.startswith("long_side 200") for r in reasons)
    with pytest.raises(ValueError, match="product mask is 200x100, the image 100x100"):
        marketplace_checks(Image.new("RGB", (100, 100)), mask, AMAZON)


def test_paste_back_is_pixel_exact_inside_the_mask_at_the_final_size():
    """The product comes from the catalog photo fitted at 4x, never from the upscaled 128 px render."""
    picture, mask = _photo_with_mask(600)
    render_size, size = (128, 128), (512, 512)
    box = (16, 16, 112, 112)
    # A render whose product region is a blurred copy of the photo, as a model would make it.
    render = fit_to_canvas(picture, *render_size, box=box).filter(ImageFilter.GaussianBlur(2))
    upscaled = lanczos_to(render, size)
    final_box = scale_box(box, render_size, size)
    done = paste_back(upscaled, picture, mask, final_box, Shadow(type="both"))
    keep = np.asarray(canvas_mask(picture, mask, *size, final_box))
    exact = np.asarray(fit_to_canvas(picture, *size, box=final_box))
    inside = keep == 255
    assert inside.sum() > 0.2 * inside.size
    assert (np.asarray(done.image)[inside] == exact[inside]).all()
    # The upscaled render is not the product: it differs there, so the paste-back is what made it exact.
    assert np.abs(np.asarray(upscaled, dtype=int)[inside] - exact[inside]).mean() > 2
    assert done.note is None  # a 600 px photo into a 384 px box: not stretched


def test_a_product_photo_smaller_than_its_box_is_said_in_one_line():
    picture, mask = _photo_with_mask(300)
    done = compose_white(picture, mask, (2000, 2000), AMAZON.fill)
    assert done.note is not None and "\n" not in done.note
    # The product's part of the photo (cut to its outline) is what is stretched.
    assert done.note.startswith("the product photo gives 181x226 px, less than its 1442x1800 box") and "x7.96" in done.note


def test_the_shadow_is_deterministic_grounded_and_bounded():
    mask = np.zeros((200, 200), dtype=bool)
    mask[40:140, 60:140] = True
    contact = shadow_alpha(mask, Shadow(type="contact", opacity=0.5))
    assert np.array_equal(contact, shadow_alpha(mask, Shadow(type="contact", opacity=0.5)))
    assert contact.max() <= 0.5 + 1e-6
    rows = np.flatnonzero(contact.max(axis=1) > 0.05)
    assert rows.min() > 120 and rows.max() < 160  # around the product's foot (row 140), not its top
    drop = shadow_alpha(mask, Shadow(type="drop", offset=(0.1, 0.1), blur=0.0, opacity=1.0))
    assert drop[145, 145] > 0.7 and drop[45, 65] == 0  # moved 10 px right and down
    assert shadow_alpha(np.zeros((10, 10), dtype=bool), Shadow()).max() == 0


def test_tiles_cover_the_image_and_blend_away_their_seams():
    boxes = tile_grid(400, 240, 128, 32)
    assert all(b[0] % 8 == 0 and b[1] % 8 == 0 and b[2] - b[0] <= 128 for b in boxes)
    assert boxes[-1][2:] == (400, 240)
    with pytest.raises(ValueError, match="under half the tile"):
        tile_grid(400, 240, 64, 32)
    assert target_size(128, 72, 2048, 8) == (2048, 1152)


def test_tiled_and_one_pass_refinement_differ_only_near_seams():
    """A refinement that looks at neighbours (a 5 px blur) and adds the whole image's own noise: tiled, it
    equals one pass away from the seams, and near them it stays within 3 levels (the tile's edge sees less context)."""
    base = lanczos_to(photo("coffee", 120), (400, 240))
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 6, (240, 400, 3)).astype(np.float32)

    def refine(crop: Image.Image, box) -> Image.Image:
        blurred = np.asarray(crop.filter(ImageFilter.BoxBlur(2)), dtype=np.float32)
        noisy = blurred + noise[box[1]:box[3], box[0]:box[2]]
        return Image.fromarray(np.clip(np.rint(noisy), 0, 255).astype(np.uint8))

    boxes = tile_grid(400, 240, 128, 32)
    tiled = np.asarray(refine_in_tiles(base, boxes, 32, refine), dtype=int)
    whole = np.asarray(refine_in_tiles(base, [(0, 0, 400, 240)], 0, refine), dtype=int)
    diff = np.abs(tiled - whole).max(axis=2)
    band = seam_band(400, 240, boxes, 32)
    # Away from the overlaps a tile sees what the whole image sees (its edges are 2 px from the blur's reach).
    edge = np.zeros_like(band)
    for left, top, right, bottom in boxes:
        edge[top:bottom, left:right] |= True
    assert diff[~band].max() <= 1
    assert diff[band].max() <= 3 and diff.mean() < 0.2


def test_a_campaign_plans_a_scene_image_and_one_main_image_per_product():
    spec = campaign(channels={"scene": ChannelSpec(preset="square"), "amazon": ChannelSpec(preset="amazon-main")})
    spec = Campaign.model_validate(spec.model_dump())  # the channel axis is added by validation
    products = [p.model_copy(update={"width": 64, "height": 64, "mask_source": "alpha"}) for p in PRODUCTS]
    jobs = plan(spec, products=products, styles=STYLES)
    main = [j for j in jobs if j.params["channel"] == "amazon"]
    scene = [j for j in jobs if j.params["channel"] == "scene"]
    assert len(main) == len(products) and {j.params["background"] for j in main} == {"white"}
    assert len(scene) > len(main) and all("background" not in j.params for j in scene)
    plan_ = channel_plan(spec, "amazon")
    assert plan_.marketplace is AMAZON and plan_.shadow is not None
    assert final_size({"width": 512, "height": 512}, plan_) == (2000, 2000)
    assert channel_plan(spec, "scene").active is False
    # Only the selected images are finished, unless `upscale.only: all`.
    rows = [{"channel": "amazon", "selected": True, "status": "ok", "output_key": "k1"},
            {"channel": "amazon", "selected": False, "status": "ok", "output_key": "k2"},
            {"channel": "scene", "selected": True, "status": "ok", "output_key": "k3"}]
    assert [r["output_key"] for r in to_finish(rows, {"amazon": plan_, "scene": channel_plan(spec, "scene")})] == ["k1"]
    every = channel_plan(spec.model_copy(update={"upscale": Upscale(long_side=1024, only="all")}), "scene")
    assert [r["output_key"] for r in to_finish(rows, {"amazon": plan_, "scene": every})] == ["k1", "k3"]


def test_a_marketplace_channel_refuses_a_format_other_than_srgb_jpeg():
    base = campaign().model_dump()
    with pytest.raises(ValueError, match="a amazon-main image is delivered as sRGB JPEG; its `delivery:` asks for webp"):
        Campaign.model_validate({**base, "channels": {"amazon-main": {"delivery": {"format": "webp"}}}})


def test_the_white_preview_uses_the_cut_out_product():
    """brand-logo style: a transparent photo is its own mask."""
    cut = product(64)
    done = compose_white(cut, None, (800, 800), 0.8)
    assert product_fill(done.product) == pytest.approx(0.8, abs=0.01)


def test_delivery_takes_the_finished_file_and_refuses_a_main_image_that_fails_its_checks():
    from tasks.review import ReviewRequest, channel_formats, channel_marketplaces, finished_sources, form_description

    sources = [{"asset_id": a, "product_id": "p", "channel": c, "output_key": f"s3://a/{a}.png", "sha256": a * 8}
               for a, c in (("aa", "amazon"), ("bb", "amazon"), ("cc", "feed"), ("dd", None))]
    finishes = [
        {"source_asset_id": "aa", "marketplace": "amazon-main", "checks_passed": True, "check_reasons": [],
         "output_key": "s3://a/fa.png", "sha256": "fa"},
        {"source_asset_id": "bb", "marketplace": "amazon-main", "checks_passed": False,
         "check_reasons": ["product_fill 0.62 < 0.85"], "output_key": "s3://a/fb.png", "sha256": "fb"},
        {"source_asset_id": "cc", "marketplace": None, "checks_passed": None, "check_reasons": [],
         "output_key": "s3://a/fc.png", "sha256": "fc"},
    ]
    deliver, refused = finished_sources(sources, finishes)
    assert [(s["asset_id"], s["output_key"]) for s in deliver] == [
        ("aa", "s3://a/fa.png"), ("cc", "s3://a/fc.png"), ("dd", "s3://a/dd.png")]
    assert refused == {"bb": "image bb: amazon-main checks fail: product_fill 0.62 < 0.85"}

    spec = campaign(channels={"feed": ChannelSpec(preset="square"), "amazon": ChannelSpec(preset="amazon-main")})
    spec = Campaign.model_validate({**spec.model_dump(), "delivery": {"format": "webp"}})
    assert channel_marketplaces(spec) == {"amazon": "Amazon main image (amazon-main)"}
    formats = channel_formats(spec)
    assert formats["amazon"].format == "jpeg" and formats["amazon"].srgb and formats["feed"].format == "webp"
    request = ReviewRequest(run_id="r", campaign=spec.name, assets="s3://a", run_date="2026-12-07",
                            channel_delivery=formats, channel_marketplace=channel_marketplaces(spec))
    text = form_description(request, sources[:3], None, {})
    assert "| 1 | p | Amazon main image (amazon-main) | `s3://a/aa.png` | `aa` |" in text
    assert "| 3 | p | feed |" in text and "delivered only when their checks pass" in text


@pytest.mark.slow
def test_the_tiny_kits_tile_controlnet_refines_an_upscale_in_tiles(model_cache):
    """The `tile` method on the tiny kit: the right size, the same pixels for the same seed, the tile ControlNet's
    img2img moving pixels away from plain Lanczos, and tiled close to one pass. The kit's weights are random and its
    attention sees the whole tile, so its tiled and one-pass results differ everywhere a little, not only at seams
    (with a local refinement they differ only at seams: test_tiled_and_one_pass_refinement_differ_only_near_seams)."""
    from adapters.infra.settings import Settings
    from adapters.model.draws import Draw
    from adapters.model.upscale import tile_upscaler

    upscaler = tile_upscaler("tiny", Settings(model_cache=model_cache, device="cpu", dtype="float32"))
    source = photo("coffee").resize((64, 64))
    up = Upscale(long_side=192, method="tile", strength=0.3, steps=4, tile=128, overlap=32)
    draw = Draw("a cup", "", 5)
    tiled = upscaler.refine(source, (192, 192), draw, up=up)
    assert tiled.size == (192, 192)
    assert np.array_equal(np.asarray(tiled), np.asarray(upscaler.refine(source, (192, 192), draw, up=up)))
    whole = upscaler.refine(source, (192, 192), draw, up=up, tiled=False)
    plain = np.asarray(lanczos_to(source, (192, 192)), dtype=int)
    moved = np.abs(np.asarray(whole, dtype=int) - plain).mean()
    apart = np.abs(np.asarray(tiled, dtype=int) - np.asarray(whole, dtype=int)).mean()
    assert moved > 5  # the refinement did something
    assert apart < 0.6 * moved, (apart, moved)  # tiles land near the one pass, far nearer than to plain Lanczos
    with pytest.raises(ValueError, match="multiples of 8"):
        upscaler.refine(source, (190, 190), draw, up=up)


@pytest.mark.slow
def test_the_x4_upscaler_of_a_profile_makes_the_asked_size(model_cache):
    """`method: x4` runs the profile's SD x4 upscaler pipeline (the tiny kit has one at toy size)."""
    from adapters.infra.settings import Settings
    from adapters.model.draws import Draw
    from adapters.model.upscale import x4_upscaler

    upscaler = x4_upscaler("tiny", Settings(model_cache=model_cache, device="cpu", dtype="float32"))
    source = photo("coffee").resize((48, 32))
    up = Upscale(long_side=200, method="x4", steps=2)
    out = upscaler.refine(source, (200, 136), Draw("a cup", "", 2), up=up)
    assert out.size == (200, 136)
    assert upscaler.revision.startswith("builtin:tiny/upscaler@")


def test_a_profile_without_a_tile_controlnet_refuses_the_tile_method_in_one_line():
    from adapters.infra.settings import Settings
    from adapters.model.weights import upscale_revision
    from catalogs import load_profiles

    with pytest.raises(ValueError, match="profile 'sdxl' names no tile_controlnet: upscale method 'tile' needs one"):
        upscale_revision(load_profiles()["sdxl"], Settings(), "tile_controlnet")
