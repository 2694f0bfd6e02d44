"""Scorers on constructed cases whose right answer is known, built from scikit-image photos."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageFilter

from tasks.canny import control_image, fit_to_canvas
from tasks.masks import product_mask
from tasks.phash import hamming
from tasks.scores import (
    background_hash,
    colourfulness,
    duplicate_groups,
    edge_f1,
    edge_map,
    exposure,
    is_blank,
    masked_ssim,
    mean_delta_e,
    pixel_scores,
    product_mask_on_canvas,
)
from tests.helpers import photo

SIZE = 192
LOW, HIGH = 100, 200


def _cut_out_logo() -> Image.Image:
    """skimage's logo with its white surround made transparent: a product that carries its own mask."""
    rgb = np.asarray(photo("logo"))
    mask = product_mask(Image.fromarray(rgb))[0]
    return Image.fromarray(np.dstack([rgb, np.asarray(mask)]), mode="RGBA")


class Product:
    """A product as the pipeline sees it: the photo on the canvas, its canny control, its region."""

    def __init__(self, photo: Image.Image):
        mask, _ = product_mask(photo)
        self.canvas = fit_to_canvas(photo, SIZE, SIZE)
        self.region = product_mask_on_canvas(photo, SIZE, SIZE, mask)
        self.edges = np.asarray(control_image(photo, SIZE, SIZE, LOW, HIGH).convert("L")) > 127
        self.photo = photo

    def pasted_on(self, background: str) -> Image.Image:
        """The product exactly as photographed, on another background: a perfectly faithful output."""
        out = photo(background).resize((SIZE, SIZE))
        out.paste(self.canvas, (0, 0), Image.fromarray(self.region.astype(np.uint8) * 255))
        return out

    def scores(self, output: Image.Image) -> dict:
        scores, problems = pixel_scores(output, product_canvas=self.canvas, control_edges=self.edges,
                                        mask=self.region, canny_low=LOW, canny_high=HIGH)
        assert problems == []
        return scores


@pytest.fixture(scope="module", params=["cut-out logo", "rocket photo"])
def product(request) -> Product:
    # One product with an alpha mask, one whose whole photo is the product.
    return Product(_cut_out_logo() if request.param == "cut-out logo" else photo("rocket"))


def _noise(seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))


def test_product_on_a_new_background_scores_faithful(product):
    scores = product.scores(product.pasted_on("grass"))
    assert scores["edge_f1"] > 0.95
    assert scores["product_ssim"] > 0.9
    assert scores["product_delta_e"] < 1.0


def test_noise_and_an_unrelated_photo_score_unfaithful(product):
    for output in (_noise(), photo("astronaut").resize((SIZE, SIZE))):
        scores = product.scores(output)
        assert scores["edge_f1"] < 0.1
        assert scores["product_ssim"] < 0.3
        assert scores["product_delta_e"] > 10


def test_blurring_the_product_lowers_fidelity_and_sharpness(product):
    sharp = product.pasted_on("grass")
    blurred = sharp.filter(ImageFilter.GaussianBlur(2))
    before, after = product.scores(sharp), product.scores(blurred)
    assert after["edge_f1"] < before["edge_f1"] - 0.2
    assert after["product_ssim"] < before["product_ssim"]
    assert after["sharpness"] < before["sharpness"] / 5


def test_the_product_region_follows_the_mask_and_the_canvas_fit():
    logo = _cut_out_logo()
    region = product_mask_on_canvas(logo, 256, 128, product_mask(logo)[0])
    assert region.shape == (128, 256)
    # The mask is placed where fit_to_canvas places the photo: centred, aspect kept.
    alpha_on_canvas = np.asarray(fit_to_canvas(logo.getchannel("A").convert("RGB"), 256, 128, background=(0, 0, 0)))
    assert np.array_equal(region, alpha_on_canvas[..., 0] > 127)
    assert not region[:, :40].any() and region.any()
    # Without a mask the whole fitted photo is the product: a centred box of the photo's aspect.
    box = product_mask_on_canvas(photo("rocket"), 256, 128)
    cols = np.flatnonzero(box.any(axis=0))
    assert box.all(axis=0)[cols].all() and (cols[0], cols.size) == (32, 192)  # 640x427 fitted into 256x128
    with pytest.raises(ValueError, match="product mask is 10x10"):
        product_mask_on_canvas(logo, 64, 64, Image.new("L", (10, 10)))


def test_fidelity_is_none_when_there_is_nothing_to_compare():
    blank_region = np.zeros((32, 32), bool)
    grey = Image.new("RGB", (32, 32), (128, 128, 128))
    assert masked_ssim(grey, grey, blank_region) is None
    assert mean_delta_e(grey, grey, blank_region) is None
    assert edge_f1(np.zeros((32, 32), bool), edge_map(grey, LOW, HIGH), np.ones((32, 32), bool)) is None


def test_delta_e_measures_a_colour_shift():
    coffee = photo("coffee").resize((64, 64))
    region = np.ones((64, 64), bool)
    shifted = Image.fromarray(np.roll(np.asarray(coffee), 1, axis=2))  # RGB -> BRG: a hue change
    assert mean_delta_e(coffee, coffee, region) == 0.0
    assert mean_delta_e(coffee, shifted, region) > 15


def test_exposure_and_colourfulness_of_plain_images():
    black, white = Image.new("RGB", (16, 16)), Image.new("RGB", (16, 16), (255, 255, 255))
    grey = Image.new("RGB", (16, 16), (128, 128, 128))
    assert exposure(black) == (0.0, 1.0)
    assert exposure(white) == (1.0, 1.0)
    luminance, clipped = exposure(grey)
    assert luminance == pytest.approx(128 / 255) and clipped == 0.0
    assert colourfulness(grey) == 0.0
    assert colourfulness(photo("coffee")) > colourfulness(photo("camera").convert("RGB")) == 0.0
    assert is_blank(grey) and not is_blank(photo("coffee"))


def test_identical_images_are_duplicates_and_different_backgrounds_are_not(product):
    on_grass, on_gravel = product.pasted_on("grass"), product.pasted_on("gravel")
    same = background_hash(on_grass, product.region)
    assert len(same) == 16 and background_hash(on_grass.copy(), product.region) == same
    # A re-encoded copy (JPEG) is a near-duplicate, a different background is not.
    import io

    buf = io.BytesIO()
    on_grass.save(buf, format="JPEG", quality=80)
    jpeg = Image.open(buf).convert("RGB")
    assert hamming(background_hash(jpeg, product.region), same) <= 6
    assert hamming(background_hash(on_gravel, product.region), same) > 12


def test_the_background_hash_ignores_the_product_region():
    logo = Product(_cut_out_logo())
    on_grass = logo.pasted_on("grass")
    repainted = np.asarray(on_grass).copy()
    repainted[logo.region] = 255 - repainted[logo.region]  # the product drawn quite differently
    assert background_hash(Image.fromarray(repainted), logo.region) == background_hash(on_grass, logo.region)


def test_duplicate_groups_are_transitive_and_skip_unhashed():
    a = "0000000000000000"
    b = "0000000000000003"  # 2 bits from a
    c = "000000000000000f"  # 2 bits from b, 4 from a
    far = "ffffffffffffffff"
    assert duplicate_groups([a, b, c, far, None, a], max_distance=2) == [0, 0, 0, 3, None, 0]
    assert duplicate_groups([a, c], max_distance=2) == [0, 1]


def test_a_failing_scorer_costs_its_column_not_the_image(product):
    # An empty region: no fidelity to measure, yet the technical scores are all there.
    scores, problems = pixel_scores(product.pasted_on("grass"), product_canvas=product.canvas,
                                    control_edges=product.edges, mask=np.zeros((SIZE, SIZE), bool),
                                    canny_low=LOW, canny_high=HIGH)
    assert scores["edge_f1"] is None and scores["product_ssim"] is None and scores["product_delta_e"] is None
    assert scores["sharpness"] > 0 and scores["background_hash"]
    # A canvas of the wrong size breaks the fidelity scorers; the rest still run.
    scores, problems = pixel_scores(product.pasted_on("grass"), product_canvas=product.canvas.resize((32, 32)),
                                    control_edges=product.edges, mask=product.region, canny_low=LOW, canny_high=HIGH)
    assert scores["product_ssim"] is None and scores["product_delta_e"] is None
    assert {p.split(":")[0] for p in problems} == {"product_ssim", "product_delta_e"}
    assert scores["edge_f1"] > 0.95 and scores["colourfulness"] > 0


# --------------------------------------------------------------------------- CLIP (tiny kit)


@pytest.fixture(scope="module")
def clip_settings(model_cache):
    from adapters.infra.settings import Settings

    return Settings(model_cache=model_cache, device="cpu")


def test_clip_model_setting_picks_weights():
    from adapters.model.clip import clip_weights
    from catalogs import load_profiles

    profiles = load_profiles()
    assert clip_weights("none", profiles["tiny"]) is None
    assert clip_weights("auto", profiles["tiny"]).model_dump(exclude_none=True) == {"source": "builtin:tiny", "subfolder": "clip"}
    assert clip_weights("auto", profiles["sd15"]).source == "openai/clip-vit-large-patch14"
    assert clip_weights("./my-clip", profiles["sd15"]).source == "./my-clip"


def test_tiny_clip_scores_prompt_and_style(clip_settings):
    from adapters.model.clip import get_clip_scorer
    from catalogs import load_profiles

    scorer = get_clip_scorer("auto", load_profiles()["tiny"], clip_settings)
    assert scorer is not None and scorer.name.startswith("builtin:tiny/clip@")
    coffee, grass = photo("coffee"), photo("grass")
    scores = scorer.score([coffee, grass], ["a cup of coffee", "a lawn"], style_key="coffee-only",
                          references=[coffee], weights=[1.0])
    (text_a, style_a), (text_b, style_b) = scores
    assert style_a == pytest.approx(1.0, abs=1e-5)  # an image is its own best style match
    assert style_b < style_a and -1 <= text_a <= 1 and text_a != text_b
    # Same inputs, same scores; the prompt decides clip_text, the references clip_style.
    (again,) = scorer.score([coffee], ["a cup of coffee"], style_key="coffee-only", references=[coffee], weights=[1.0])
    assert again == pytest.approx(scores[0], abs=1e-5)  # batch size moves only float rounding
    (_, both), = scorer.score([coffee], ["a cup of coffee"], style_key="coffee-and-grass",
                              references=[coffee, grass], weights=[1.0, 1.0])
    assert both == pytest.approx((1.0 + style_b) / 2, abs=1e-5)


def test_an_unavailable_clip_model_turns_clip_scores_off(clip_settings, caplog):
    from adapters.model.clip import get_clip_scorer
    from catalogs import load_profiles

    # Offline, with nothing in the Hugging Face cache: no scorer and a warning, not an exception.
    assert get_clip_scorer("stylematrix-test/no-such-clip", load_profiles()["tiny"], clip_settings) is None
    assert "CLIP scores are off" in caplog.text
    assert get_clip_scorer("none", load_profiles()["tiny"], clip_settings) is None


def test_a_clip_model_that_breaks_while_loading_turns_clip_scores_off(clip_settings, caplog, tmp_path):
    from adapters.model.clip import get_clip_scorer
    from catalogs import load_profiles

    # A folder whose config is valid JSON but not a config: transformers raises TypeError, not OSError.
    broken = tmp_path / "broken-clip"
    broken.mkdir()
    (broken / "config.json").write_text("[]")
    assert get_clip_scorer(str(broken), load_profiles()["tiny"], clip_settings) is None
    assert "CLIP scores are off: TypeError" in caplog.text
