"""The canny control maps: OpenCV's Canny drawn as controlnet_aux's `CannyDetector` draws it (what the canny
ControlNet was trained on), pixel for pixel, at the canvas's own size, without importing controlnet_aux."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from PIL import Image, ImageDraw

from tasks.canny import canny_map, control_image, fit_to_canvas


def product(width: int, height: int) -> Image.Image:
    """A product photo with outlines at every angle, soft shading and fine text: edges of every strength."""
    photo = Image.new("RGB", (width, height), (250, 250, 248))
    draw = ImageDraw.Draw(photo)
    draw.ellipse((width * 0.15, height * 0.1, width * 0.85, height * 0.9), fill=(180, 60, 40), outline=(20, 20, 20), width=3)
    draw.polygon([(width * 0.5, height * 0.05), (width * 0.95, height * 0.6), (width * 0.3, height * 0.95)], outline=(30, 90, 200))
    for i in range(0, width, max(1, width // 12)):
        draw.line((i, height - 1, i + width // 5, height * 0.6), fill=(120 + i % 100, 140, 90), width=1)
    draw.text((width * 0.3, height * 0.4), "MUG 250ml", fill=(240, 240, 240))
    return photo


def detector_map(image: Image.Image, low: int, high: int) -> np.ndarray:
    """controlnet_aux's map of `image`: grown to multiples of 64 by its edge pixels (its detector rounds sides to
    64), detected at its own size, and cropped back."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the package imports every annotator, and each one warns
        from controlnet_aux import CannyDetector
    rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    rgb = np.pad(rgb, ((0, -rgb.shape[0] % 64), (0, -rgb.shape[1] % 64), (0, 0)), mode="edge")
    side = min(rgb.shape[:2])
    edges = CannyDetector()(rgb, low_threshold=low, high_threshold=high, detect_resolution=side,
                            image_resolution=side, output_type="np")
    return edges[: image.height, : image.width]


@pytest.mark.parametrize(("width", "height"), [(64, 64), (64, 80), (72, 128), (128, 96), (200, 130), (512, 768)])
@pytest.mark.parametrize(("low", "high"), [(100, 200), (30, 60), (200, 250)])
def test_a_control_map_is_the_detectors_map_pixel_for_pixel_at_the_canvas_size(width, height, low, high):
    photo = product(300, 240)
    drawn = control_image(photo, width, height, low, high)
    assert drawn.size == (width, height) and drawn.mode == "RGB"
    pixels = np.asarray(drawn)
    assert (pixels > 0).any() and (pixels == 0).any()  # edges, on black
    expected = detector_map(fit_to_canvas(photo, width, height), low, high)
    assert np.array_equal(pixels, expected), f"{width}x{height} {low}-{high}: {int((pixels != expected).sum())} differ"


def test_thresholds_the_wrong_way_round_are_refused():
    with pytest.raises(ValueError, match="canny low threshold 200 is above high threshold 100"):
        canny_map(product(64, 64), 200, 100)
