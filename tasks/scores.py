"""Scores that need no weights: product fidelity, technical quality, background hashes.

Every function takes decoded images (PIL) or arrays and returns plain numbers. Fidelity is
measured inside the product's mask on the generation canvas: the ControlNet locks the
product's edges there, so that is where an altered product shows.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
from PIL import Image

from tasks.canny import canvas_mask
from tasks.phash import HASH_SIZE, dct_hash

EDGE_TOLERANCE = 2  # pixels an output edge may sit from the product's edge and still count
BLANK_STD = 0.5  # an image whose grey levels vary less than this carries no picture
CLIPPED_LOW, CLIPPED_HIGH = 1, 254  # grey levels counted as crushed black or blown white
MIN_BACKGROUND_SHARE = 0.05  # below this the whole image is hashed: there is no background to speak of
SSIM_WINDOW = 7
DELTA_E_PIXELS = 32_768  # at most this many pixels of the region go into the mean colour difference


# --------------------------------------------------------------------------- the product region


def product_mask_on_canvas(product: Image.Image, width: int, height: int, mask: Image.Image | None = None,
                           box: Sequence[int] | None = None) -> np.ndarray:
    """Where the product sits on a width x height canvas, as booleans of shape (height, width).

    Placed exactly as the control images place the product (`tasks.canny.canvas_mask`): the
    product's mask wins (`tasks.masks.product_mask`), then its alpha; else the whole fitted photo.
    `box` is a channel's product box (None: the whole canvas).
    """
    return np.asarray(canvas_mask(product, mask, width, height, box)) >= 128


def _shrink(mask: np.ndarray, pixels: int) -> np.ndarray:
    return ~_grow(~mask, pixels)


def _grow(mask: np.ndarray, pixels: int) -> np.ndarray:
    if pixels <= 0:
        return mask
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * pixels + 1, 2 * pixels + 1))
    return cv2.dilate(mask.astype(np.uint8), kernel).astype(bool)


# --------------------------------------------------------------------------- product fidelity


def edge_map(image: Image.Image, low: int, high: int) -> np.ndarray:
    """Canny edges of an image as booleans, computed as the control image's edges are (cv2 on RGB)."""
    return cv2.Canny(np.asarray(image.convert("RGB"), dtype=np.uint8), low, high) > 0


def edge_f1(reference: np.ndarray, output: np.ndarray, mask: np.ndarray, tolerance: int = EDGE_TOLERANCE) -> float | None:
    """F1 of the output's edges against the product's edges inside the product region, beyond chance.

    An edge pixel counts as matched when an edge of the other map lies within `tolerance`
    pixels; the region is grown by the tolerance so the product's outline is inside it.
    Precision is corrected for chance (as Cohen's kappa is): a busy product puts most of its
    region near some edge, so random texture would otherwise look faithful. An output whose
    edges land near the product's no more often than random pixels would scores 0.
    None when the product has no edges there, or edges everywhere (nothing to tell apart).
    """
    region = _grow(mask, tolerance)
    ref = reference & region
    out = output & region
    if not ref.any():
        return None
    near_ref = _grow(ref, tolerance)
    chance = float(near_ref[region].mean())
    if chance > 0.999:
        return None
    if not out.any():
        return 0.0
    precision = float((out & near_ref).sum()) / float(out.sum())
    recall = float((ref & _grow(out, tolerance)).sum()) / float(ref.sum())
    precision = max(0.0, (precision - chance) / (1.0 - chance))
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def masked_ssim(reference: Image.Image, output: Image.Image, mask: np.ndarray) -> float | None:
    """Mean structural similarity (grey levels, 7 px windows) inside the product region; None if it is empty."""
    from skimage.metrics import structural_similarity

    if not mask.any():
        return None
    a = np.asarray(reference.convert("L"), dtype=np.float64)
    b = np.asarray(output.convert("L"), dtype=np.float64)
    _, ssim_map = structural_similarity(a, b, win_size=SSIM_WINDOW, data_range=255.0, full=True)
    # Windows that straddle the outline see the new background: keep to the product's inside
    # unless the product is too thin to have one.
    inner = _shrink(mask, SSIM_WINDOW // 2)
    return float(ssim_map[inner if inner.any() else mask].mean())


def mean_delta_e(reference: Image.Image, output: Image.Image, mask: np.ndarray) -> float | None:
    """Mean CIEDE2000 colour difference over the product region (0 = same colours; ~2.3 is just noticeable)."""
    from skimage.color import deltaE_ciede2000, rgb2lab

    where = np.flatnonzero(mask)
    if not where.size:
        return None
    # CIEDE2000 is costly (0.2 s for a 512 px product): evenly spaced pixels estimate the mean.
    where = where[:: max(1, where.size // DELTA_E_PIXELS)]
    a = rgb2lab(np.asarray(reference.convert("RGB")).reshape(-1, 3)[where][None] / 255.0)
    b = rgb2lab(np.asarray(output.convert("RGB")).reshape(-1, 3)[where][None] / 255.0)
    return float(deltaE_ciede2000(a, b).mean())


# --------------------------------------------------------------------------- technical quality


def _grey(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("L"), dtype=np.uint8)


def sharpness(image: Image.Image) -> float:
    """Variance of the Laplacian of the grey image: higher is crisper."""
    return float(cv2.Laplacian(_grey(image), cv2.CV_64F).var())


def exposure(image: Image.Image) -> tuple[float, float]:
    """(mean luminance in 0..1, share of pixels crushed to black or blown to white)."""
    grey = _grey(image)
    clipped = (grey <= CLIPPED_LOW) | (grey >= CLIPPED_HIGH)
    return float(grey.mean() / 255.0), float(clipped.mean())


def clipped_share(image: Image.Image, region: np.ndarray) -> float:
    """Share of a region's pixels crushed to black or blown to white (a main image's product, not its white ground)."""
    grey = _grey(image)
    return float(((grey <= CLIPPED_LOW) | (grey >= CLIPPED_HIGH))[region].mean())


def colourfulness(image: Image.Image) -> float:
    """Hasler and Suesstrunk's colourfulness (0 for grey; ~100 is extremely colourful)."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float64)
    rg = rgb[..., 0] - rgb[..., 1]
    yb = 0.5 * (rgb[..., 0] + rgb[..., 1]) - rgb[..., 2]
    return float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))


def is_blank(image: Image.Image) -> bool:
    """True when the image is one flat colour (what a NaN-ridden or refused generation decodes to)."""
    return float(_grey(image).std()) < BLANK_STD and float(np.asarray(image.convert("RGB")).std(axis=(0, 1)).max()) < BLANK_STD


# --------------------------------------------------------------------------- duplicates


def background_hash(image: Image.Image, mask: np.ndarray) -> str:
    """A 64-bit perceptual hash (DCT) of the image with the product region blanked out, as 16 hex digits.

    The ControlNet draws the product the same way in every image of a product, so a whole-image
    hash says little; the background is what varies. When the product fills nearly the whole
    canvas, the whole image is hashed.
    """
    grey = _grey(image).astype(np.float32)
    background = background_region(mask)
    grey = np.where(background, grey, grey[background].mean())
    small = cv2.resize(grey, (HASH_SIZE, HASH_SIZE), interpolation=cv2.INTER_AREA)
    # Float noise on a flat image must not decide bits: coefficients under half a grey level are zero.
    return dct_hash(small, noise_floor=0.5)


def background_region(mask: np.ndarray) -> np.ndarray:
    """Where the background is: outside the product region grown by EDGE_TOLERANCE (its outline blends
    into both); the whole image when that leaves under MIN_BACKGROUND_SHARE of it."""
    background = ~_grow(mask, EDGE_TOLERANCE)
    return background if background.mean() >= MIN_BACKGROUND_SHARE else np.ones_like(background)


def duplicate_groups(hashes: Sequence[str | None], max_distance: int) -> list[int | None]:
    """A group number per hash: hashes within `max_distance` of each other share one, transitively.

    Groups are numbered by their first member; an unhashed item (None) is in no group.
    """
    parent = list(range(len(hashes)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    # Every pair is compared (a run's product has tens of thousands of images): a vectorised row of
    # distances per hash, and unions in the same order as a plain double loop, so the groups are too.
    hashes = [h if isinstance(h, str) else None for h in hashes]  # a missing hash may arrive as None or NaN
    known = np.array([h is not None for h in hashes], dtype=bool)
    bits = np.array([int(h, 16) if h is not None else 0 for h in hashes], dtype=np.uint64)
    for i in np.flatnonzero(known):
        near = np.bitwise_count(bits[i + 1:] ^ bits[i]) <= max_distance
        for j in np.flatnonzero(near & known[i + 1:]) + i + 1:
            parent[root(int(j))] = root(int(i))
    return [None if h is None else root(i) for i, h in enumerate(hashes)]


# --------------------------------------------------------------------------- all of them


def pixel_scores(output: Image.Image, *, product_canvas: Image.Image | None, control_edges: np.ndarray | None,
                 mask: np.ndarray, canny_low: int, canny_high: int) -> tuple[dict[str, float | str | None], list[str]]:
    """Every weight-free score of one output image, and a note for each scorer that could not run.

    `product_canvas` is the product fitted on the canvas as the control image was made from it,
    `control_edges` the control image as booleans. A scorer that fails leaves its score None;
    without a product canvas (its photo could not be read) the fidelity scores are None.
    """
    problems: list[str] = []

    def attempt(name: str, fn, *args):
        try:
            return fn(*args)
        except Exception as exc:  # one scorer's failure costs its column, never the image
            problems.append(f"{name}: {type(exc).__name__}: {exc}")
            return None

    known = product_canvas is not None and control_edges is not None
    edges = attempt("edge_f1", edge_map, output, canny_low, canny_high) if known else None
    light = attempt("exposure", exposure, output) or (None, None)
    scores: dict[str, float | str | None] = {
        "edge_f1": None if edges is None else attempt("edge_f1", edge_f1, control_edges, edges, mask),
        "product_ssim": attempt("product_ssim", masked_ssim, product_canvas, output, mask) if known else None,
        "product_delta_e": attempt("product_delta_e", mean_delta_e, product_canvas, output, mask) if known else None,
        "sharpness": attempt("sharpness", sharpness, output),
        "luminance": light[0],
        "clipped_share": light[1],
        "colourfulness": attempt("colourfulness", colourfulness, output),
        "background_hash": attempt("background_hash", background_hash, output, mask),
    }
    return scores, problems
