"""PASCAL VOC 2012 constants: class names, the Caffe mean and the colour map."""
from __future__ import annotations

import numpy as np

# Index = class id; 0 is background, 255 is "ignore" in ground-truth masks (spec 1).
CLASS_NAMES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
)
NUM_CLASSES = len(CLASS_NAMES)  # 21
IGNORE_LABEL = 255
# Caffe mean in BGR order (spec 1).
BGR_MEAN = (104.00698793, 116.66876762, 122.67891434)


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
