"""Product masks: which pixels of a product photo are the product.

A mask is an 8-bit grayscale image the size of the photo; 255 is product, 0 is background,
values between are soft edges (an alpha channel keeps its anti-aliasing). Where a mask comes
from, in order of precedence:

- `file`: an explicit `mask.png` beside the photo;
- `alpha`: the photo's own alpha channel, when some pixel is not fully opaque;
- `auto`: the photo's background is plain (white or another near-uniform colour, judged
  from the image border): everything joined to the border in that colour is background;
- `none`: no mask; later steps treat the whole photo as the product.
"""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np
from PIL import Image

__all__ = [
    "MaskSource",
    "alpha_mask",
    "auto_mask",
    "border_colour",
    "border_connected",
    "choose_mask_source",
    "mask_coverage",
    "product_mask",
]

MaskSource = Literal["file", "alpha", "auto", "none"]

# The border band that decides "plain background": 2% of the short side, at least 2 px.
BORDER_FRACTION = 0.02
# Share of border pixels that must match the background colour. Not 100%: a product that
# touches the frame (a shadow, a cable) still leaves a plain background around it.
PLAIN_SHARE = 0.97
# Largest per-channel difference from the background colour that still counts as background:
# covers JPEG noise and a soft studio gradient, not a textured surface.
TOLERANCE = 24
# An automatic mask that finds almost nothing, or almost everything, found no product.
MIN_COVERAGE = 0.005
MAX_COVERAGE = 0.95
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})


def choose_mask_source(*, has_file: bool, has_alpha: bool, has_auto: bool) -> MaskSource:
    """The precedence rule: explicit file, else alpha channel, else automatic, else none."""
    if has_file:
        return "file"
    if has_alpha:
        return "alpha"
    return "auto" if has_auto else "none"


def alpha_mask(image: Image.Image) -> Image.Image | None:
    """The image's alpha channel as a mask, or None when it has none or it is fully opaque."""
    if image.mode in _ALPHA_MODES:
        alpha = image.getchannel("A")
    elif "transparency" in image.info:  # palette or grayscale PNG with a transparent colour
        alpha = image.convert("RGBA").getchannel("A")
    else:
        return None
    low, _ = alpha.getextrema()
    return alpha if low < 255 else None


def border_colour(rgb: np.ndarray) -> tuple[int, int, int] | None:
    """The background colour when the image border is plain (near uniform), else None.

    `rgb` is an `HxWx3` uint8 array.
    """
    band = _border_band(rgb)
    colour = np.median(band, axis=0)
    close = np.abs(band.astype(np.int16) - colour.astype(np.int16)).max(axis=1) <= TOLERANCE
    if close.mean() < PLAIN_SHARE:
        return None
    return (int(colour[0]), int(colour[1]), int(colour[2]))


def auto_mask(rgb: np.ndarray) -> np.ndarray | None:
    """Product pixels (uint8, 0 or 255) of a photo on a plain background.

    Background is every pixel close to the border colour that is connected to the border,
    so a white label inside a product on a white background stays product. Returns None
    when the background is not plain or the result covers almost none or almost all of
    the photo.
    """
    colour = border_colour(rgb)
    if colour is None:
        return None
    diff = np.abs(rgb.astype(np.int16) - np.array(colour, dtype=np.int16)).max(axis=2)
    mask = np.where(border_connected(diff <= TOLERANCE), 0, 255).astype(np.uint8)
    # An opening removes specks of compression noise left on the background.
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    share = float(np.count_nonzero(mask)) / mask.size
    if not MIN_COVERAGE <= share <= MAX_COVERAGE:
        return None
    return mask


def border_connected(candidates: np.ndarray) -> np.ndarray:
    """The `candidates` (an `HxW` boolean array) joined to the image border through other
    candidates, side by side (4-connected), as booleans."""
    _, labels = cv2.connectedComponents(candidates.astype(np.uint8), connectivity=4)
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    return np.isin(labels, edge[edge > 0])


def product_mask(image: Image.Image, mask_file: Image.Image | None = None) -> tuple[Image.Image | None, MaskSource]:
    """The mask of an upright product photo and where it came from.

    `mask_file` is the decoded explicit mask, if the product has one; its size must match.
    Raises ValueError when it does not.
    """
    if mask_file is not None:
        if mask_file.size != image.size:
            raise ValueError(f"mask is {mask_file.width}x{mask_file.height} but the image is {image.width}x{image.height}")
        return _as_gray(mask_file), "file"
    alpha = alpha_mask(image)
    if alpha is not None:
        return alpha, "alpha"
    auto = auto_mask(np.asarray(image.convert("RGB")))
    if auto is not None:
        return Image.fromarray(auto, mode="L"), "auto"
    return None, "none"


def mask_coverage(mask: Image.Image | np.ndarray) -> float:
    """Share of pixels that are product (value 128 or more)."""
    values = np.asarray(mask)
    return float(np.count_nonzero(values >= 128)) / values.size if values.size else 0.0


def _as_gray(mask: Image.Image) -> Image.Image:
    """An explicit mask as 8-bit gray; a mask drawn as a transparent layer counts by its alpha."""
    alpha = alpha_mask(mask)
    if alpha is not None:
        return alpha
    return mask.convert("L")


def _border_band(rgb: np.ndarray) -> np.ndarray:
    """The pixels of the border band as an `Nx3` array."""
    height, width = rgb.shape[:2]
    b = max(2, round(min(height, width) * BORDER_FRACTION))
    b = min(b, max(1, min(height, width) // 2))
    parts = [rgb[:b].reshape(-1, 3), rgb[-b:].reshape(-1, 3), rgb[b:-b, :b].reshape(-1, 3), rgb[b:-b, -b:].reshape(-1, 3)]
    return np.concatenate(parts)
