"""The 64-bit DCT perceptual hash (pHash) and the distance between two hashes.

Two callers feed it differently shrunk pictures, and each keeps its own way because their
hashes are stored and compared across runs: the catalog (`tasks.catalog_rules`) shrinks the
photo with PIL's Lanczos filter, the scores (`tasks.scores`) shrink a background with cv2's
area filter and ignore DCT coefficients that are only float noise. What they share, and what
must never differ between them, is here: which coefficients make the bits and how they are written.
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["HASH_BITS", "HASH_SIZE", "dct_hash", "hamming"]

HASH_SIZE = 32  # the side of the grey square the hash is taken from
HASH_BITS = 64


def dct_hash(grey: np.ndarray, *, noise_floor: float = 0.0) -> str:
    """The hash of a `HASH_SIZE` x `HASH_SIZE` float32 grey image, as 16 hex digits.

    The 8x8 lowest frequencies of its DCT make the bits; coefficients smaller than
    `noise_floor` in magnitude count as zero.
    """
    low = cv2.dct(grey)[:8, :8].flatten()
    if noise_floor > 0:
        low[np.abs(low) < noise_floor] = 0.0
    # The DC term only says how bright the image is; the median of the rest splits the bits.
    bits = low > np.median(low[1:])
    return f"{int(''.join('1' if b else '0' for b in bits), 2):016x}"


def hamming(a: str, b: str) -> int:
    """Bits that differ between two hashes (0 = identical, 64 = opposite)."""
    return (int(a, 16) ^ int(b, 16)).bit_count()
