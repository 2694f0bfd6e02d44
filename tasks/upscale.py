"""Upscaling without a model, and the tile geometry the model's tiled pass uses.

The tiled pass (adapters/model/upscale.py) is the ControlNet-tile "hires fix": the image is first brought
to its size with Lanczos (`lanczos_to`), then refined tile by tile. Tiles overlap (`tile_grid`), and
each tile's result is blended into the whole with a weight that falls linearly to zero across the
overlap (`blend_weights`, `TileCanvas`), so seams do not show and memory stays that of one tile.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

Box = tuple[int, int, int, int]  # left, top, right, bottom; right and bottom exclusive


def target_size(width: int, height: int, long_side: int, multiple: int = 1) -> tuple[int, int]:
    """The size of a width x height image scaled so its long side is `long_side`, each side rounded to `multiple`."""
    if width < 1 or height < 1:
        raise ValueError(f"upscale: image size {width}x{height} is empty")
    scale = long_side / max(width, height)

    def side(v: int) -> int:
        return max(multiple, round(v * scale / multiple) * multiple)

    return side(width), side(height)


def lanczos_to(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """The image resized to `size` with Lanczos, as RGB (the `lanczos` method, and the tiled pass's start)."""
    image = image.convert("RGB")
    return image if image.size == tuple(size) else image.resize(size, Image.Resampling.LANCZOS)


def _starts(length: int, tile: int, overlap: int, multiple: int) -> list[int]:
    if length <= tile:
        return [0]
    stride = tile - overlap
    count = -(-(length - overlap) // stride)  # ceil: enough tiles to cover the length
    # Spread the tiles evenly so the last one ends at the edge, each start on the `multiple` grid
    # (the VAE's 8 px); overlaps come out at least `overlap` less that rounding.
    last = length - tile
    return sorted({min(last, round(i * last / (count - 1) / multiple) * multiple) for i in range(count)})


def tile_grid(width: int, height: int, tile: int, overlap: int, multiple: int = 8) -> list[Box]:
    """Tiles of at most `tile` px a side covering the image, neighbours overlapping by about `overlap` px,
    every edge on the `multiple` grid (width, height and tile should be multiples of it).

    Raises ValueError when the overlap is not under half the tile.
    """
    if tile < 8 or overlap < 0 or 2 * overlap >= tile:
        raise ValueError(f"upscale: tile {tile} px with overlap {overlap} px: the overlap must be under half the tile")
    return [(x, y, min(x + tile, width), min(y + tile, height))
            for y in _starts(height, tile, overlap, multiple) for x in _starts(width, tile, overlap, multiple)]


def blend_weights(box: Box, width: int, height: int, overlap: int) -> np.ndarray:
    """A tile's blending weight (float32, its height x width): 1 inside, falling linearly to near 0 across
    `overlap` px at each side that borders another tile (never at the image's own edges)."""
    left, top, right, bottom = box
    w, h = right - left, bottom - top

    def ramp(n: int, start_open: bool, end_open: bool) -> np.ndarray:
        r = np.ones(n, dtype=np.float32)
        if overlap:
            edge = (np.arange(overlap, dtype=np.float32) + 0.5) / overlap
            if start_open:
                r[:overlap] = np.minimum(r[:overlap], edge[: n])
            if end_open:
                r[-overlap:] = np.minimum(r[-overlap:], edge[::-1][-n:])
        return r

    across = ramp(w, left > 0, right < width)
    down = ramp(h, top > 0, bottom < height)
    return down[:, None] * across[None, :]


@dataclass
class TileCanvas:
    """Tiles blended into one image as they arrive: a weighted sum and the sum of weights."""

    width: int
    height: int
    overlap: int
    _sum: np.ndarray = field(init=False)
    _weight: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self._sum = np.zeros((self.height, self.width, 3), dtype=np.float32)
        self._weight = np.zeros((self.height, self.width), dtype=np.float32)

    def add(self, box: Box, tile: Image.Image) -> None:
        left, top, right, bottom = box
        if tile.size != (right - left, bottom - top):
            raise ValueError(f"tile at {box} is {tile.width}x{tile.height}, expected {right - left}x{bottom - top}")
        weight = blend_weights(box, self.width, self.height, self.overlap)
        self._sum[top:bottom, left:right] += np.asarray(tile.convert("RGB"), dtype=np.float32) * weight[..., None]
        self._weight[top:bottom, left:right] += weight

    def image(self) -> Image.Image:
        if (self._weight <= 0).any():
            raise ValueError("upscale: the tiles leave part of the image uncovered")
        out = self._sum / self._weight[..., None]
        return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8))


def seam_band(width: int, height: int, boxes: list[Box], overlap: int) -> np.ndarray:
    """Booleans (height x width): the pixels inside any two tiles' overlap, where a tiled pass may differ from one pass."""
    count = np.zeros((height, width), dtype=np.int16)
    for left, top, right, bottom in boxes:
        count[top:bottom, left:right] += 1
    return count > 1


def refine_in_tiles(base: Image.Image, boxes: Sequence[Box], overlap: int,
                    refine: Callable[[Image.Image, Box], Image.Image]) -> Image.Image:
    """`base` refined tile by tile (`refine(crop, box)` returns the crop's refinement, same size), blended."""
    canvas = TileCanvas(base.width, base.height, overlap)
    for box in boxes:
        canvas.add(box, refine(base.crop(box), box))
    return canvas.image()
