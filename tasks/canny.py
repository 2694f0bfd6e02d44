"""Canvas images: the product placed on the generation canvas, and the control images made from it.

Kinds of canvas image (`canvas_images`), each the generation canvas's size:
- `canny`: canny edges of the fitted product, as controlnet_aux's `CannyDetector` draws them;
- `softedge`: soft gradient lines (a cheap stand-in for HED/PiDiNet soft-edge maps);
- `depth`: a pseudo depth map from the product mask, near (white) at the product's middle,
  far (black) on the background (a stand-in for a depth estimator: the product stands out);
- `mask`: the product mask as a control image (white product on black);
- `canvas`: the product fitted on the canvas, RGB on white (preserve mode's init image and
  the image an IP-Adapter fed the product photo sees);
- `keep`: 8-bit mask, 255 where preserve mode keeps the product's own pixels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import cv2
import numpy as np
from PIL import Image

from tasks.channels import channel_of, params_box


def fit_to_canvas(image: Image.Image, width: int, height: int, background: tuple[int, int, int] = (255, 255, 255),
                  box: Sequence[int] | None = None) -> Image.Image:
    """The image scaled to fit inside width x height, centred on a plain canvas, as RGB.

    With `box` (left, top, right, bottom: a channel's product box, `tasks.channels.product_box`)
    the image is fitted and centred inside that box instead of the whole canvas.
    Transparent pixels become the background colour, so a cut-out product keeps its outline.
    """
    if image.mode not in ("RGB", "RGBA"):
        image = image.convert("RGBA" if "transparency" in image.info or image.mode in ("LA", "PA") else "RGB")
    left, top, right, bottom = box if box is not None else (0, 0, width, height)
    room_w, room_h = right - left, bottom - top
    scale = min(room_w / image.width, room_h / image.height)
    size = (max(1, min(room_w, round(image.width * scale))), max(1, min(room_h, round(image.height * scale))))
    resized = image.resize(size, Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (width, height), background)
    offset = (left + (room_w - size[0]) // 2, top + (room_h - size[1]) // 2)
    canvas.paste(resized, offset, resized if resized.mode == "RGBA" else None)
    return canvas


def canny_map(image: Image.Image, low: int, high: int) -> Image.Image:
    """The canny edges of `image` as the canny ControlNet was trained on them (what controlnet_aux's
    `CannyDetector` draws: OpenCV's Canny on the RGB image, white edges on black, as RGB), at exactly the
    image's size.

    OpenCV is called directly: controlnet_aux's package imports every annotator and torch with them (about
    0.5 GB and 1.5 CPU seconds), in processes that run no model (a fleet's campaign, a `sim` run).
    `CannyDetector` rounds each side to a multiple of 64, which squashes a 64x80 or 72x128 canvas: the
    canvas is grown to multiples of 64 by repeating its edge pixels, detected, and cropped back, as the
    control maps always were. tests/test_canny.py holds the maps pixel for pixel equal to `CannyDetector`'s.
    """
    if low > high:
        raise ValueError(f"canny low threshold {low} is above high threshold {high}")
    rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    pad_h, pad_w = -rgb.shape[0] % 64, -rgb.shape[1] % 64
    if pad_h or pad_w:
        rgb = np.pad(rgb, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    edges = cv2.Canny(rgb, low, high)[: image.height, : image.width]
    return Image.fromarray(np.ascontiguousarray(edges)).convert("RGB")


def control_image(product: Image.Image, width: int, height: int, low: int, high: int) -> Image.Image:
    """The canny control image of one product for one canvas size: edges of the fitted product."""
    return canny_map(fit_to_canvas(product, width, height), low, high)


def canvas_mask(product: Image.Image, mask: Image.Image | None, width: int, height: int,
                box: Sequence[int] | None = None) -> Image.Image:
    """The product's mask (white = product) placed on the canvas exactly where `fit_to_canvas` puts the product.

    `mask` wins, then the photo's alpha channel; without either the whole photo counts as product.
    """
    if mask is not None:
        if mask.size != product.size:
            raise ValueError(f"product mask is {mask.width}x{mask.height} but the product is {product.width}x{product.height}")
        source = mask.convert("L")
    elif product.mode in ("RGBA", "LA", "PA") or "transparency" in product.info:
        source = product.convert("RGBA").getchannel("A")
    else:
        source = Image.new("L", product.size, 255)
    return fit_to_canvas(source.convert("RGB"), width, height, background=(0, 0, 0), box=box).convert("L")


def depth_map(mask: Image.Image) -> Image.Image:
    """A pseudo depth map of a canvas mask: a dome rising from the product's outline to its middle."""
    inside = (np.asarray(mask.convert("L")) >= 128).astype(np.uint8)
    distance = cv2.distanceTransform(inside, cv2.DIST_L2, 5)
    peak = float(distance.max())
    if peak == 0:
        return Image.new("RGB", mask.size)
    # sqrt of the distance: a rounded body rather than a pyramid; 64 keeps the outline in front of the far background.
    dome = np.where(inside > 0, 64 + 191 * np.sqrt(distance / peak), 0).astype(np.uint8)
    return Image.fromarray(dome).convert("RGB")


def softedge_map(image: Image.Image) -> Image.Image:
    """Soft edges of an image: blurred gradient magnitude, normalised to 0..255."""
    gray = cv2.GaussianBlur(np.asarray(image.convert("L"), dtype=np.float32), (5, 5), 1.5)
    magnitude = cv2.magnitude(cv2.Sobel(gray, cv2.CV_32F, 1, 0), cv2.Sobel(gray, cv2.CV_32F, 0, 1))
    magnitude = cv2.GaussianBlur(magnitude, (5, 5), 1.0)
    top = float(magnitude.max())
    scaled = magnitude / top * 255 if top > 0 else magnitude
    return Image.fromarray(scaled.astype(np.uint8)).convert("RGB")


def canvas_kinds(params: Mapping, control_types: Sequence[str], adapter_images: Sequence[str] = ("style",)) -> tuple[str, ...]:
    """The canvas images a batch needs: one per ControlNet, plus the product canvas and keep-mask where used."""
    kinds = list(control_types)
    if params.get("mode") == "preserve":
        kinds += ["canvas", "keep"]
    if "product" in adapter_images and "canvas" not in kinds:
        kinds.append("canvas")
    return tuple(kinds)


def canvas_images(product: Image.Image, mask: Image.Image | None, params: Mapping, kinds: Sequence[str]) -> dict[str, Image.Image]:
    """The named canvas images of one product for one batch's parameters.

    Raises:
        ValueError: `keep` is asked for but the product has no mask and no transparency.
    """
    width, height = params["width"], params["height"]
    box = params_box(params)
    has_mask = mask is not None or product.mode in ("RGBA", "LA", "PA") or "transparency" in product.info
    if "keep" in kinds and not has_mask:
        raise ValueError("preserve mode needs the product's mask (mask.png, transparency or a plain background)")
    fitted = fit_to_canvas(product, width, height, box=box)
    placed = canvas_mask(product, mask, width, height, box) if {"depth", "mask", "keep"} & set(kinds) else None
    made: dict[str, Image.Image] = {}
    for kind in kinds:
        if kind == "canny":
            made[kind] = canny_map(fitted, params["canny_low"], params["canny_high"])
        elif kind == "softedge":
            made[kind] = softedge_map(fitted)
        elif kind == "depth":
            made[kind] = depth_map(placed)
        elif kind == "mask":
            made[kind] = placed.convert("RGB")
        elif kind == "canvas":
            made[kind] = fitted
        elif kind == "keep":
            made[kind] = placed
        else:
            raise ValueError(f"unknown canvas image kind {kind!r}")
    return made


def canvas_name(product_id: str, params: Mapping, kind: str = "canny") -> str:
    """File name of one canvas image of a product; canny names its thresholds, since they shape it, and a
    channel's images name the channel (its layout places the product)."""
    size = f"{params['width']}x{params['height']}"
    if channel := channel_of(params):
        size = f"{channel}-{size}"
    if kind == "canny":
        return f"{product_id}__{size}_canny{params['canny_low']}-{params['canny_high']}.png"
    return f"{product_id}__{size}_{kind}.png"


def control_name(product_id: str, params: Mapping) -> str:
    """File name of a product's canny control image for one canvas size and pair of thresholds."""
    return canvas_name(product_id, params, "canny")


def pad_to_square(image: Image.Image) -> Image.Image:
    """The image centred on a square of its border's mean colour: an image encoder that centre-crops
    to a square then sees all of it, and the padding reads as background rather than a frame."""
    rgb = fit_to_canvas(image, image.width, image.height) if image.mode != "RGB" else image
    side = max(rgb.size)
    if rgb.width == rgb.height:
        return rgb
    arr = np.asarray(rgb)
    border = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]])
    colour = tuple(int(c) for c in border.mean(axis=0).round())
    square = Image.new("RGB", (side, side), colour)
    square.paste(rgb, ((side - rgb.width) // 2, (side - rgb.height) // 2))
    return square


def cover_canvas(image: Image.Image, width: int, height: int) -> Image.Image:
    """The image scaled to cover width x height and centre-cropped to it, as RGB (an init image has no margins)."""
    rgb = fit_to_canvas(image, image.width, image.height) if image.mode != "RGB" else image
    scale = max(width / rgb.width, height / rgb.height)
    size = (max(width, round(rgb.width * scale)), max(height, round(rgb.height * scale)))
    resized = rgb.resize(size, Image.Resampling.LANCZOS)
    left, top = (size[0] - width) // 2, (size[1] - height) // 2
    return resized.crop((left, top, left + width, top + height))
