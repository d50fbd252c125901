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
