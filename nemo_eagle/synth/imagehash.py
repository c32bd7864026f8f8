"""Perceptual image hashes (dHash, pHash) with PIL + numpy, for near-duplicate detection.

Both give 64-bit integers; near-identical images (re-encoded, resized, slightly brightened) differ in a few bits.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def _grey(image: Image.Image, size: tuple[int, int]) -> np.ndarray:
    img = image.convert("L").resize(size, Image.Resampling.LANCZOS)
    return np.asarray(img, dtype=np.float64)  # (rows, cols)


def _bits_to_int(bits: np.ndarray) -> int:
    value = 0
    for bit in bits.ravel():
        value = (value << 1) | int(bit)
    return value


def dhash(image: Image.Image, size: int = 8, margin: float = 1.0) -> int:
    """Difference hash: is each pixel brighter than its right neighbour, on a (size+1) x size grey thumbnail.

    ``margin`` (grey levels) keeps flat regions stable: there neighbours are equal up to noise, and a plain
    ``>`` would flip bits at random on a re-encoded or slightly noisy copy.
    """
    px = _grey(image, (size + 1, size))  # (size, size+1)
    return _bits_to_int((px[:, :-1] - px[:, 1:]) > margin)


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    x = np.arange(n)[None, :]
    m = np.cos(np.pi * (2 * x + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    m[0] /= np.sqrt(2.0)
    return m  # orthonormal DCT-II, (n, n)


def phash(image: Image.Image, size: int = 8, factor: int = 4) -> int:
    """DCT hash: the lowest ``size`` x ``size`` DCT coefficients of a 32x32 grey thumbnail against their median."""
    n = size * factor
    px = _grey(image, (n, n))
    d = _dct_matrix(n)
    low = (d @ px @ d.T)[:size, :size]  # (size, size) lowest frequencies
    return _bits_to_int(low > np.median(low))


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


HASHES = {"dhash": dhash, "phash": phash}
