"""The colour map of class-index PNGs (masks, cues, predictions): the PASCAL VOC devkit's,
which gives any class id its own colour, so it serves every dataset."""
from __future__ import annotations

import numpy as np


def color_map(n: int = 256) -> np.ndarray:
    """The VOC palette: [n, 3] uint8, class c -> colour (bit-interleaved, as the devkit)."""
    cmap = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        cmap[i] = (r, g, b)
    return cmap


def palette() -> list[int]:
    """The VOC colour map flattened for ``PIL.Image.putpalette``."""
    return color_map(256).reshape(-1).tolist()
