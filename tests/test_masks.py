"""tasks.masks: explicit file, alpha channel, automatic mask on a plain background, or none.

The "products" are real photos from scikit-image: the coffee photo cut to the shape of
skimage's horse silhouette (so the true mask is known), composited on plain and busy
backgrounds, and skimage's logo, photographed on white.
"""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image
from skimage import data
from skimage.util import img_as_ubyte

from tasks.masks import alpha_mask, auto_mask, border_colour, choose_mask_source, mask_coverage, product_mask
from tests.helpers import encode

MARGIN = 24


def cut_out() -> tuple[np.ndarray, np.ndarray]:
    """Coffee-photo pixels in the shape of the horse (RGB), and that shape (bool)."""
    shape = ~data.horse()  # skimage's horse is True on the background
    coffee = img_as_ubyte(data.coffee())
    return coffee[: shape.shape[0], : shape.shape[1]], shape


def composite(background: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The cut-out placed on `background` with a margin; returns the picture and the true mask."""
    pixels, shape = cut_out()
    h, w = shape.shape
    picture = background[: h + 2 * MARGIN, : w + 2 * MARGIN].copy()
    truth = np.zeros(picture.shape[:2], dtype=bool)
    truth[MARGIN : MARGIN + h, MARGIN : MARGIN + w] = shape
    picture[truth] = pixels[shape]
    return picture, truth


def white() -> np.ndarray:
    return np.full((600, 600, 3), 255, dtype=np.uint8)


def studio_grey() -> np.ndarray:
    """A light grey backdrop with sensor noise: plain, but neither white nor exactly uniform."""
    noise = np.random.default_rng(7).normal(0, 3, (600, 600, 3))
    return np.clip(np.array([196, 200, 206]) + noise, 0, 255).astype(np.uint8)


def brick() -> np.ndarray:
    return np.dstack([img_as_ubyte(data.brick())] * 3)


def as_jpeg(pixels: np.ndarray, quality: int = 85) -> Image.Image:
    return Image.open(io.BytesIO(encode(Image.fromarray(pixels), "JPEG", quality=quality))).convert("RGB")


def iou(mask: Image.Image | np.ndarray, truth: np.ndarray) -> float:
    found = np.asarray(mask) >= 128
    return float((found & truth).sum() / (found | truth).sum())


@pytest.mark.parametrize("backdrop", [white, studio_grey], ids=["white", "studio-grey"])
def test_auto_mask_cuts_the_product_from_a_plain_background(backdrop) -> None:
    picture, truth = composite(backdrop())
    mask, source = product_mask(Image.fromarray(picture))
    assert source == "auto"
    assert mask.mode == "L" and mask.size == (picture.shape[1], picture.shape[0])
    assert iou(mask, truth) > 0.95
    # The compression noise of a JPEG product shot does not break it.
    mask, source = product_mask(as_jpeg(picture))
    assert source == "auto" and iou(mask, truth) > 0.93


def test_busy_background_gets_no_mask() -> None:
    picture, _ = composite(brick())
    assert border_colour(picture) is None
    assert product_mask(Image.fromarray(picture)) == (None, "none")
    # A full-frame photo (nothing but the product's surroundings) gets none either.
    assert product_mask(Image.fromarray(img_as_ubyte(data.coffee()))) == (None, "none")


def test_logo_photographed_on_white() -> None:
    logo = Image.fromarray(img_as_ubyte(data.logo())).convert("RGB")  # opaque RGBA in skimage
    mask, source = product_mask(logo)
    assert source == "auto"
    values = np.asarray(mask)
    assert values[0, 0] == 0 and values[250, 250] == 255  # corner is background, centre is the logo
    assert 0.4 < mask_coverage(mask) < 0.9


def test_white_inside_the_product_stays_product() -> None:
    # A dark ring on white: its white centre is not joined to the border, so it is product.
    canvas = np.full((200, 200, 3), 255, dtype=np.uint8)
    cv2.circle(canvas, (100, 100), 60, (40, 30, 20), thickness=12)
    mask = auto_mask(canvas)
    assert mask is not None
    assert mask[100, 100] == 255 and mask[5, 5] == 0
    disk = np.zeros((200, 200), np.uint8)
    cv2.circle(disk, (100, 100), 66, 255, thickness=-1)
    assert iou(mask, disk > 0) > 0.97


def test_blank_picture_has_no_product() -> None:
    assert auto_mask(white()[:100, :100]) is None


def test_alpha_channel_is_the_mask() -> None:
    pixels, shape = cut_out()
    rgba = Image.fromarray(np.dstack([pixels, np.where(shape, 255, 0).astype(np.uint8)]))
    mask, source = product_mask(rgba)
    assert source == "alpha"
    assert np.array_equal(np.asarray(mask) >= 128, shape)
    # A fully opaque alpha channel carries no mask: the photo is judged by its background.
    opaque = Image.fromarray(np.dstack([composite(white())[0], np.full((376, 448), 255, np.uint8)]))
    assert alpha_mask(opaque) is None and product_mask(opaque)[1] == "auto"


def test_palette_transparency_is_an_alpha_mask() -> None:
    _, shape = cut_out()
    palette = Image.fromarray(np.where(shape, 1, 0).astype(np.uint8), mode="P")
    palette.putpalette([255, 255, 255, 200, 30, 30] + [0, 0, 0] * 254)
    buffer = io.BytesIO()
    palette.save(buffer, format="PNG", transparency=0)
    mask, source = product_mask(Image.open(io.BytesIO(buffer.getvalue())))
    assert source == "alpha" and np.array_equal(np.asarray(mask) >= 128, shape)


def test_explicit_mask_wins_and_must_match() -> None:
    pixels, shape = cut_out()
    rgba = Image.fromarray(np.dstack([pixels, np.where(shape, 255, 0).astype(np.uint8)]))
    box = np.zeros(shape.shape, np.uint8)
    box[50:200, 60:300] = 255
    mask, source = product_mask(rgba, Image.fromarray(box))
    assert source == "file" and np.array_equal(np.asarray(mask), box)
    # A mask drawn as a transparent layer counts by its alpha.
    layer = Image.fromarray(np.dstack([np.zeros((*shape.shape, 3), np.uint8), box]))
    assert np.array_equal(np.asarray(product_mask(rgba, layer)[0]), box)
    with pytest.raises(ValueError, match="mask is 10x10 but the image is 400x328"):
        product_mask(rgba, Image.new("L", (10, 10), 255))


def test_precedence() -> None:
    assert choose_mask_source(has_file=True, has_alpha=True, has_auto=True) == "file"
    assert choose_mask_source(has_file=False, has_alpha=True, has_auto=True) == "alpha"
    assert choose_mask_source(has_file=False, has_alpha=False, has_auto=True) == "auto"
    assert choose_mask_source(has_file=False, has_alpha=False, has_auto=False) == "none"
