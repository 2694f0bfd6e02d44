"""Catalog images read from the store: decoded with the catalog's safety limits, and product masks."""

from __future__ import annotations

import hashlib

from PIL import Image

from adapters.infra.storage import ObjectStore
from catalogs.models import Product
from tasks.catalog_rules import Rejected, decode_image, normalize_image
from tasks.masks import MaskSource, product_mask

__all__ = ["load_image", "load_mask"]


def load_image(store: ObjectStore, uri: str, sha256: str = "") -> Image.Image:
    """The image at `uri`, decoded with the catalog's safety limits, upright, as RGBA if it
    has real alpha, else RGB (16-bit scaled to 8 bits, CMYK converted).

    `sha256` is the digest the catalog snapshot recorded for the object: bytes that differ
    (the object was overwritten since) are refused rather than used under the old digest.

    Raises FileNotFoundError if missing, ValueError if not a usable image or not the recorded one.
    """
    data = store.get(uri)
    if sha256 and hashlib.sha256(data).hexdigest() != sha256:
        raise ValueError(f"{uri} changed since the catalog snapshot that recorded it "
                         f"(sha256 {hashlib.sha256(data).hexdigest()[:12]}, recorded {sha256[:12]}): refresh the catalog")
    try:
        return normalize_image(decode_image(data, uri))
    except Rejected as exc:
        raise ValueError(str(exc)) from None


def load_mask(store: ObjectStore, product: Product, photo: Image.Image | None = None) -> tuple[Image.Image | None, MaskSource]:
    """The product's mask (8-bit gray, 255 = product) and where it came from; (None, "none") without one.

    `photo` is the product photo when the caller has it already (`load_image` of its
    `image_key`); else it is read here.
    """
    if photo is None:
        photo = load_image(store, product.image_key, product.sha256)
    explicit = load_image(store, product.mask_key) if product.mask_key else None
    return product_mask(photo, explicit)
