"""Rules for single catalog objects: safe keys, safe decoding, image facts, perceptual hashes, duplicates.

Everything here works on bytes and pixels already in memory; fetching is the adapters' job.
A refused object raises `Rejected`, whose message is the quarantine reason: it names the
object (catalog-relative) and the problem in words a person can act on.
"""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Literal

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from tasks.layout import PRODUCTS, STYLES
from tasks.masks import alpha_mask, auto_mask, mask_coverage
from tasks.phash import HASH_SIZE, dct_hash

__all__ = [
    "IMAGE_SUFFIXES",
    "MAX_ASPECT",
    "MAX_PIXELS",
    "MIN_SIDE",
    "RULES_VERSION",
    "Duplicate",
    "ImageFacts",
    "Rejected",
    "Role",
    "check_dimensions",
    "decode_image",
    "find_duplicates",
    "inspect_image",
    "key_problem",
    "normalize_image",
    "object_role",
    "perceptual_hash",
    "size_problem",
]

# Bump when a rule below changes what is accepted or recorded: a refresh then re-reads
# every object instead of trusting facts recorded under the old rules.
RULES_VERSION = 1

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif")
# Only these decoders ever see catalog bytes: fewer parsers exposed to untrusted input.
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF")
# 40 MP is far above any product photo and far below what would exhaust a worker's memory.
MAX_PIXELS = 40_000_000
# Generation canvases are 512 px and more: a photo under 64 px on its short side has too
# little detail for a control image or an image prompt.
MIN_SIDE = 64
# Banners and slivers: neither a product photo nor a useful style reference.
MAX_ASPECT = 10.0
# Objects larger than this are refused from the listing, before any byte is downloaded.
MAX_IMAGE_BYTES = 100 * 1024 * 1024
MAX_META_BYTES = 64 * 1024
# Hamming distance (of 64 bits) up to which two perceptual hashes are near duplicates.
# Re-encoding or resizing a photo moves its hash by 0-2 bits; different photos differ by 20+.
NEAR_DUPLICATE_BITS = 8

Role = Literal["image", "mask", "meta"]
_SIXTEEN_BIT = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})
_BOMB_PIXELS = re.compile(r"Image size \((\d+) pixels\)")


class Rejected(ValueError):
    """An object or catalog entry cannot be used; the message is the quarantine reason."""


# --------------------------------------------------------------------------- keys


def key_problem(key: str) -> str | None:
    """Why a catalog-relative object key must not be read, or None when it is safe.

    Keys come from whoever can write to the bucket: a `..` segment, an absolute path or
    a backslash could make a key climb out of its folder when it is joined or mirrored.
    """
    if key.startswith("/"):
        return "absolute path"
    segments = key.split("/")
    if ".." in segments:
        return "'..' segment (a key must not climb out of its folder)"
    if "." in segments:
        return "'.' segment"
    if "" in segments[:-1]:
        return "empty path segment ('//' makes the rest an absolute path)"
    if "\\" in key:
        return "backslash in the key (a Windows path separator)"
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in key):
        return "control character in the key"
    return None


def object_role(key: str) -> Role | None:
    """What a `products/<id>/<file>` or `styles/<id>/<file>` object is for, or None if the catalog does not use it."""
    parts = key.split("/")
    if len(parts) != 3 or parts[2].startswith("."):
        return None
    section, name = parts[0], parts[2]
    suffix = PurePosixPath(name).suffix.lower()
    if section == PRODUCTS:
        if name == "product.yaml":
            return "meta"
        if name == "mask.png":
            return "mask"
        if PurePosixPath(name).stem == "image" and suffix in IMAGE_SUFFIXES:
            return "image"
    elif section == STYLES:
        if name == "style.yaml":
            return "meta"
        if suffix in IMAGE_SUFFIXES:
            return "image"
    return None


def size_problem(role: Role, size: int) -> str | None:
    """Why an object of this role and byte size is refused without downloading it, or None."""
    if size == 0:
        return "empty file (0 bytes)"
    limit = MAX_META_BYTES if role == "meta" else MAX_IMAGE_BYTES
    if size > limit:
        return f"file is {_bytes(size)}, over the {_bytes(limit)} limit for {'a metadata file' if role == 'meta' else 'an image'}"
    return None


# --------------------------------------------------------------------------- images


@dataclass(frozen=True)
class ImageFacts:
    """What is recorded about an accepted image. Sizes are as displayed (after EXIF rotation);
    `mode` is the stored pixel mode (CMYK, I;16, P, ...) before conversion to RGB."""

    width: int
    height: int
    mode: str
    format: str
    phash: str
    has_alpha: bool
    auto_mask: bool = False
    coverage: float = 0.0


def decode_image(data: bytes, where: str) -> Image.Image:
    """Decode `data` fully, refusing empty, unknown, oversized, animated and truncated images.

    The pixel limit is checked from the header, before any pixel is allocated. Size and
    aspect rules for catalog images are `check_dimensions`, applied by `inspect_image`.
    """
    if not data:
        raise Rejected(f"{where}: empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            # PIL warns from 89 MP; our own, lower limit below is the one that counts.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
        if image.width * image.height > MAX_PIXELS:
            raise Rejected(
                f"{where}: image is {image.width}x{image.height} ({image.width * image.height / 1e6:,.0f} MP), "
                f"over the {MAX_PIXELS // 1_000_000} MP limit; not decoded"
            )
        if getattr(image, "is_animated", False):
            raise Rejected(
                f"{where}: animated image ({image.n_frames} frames); use a single still image (PNG or JPEG)"
            )
        image.load()  # header-only opening would miss a truncated body
    except UnidentifiedImageError:
        raise Rejected(f"{where}: not an image: the content is not PNG, JPEG, WebP or GIF{_starts(data)}") from None
    except Image.DecompressionBombError as exc:
        found = _BOMB_PIXELS.search(str(exc))
        pixels = f"{int(found.group(1)) / 1e6:,.0f} MP" if found else "too many pixels"
        raise Rejected(f"{where}: image declares {pixels}, over the {MAX_PIXELS // 1_000_000} MP limit; not decoded") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        if isinstance(exc, Rejected):
            raise
        raise Rejected(f"{where}: truncated or corrupt image data ({exc})") from None
    return image


def check_dimensions(width: int, height: int, where: str) -> None:
    """Refuse catalog images far too small for generation or of an absurd aspect ratio."""
    if min(width, height) < MIN_SIDE:
        raise Rejected(f"{where}: image is {width}x{height}, too small (the short side must be at least {MIN_SIDE} px)")
    ratio = max(width, height) / min(width, height)
    if ratio > MAX_ASPECT:
        raise Rejected(f"{where}: image is {width}x{height}, an aspect ratio of {ratio:.0f}:1 (at most {MAX_ASPECT:.0f}:1)")


def normalize_image(image: Image.Image) -> Image.Image:
    """A decoded image upright (EXIF orientation applied) as 8-bit RGB, or RGBA when some pixel is transparent.

    16-bit images are scaled to 8 bits (not clipped), CMYK goes through its embedded ICC
    profile when it has one, palette and gray images with transparency keep it as alpha.
    """
    upright = ImageOps.exif_transpose(image)
    if upright.mode in _SIXTEEN_BIT:
        values = np.asarray(upright, dtype=np.int64)
        if upright.mode != "I" or values.max(initial=0) > 255:
            values = (values.clip(0, 65535) + 128) // 257
        return Image.fromarray(values.clip(0, 255).astype(np.uint8), mode="L").convert("RGB")
    if upright.mode == "CMYK":
        return _cmyk_to_rgb(upright)
    return upright.convert("RGBA" if alpha_mask(upright) is not None else "RGB")


def inspect_image(data: bytes, where: str, *, role: Role = "image", product: bool = False) -> ImageFacts:
    """Decode and check one image; its facts, or `Rejected` with the reason.

    `product` computes what the mask rules need (alpha, automatic mask); `role="mask"`
    records the share of pixels the mask marks as product.
    """
    image = decode_image(data, where)
    check_dimensions(image.width, image.height, where)  # both rules hold under rotation
    stored_mode, fmt = image.mode, image.format or ""
    upright = normalize_image(image)
    width, height = upright.size
    if role == "mask":
        alpha = alpha_mask(upright)
        gray = alpha if alpha is not None else upright.convert("L")
        return ImageFacts(width, height, stored_mode, fmt, "", False, coverage=mask_coverage(gray))
    alpha = alpha_mask(upright)
    has_auto, coverage = False, 0.0
    if product:
        if alpha is not None:
            coverage = mask_coverage(alpha)
        else:
            auto = auto_mask(np.asarray(upright.convert("RGB")))
            has_auto, coverage = auto is not None, mask_coverage(auto) if auto is not None else 0.0
    return ImageFacts(width, height, stored_mode, fmt, perceptual_hash(upright), alpha is not None, has_auto, coverage)


def perceptual_hash(image: Image.Image) -> str:
    """64-bit DCT perceptual hash (pHash) as 16 hex digits; transparent pixels count as white."""
    if image.mode == "RGBA":
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, image)
    small = image.convert("L").resize((HASH_SIZE, HASH_SIZE), Image.Resampling.LANCZOS)
    return dct_hash(np.asarray(small, dtype=np.float32))


# --------------------------------------------------------------------------- duplicates


@dataclass(frozen=True)
class Duplicate:
    """`key` repeats `of`: byte for byte (`exact`) or to the eye (`near`, `distance` bits apart)."""

    key: str
    of: str
    kind: Literal["exact", "near"]
    distance: int


def find_duplicates(images: Sequence[tuple[str, str, str]], max_distance: int = NEAR_DUPLICATE_BITS) -> dict[str, Duplicate]:
    """Exact and near duplicates among `(key, sha256, phash)` triples, by key.

    Images are taken in key order (folder by folder: `products/rocket/` before
    `products/rocket-copy/`); each is compared with the earlier images that are not
    themselves duplicates, so every duplicate points at one original and groups do not chain.
    """
    originals: list[str] = []
    hashes: list[int] = []
    by_sha: dict[str, str] = {}
    found: dict[str, Duplicate] = {}
    for key, sha256, phash in sorted(images, key=lambda image: image[0].split("/")):
        if sha256 in by_sha:
            found[key] = Duplicate(key, by_sha[sha256], "exact", 0)
            continue
        value = int(phash, 16)
        if hashes:
            distances = np.bitwise_count(np.array(hashes, dtype=np.uint64) ^ np.uint64(value))
            nearest = int(np.argmin(distances))
            if int(distances[nearest]) <= max_distance:
                found[key] = Duplicate(key, originals[nearest], "near", int(distances[nearest]))
                continue
        by_sha[sha256] = key
        originals.append(key)
        hashes.append(value)
    return found


# --------------------------------------------------------------------------- helpers


def _cmyk_to_rgb(image: Image.Image) -> Image.Image:
    profile = image.info.get("icc_profile")
    if profile:
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
            return ImageCms.profileToProfile(image, source, ImageCms.createProfile("sRGB"), outputMode="RGB")
        except (ImageCms.PyCMSError, OSError, ValueError):
            pass  # a broken profile: the plain conversion below is still a usable picture
    return image.convert("RGB")


def _starts(data: bytes) -> str:
    head = data[:24]
    if head.isascii() and all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        return f"; it starts with text: {head.decode().strip()[:20]!r}"
    return f"; it starts with bytes {head[:8].hex(' ')}"


def _bytes(size: int) -> str:
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:.0f} {unit}"
    return f"{size} bytes"
