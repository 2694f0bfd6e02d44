"""Control images: the product placed on the generation canvas, and its canny edge map."""

from __future__ import annotations

import warnings

import numpy as np
from PIL import Image


def fit_to_canvas(image: Image.Image, width: int, height: int, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """The image scaled to fit inside width x height, centred on a plain canvas, as RGB.

    Transparent pixels become the background colour, so a cut-out product keeps its outline.
    """
    if image.mode not in ("RGB", "RGBA"):
        image = image.convert("RGBA" if "transparency" in image.info or image.mode in ("LA", "PA") else "RGB")
    scale = min(width / image.width, height / image.height)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    resized = image.resize(size, Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (width, height), background)
    offset = ((width - size[0]) // 2, (height - size[1]) // 2)
    canvas.paste(resized, offset, resized if resized.mode == "RGBA" else None)
    return canvas


def canny_map(image: Image.Image, low: int, high: int) -> Image.Image:
    """controlnet_aux's canny edges of `image`, at exactly the image's size, as RGB."""
    with warnings.catch_warnings():
        # controlnet_aux imports every annotator (timm, segment-anything, ...) and each one warns.
        warnings.simplefilter("ignore")
        from controlnet_aux import CannyDetector

    if low > high:
        raise ValueError(f"canny low threshold {low} is above high threshold {high}")
    rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    side = min(image.width, image.height)
    edges = CannyDetector()(rgb, low_threshold=low, high_threshold=high, detect_resolution=side, image_resolution=side, output_type="np")
    result = Image.fromarray(edges)
    if result.size != image.size:
        # controlnet_aux rounds sizes to multiples of 64; keep the canvas size exact.
        result = result.resize(image.size, Image.Resampling.NEAREST)
    return result


def control_image(product: Image.Image, width: int, height: int, low: int, high: int) -> Image.Image:
    """The control image of one product for one canvas size: canny edges of the fitted product."""
    return canny_map(fit_to_canvas(product, width, height), low, high)


def control_name(product_id: str, params: dict) -> str:
    """File name of a product's control image for one canvas size and pair of thresholds."""
    return f"{product_id}__{params['width']}x{params['height']}_canny{params['canny_low']}-{params['canny_high']}.png"
