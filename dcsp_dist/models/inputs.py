"""The models' input contract: what an image must look like when it enters the network.

The weights DCSP starts from are the authors' Caffe ResNet-101 (docs/method.md §1): BGR channel order,
0..255, minus the ImageNet mean of that model. Every path into the network (training crops,
cues, evaluation, prediction, an exported model) goes through ``preprocess_image``.
"""
from __future__ import annotations

import tensorflow as tf

# Caffe mean in BGR order (docs/method.md §1).
BGR_MEAN = (104.00698793, 116.66876762, 122.67891434)


def preprocess_image(image_rgb) -> tf.Tensor:
    """uint8 RGB [..., 3] -> float32 BGR minus the Caffe mean (docs/method.md §1)."""
    bgr = tf.reverse(tf.cast(image_rgb, tf.float32), axis=[-1])
    return bgr - tf.constant(BGR_MEAN, tf.float32)


def network_input(crops, valid) -> tf.Tensor:
    """Training crops as the network takes them: BGR minus the mean, padding exactly 0.

    Args:
      crops: uint8 RGB [B, crop, crop, 3] from ``augment`` (batched).
      valid: int32 [B, 2], the rows and columns of each crop holding image content
        (the rest is padding, which docs/method.md §1 fills with the mean: 0 after subtraction).
    Runs inside the compiled train step, so on a GPU it costs the input pipeline nothing.
    """
    x = preprocess_image(crops)
    rows = tf.range(tf.shape(x)[1])[None, :, None] < valid[:, 0, None, None]
    cols = tf.range(tf.shape(x)[2])[None, None, :] < valid[:, 1, None, None]
    return x * tf.cast(rows & cols, x.dtype)[..., None]
