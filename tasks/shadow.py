"""A grounded shadow for a pasted product, drawn from its mask: deterministic, no model.

The shadow is drawn on the background first and the product pasted over it, so only the part
outside the product shows. Sizes are shares of the product's height on the image, so the same
settings give the same look at 512 px and at 2,000 px.

Relighting the product to its scene with a model (IC-Light) would go where `finish.relight` is
called (adapters/steps/finishing.py), between the shadow and the paste-back; it is not built.
"""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image, ImageDraw

from catalogs.models import Shadow

CONTACT_HEIGHT = 0.06  # the contact ellipse's height as a share of the product's height
SHADOW_FLOOR = 0.01  # alpha below this is not counted as shadow (`shadow_region`)


def _blurred(alpha: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(alpha, (0, 0), sigmaX=sigma, sigmaY=sigma) if sigma >= 0.5 else alpha


def shadow_alpha(mask: np.ndarray, shadow: Shadow) -> np.ndarray:
    """The shadow's opacity per pixel (float32, 0..`shadow.opacity`) for a product mask (booleans, H x W)."""
    height, width = mask.shape
    alpha = np.zeros((height, width), dtype=np.float32)
    if not mask.any():
        return alpha
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    product_h = float(bottom - top)
    sigma = shadow.blur * product_h
    if shadow.type in ("contact", "both"):
        half_w = shadow.size * (right - left) / 2
        half_h = max(1.0, CONTACT_HEIGHT * product_h / 2)
        centre_x = (left + right) / 2
        ellipse = Image.new("L", (width, height), 0)
        ImageDraw.Draw(ellipse).ellipse([centre_x - half_w, bottom - half_h, centre_x + half_w, bottom + half_h], fill=255)
        contact = _blurred(np.asarray(ellipse, dtype=np.float32) / 255.0, max(sigma / 2, half_h / 2))
        alpha = np.maximum(alpha, contact)
    if shadow.type in ("drop", "both"):
        dx, dy = round(shadow.offset[0] * product_h), round(shadow.offset[1] * product_h)
        moved = cv2.warpAffine(mask.astype(np.float32), np.float32([[1, 0, dx], [0, 1, dy]]), (width, height))
        alpha = np.maximum(alpha, _blurred(moved, sigma) * 0.8)
    return np.clip(alpha * shadow.opacity, 0.0, 1.0).astype(np.float32)


def draw_shadow(image: Image.Image, alpha: np.ndarray, colour: tuple[int, int, int] = (0, 0, 0)) -> Image.Image:
    """The image with the shadow laid over it (`alpha`: `shadow_alpha` at the image's size), as RGB."""
    if alpha.shape != (image.height, image.width):
        raise ValueError(f"shadow is {alpha.shape[1]}x{alpha.shape[0]}, the image {image.width}x{image.height}")
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    a = alpha[..., None]
    out = rgb * (1.0 - a) + np.asarray(colour, dtype=np.float32) * a
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8))


def shadow_region(alpha: np.ndarray) -> np.ndarray:
    """Where the shadow shows (booleans): the pixels a white-background check allows to be grey."""
    return alpha >= SHADOW_FLOOR
