"""Marketplace presets: what a marketplace's main image must be, and the checks that gate its delivery.

Each preset is a square canvas of a fixed size with a background rule (`white`: the product on pure
RGB 255 with only its shadow, no generated scene), the share of the frame the product is composed to,
the least share it may fill, and the delivery format (sRGB JPEG). The checks (`marketplace_checks`)
are measured on the finished image at its delivered size; a main image whose checks fail is never
delivered, and the reason says which check and by how much.

Where the figures come from (secondary sources, 2025-2026; the marketplaces' own seller pages are
behind logins and change without notice): docs/campaign-spec.md, "Marketplace presets".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from PIL import Image

from catalogs.models import Shadow, Upscale

WHITE_TOLERANCE = 3  # a background pixel counts as white when every channel is at least 255 - this
WHITE_SHARE_MIN = 0.98  # least share of the background (outside the product and its shadow) that must be white


@dataclass(frozen=True)
class MarketplacePreset:
    """One marketplace image: its size, background rule, product fill and the thresholds of its checks."""

    name: str
    marketplace: str
    width: int
    height: int
    background: str  # white | scene
    fill: float  # the product's long side as a share of the frame's side, as composed
    min_fill: float  # the least `product_fill` the check accepts
    min_long_side: int
    format: str = "jpeg"  # sRGB JPEG, written by adapters/steps/delivery.py
    shadow: Shadow = Shadow()

    @property
    def upscale(self) -> Upscale:
        """A scene image of this preset is brought to the preset's long side (Lanczos unless the channel says)."""
        return Upscale(long_side=max(self.width, self.height))


MARKETPLACES: dict[str, MarketplacePreset] = {
    # Amazon: pure white, the product filling at least 85% of the frame, 1,000 px on the long side for
    # zoom (1,600+ recommended), sRGB JPEG, no text or logos added. 2,000 px gives zoom room.
    "amazon-main": MarketplacePreset(name="amazon-main", marketplace="Amazon", width=2000, height=2000,
                                     background="white", fill=0.9, min_fill=0.85, min_long_side=1000),
    # JD and Tmall: main images at least 800x800 on white; no published fill figure (0.7 is our default).
    "jd-main": MarketplacePreset(name="jd-main", marketplace="JD", width=800, height=800, background="white",
                                 fill=0.8, min_fill=0.7, min_long_side=800),
    "tmall-main": MarketplacePreset(name="tmall-main", marketplace="Tmall", width=800, height=800,
                                    background="white", fill=0.8, min_fill=0.7, min_long_side=800),
    # Shopify: 2048x2048 recommended for square product images; white background and 0.8 fill are our defaults.
    "shopify-square": MarketplacePreset(name="shopify-square", marketplace="Shopify", width=2048, height=2048,
                                        background="white", fill=0.85, min_fill=0.8, min_long_side=2048),
}
CHECKS = ("long_side", "white_background_share", "product_fill", "text_added")


def product_fill(mask: np.ndarray) -> float:
    """How much of the frame the product spans: its bounding box's width or height as a share of the
    image's, whichever is larger (Amazon's "fills 85% of the frame"); 0 without product pixels."""
    if not mask.any():
        return 0.0
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return max((cols[-1] - cols[0] + 1) / mask.shape[1], (rows[-1] - rows[0] + 1) / mask.shape[0])


def white_background_share(image: Image.Image, product: np.ndarray, shadow: np.ndarray | None = None,
                           tolerance: int = WHITE_TOLERANCE) -> float | None:
    """Share of the background (outside the product and, where given, its shadow) within `tolerance` of
    RGB 255 on every channel; None when the product covers the whole image."""
    rgb = np.asarray(image.convert("RGB"))
    background = ~product if shadow is None else ~(product | shadow)
    if not background.any():
        return None
    white = (rgb >= 255 - tolerance).all(axis=2)
    return float((white & background).sum() / background.sum())


def marketplace_checks(image: Image.Image, product: np.ndarray, preset: MarketplacePreset, *,
                       shadow: np.ndarray | None = None, text_added: bool = False) -> tuple[dict, list[str]]:
    """The preset's checks of one finished image, and why it fails each that it fails (empty: it passes).

    `product` is the product's mask at the image's size (booleans), `shadow` where its shadow falls
    (allowed to be grey); `text_added` whether anything drew text or a logo on the image (stylematrix
    never does on a delivered image; a model's painted text is not detected here).
    """
    if product.shape != (image.height, image.width):
        raise ValueError(f"marketplace {preset.name}: product mask is {product.shape[1]}x{product.shape[0]}, "
                         f"the image {image.width}x{image.height}")
    long_side = max(image.size)
    fill = product_fill(product)
    white = white_background_share(image, product, shadow) if preset.background == "white" else None
    checks = {"long_side": long_side, "white_background_share": white, "product_fill": fill, "text_added": text_added}
    reasons = []
    if long_side < preset.min_long_side:
        reasons.append(f"long_side {long_side} px < {preset.min_long_side}")
    if preset.background == "white" and (white is None or white < WHITE_SHARE_MIN):
        reasons.append(f"white_background_share {white if white is None else round(white, 3)} < {WHITE_SHARE_MIN} "
                       f"(background not RGB 255 within {WHITE_TOLERANCE})")
    if fill < preset.min_fill:
        reasons.append(f"product_fill {fill:.2f} < {preset.min_fill}")
    if text_added:
        reasons.append("text_added: text or a logo was drawn on the image")
    return checks, reasons


def check_words(row: Mapping) -> str:
    """`amazon-main: checks pass` or `amazon-main: FAIL product_fill 0.62 < 0.85`: a finish row's checks in one line."""
    if not row.get("marketplace"):
        return ""
    reasons = list(row.get("check_reasons") or ())
    return f"{row['marketplace']}: " + ("checks pass" if not reasons else "FAIL " + "; ".join(reasons))
