"""Where the network's stride-8 outputs sit on the image (docs/method.md §7), and resizes that keep it.

With the ResNet's paddings (7x7/2 conv on a 3-pixel pad, 3x3/2 max pool on a 1-pixel pad,
stride on the first 1x1 conv), output position i of an output-stride-s map is computed
around image pixel s*i, and an image of N pixels gives ceil(N / s) outputs. So:

- the label of output i is the label of pixel s*i (``labels_at_outputs``: a strided slice);
- pixel y of the image lies at output coordinate y / s (``upsample``: linear interpolation
  between outputs, the edge value beyond the last one);
- in multi-scale inference, output j of an image resized by r with pixel-centre resizing
  sits on scaled pixel s*j, i.e. original pixel (s*j + 0.5) / r - 0.5 (``to_reference_grid``).

This is what DeepLab's corner-aligned resizing of 8k+1-pixel inputs computes, for inputs
of any size. TF2's ``tf.image.resize`` (half-pixel centres) would put output i at pixel
s*i + 3.5 for a crop of 8k pixels instead.
"""
from __future__ import annotations

import tensorflow as tf


def labels_at_outputs(labels, stride: int):
    """Label maps [B, H, W] -> [B, ceil(H/s), ceil(W/s)]: output i takes pixel s*i's label."""
    return labels[:, ::stride, ::stride]


def _interpolate(maps, coords, axis: int, nearest: bool):
    """Sample ``maps`` along ``axis`` (-3: rows, -2: columns of [..., h, w, K]) at
    fractional positions ``coords`` [n], linearly (or nearest), clamped to the edges."""
    length = tf.shape(maps)[axis]
    coords = tf.clip_by_value(tf.cast(coords, tf.float32), 0.0, tf.cast(length - 1, tf.float32))
    if nearest:
        return tf.gather(maps, tf.cast(tf.round(coords), tf.int32), axis=axis)
    low = tf.floor(coords)
    high = tf.minimum(tf.cast(low, tf.int32) + 1, length - 1)
    weight = coords - low                                   # [n]
    weight = weight[:, None, None] if axis == -3 else weight[:, None]
    a = tf.gather(maps, tf.cast(low, tf.int32), axis=axis)
    b = tf.gather(maps, high, axis=axis)
    return a + (b - a) * tf.cast(weight, maps.dtype)


def resample(maps, rows, cols, nearest: bool = False):
    """``maps`` [..., h, w, K] sampled at output coordinates ``rows`` [H] x ``cols`` [W]."""
    return _interpolate(_interpolate(maps, rows, -3, nearest), cols, -2, nearest)


def upsample(maps, size, stride: int, nearest: bool = False):
    """Stride-``stride`` maps [..., h, w, K] -> image size ``size`` (H, W): output i on pixel s*i."""
    rows = tf.range(size[0], dtype=tf.float32) / stride
    cols = tf.range(size[1], dtype=tf.float32) / stride
    return resample(maps, rows, cols, nearest)


def to_reference_grid(maps, reference, ratio, stride: int):
    """Outputs [h_s, w_s, K] of an image resized by ``ratio`` (r_y, r_x; pixel-centre
    resize) -> the unresized image's output grid ``reference`` (h, w).

    Reference output i sits on original pixel s*i = scaled pixel (s*i + 0.5) * r - 0.5,
    which is scaled output ((s*i + 0.5) * r - 0.5) / s.
    """
    ratio = tf.cast(ratio, tf.float32)

    def coords(n, r):
        return ((stride * tf.range(n, dtype=tf.float32) + 0.5) * r - 0.5) / stride

    return resample(maps, coords(reference[0], ratio[0]), coords(reference[1], ratio[1]))
