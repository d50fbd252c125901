"""DCSP losses (docs/method.md §3)."""
from __future__ import annotations

import tensorflow as tf

from dcsp_dist.data.records import IGNORE_LABEL
from dcsp_dist.models.geometry import labels_at_outputs


def classification_loss(attention, tags):
    """Global average pool of the attention maps -> sigmoid cross-entropy with the tags.

    attention: [B, h, w, C-1] float32; tags: [B, C-1] multi-hot. Mean over batch and class.
    """
    pooled = tf.reduce_mean(attention, axis=[1, 2])                     # [B, C-1]
    return tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=tags, logits=pooled))


def segmentation_loss(logits, cues, stride: int = 8):
    """Softmax cross-entropy of logits [B, h, w, C] against cues [B, H, W], mean over
    pixels whose label is not 255. Output i is scored against the label of pixel
    stride * i, the pixel it is computed around (docs/method.md §7)."""
    labels = tf.cast(labels_at_outputs(cues, stride), tf.int32)                # [B, h, w]
    valid = tf.not_equal(labels, IGNORE_LABEL)
    safe = tf.where(valid, labels, 0)
    per_pixel = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=safe, logits=logits)
    per_pixel = tf.where(valid, per_pixel, 0.0)
    return tf.reduce_sum(per_pixel) / tf.maximum(tf.reduce_sum(tf.cast(valid, tf.float32)), 1.0)


def l2_loss(kernels, weight_decay: float):
    """weight_decay * sum(w^2) / 2 over conv kernels (not biases, not batch norm)."""
    if not kernels:
        return tf.constant(0.0)
    return weight_decay * tf.add_n([tf.nn.l2_loss(tf.cast(k, tf.float32)) for k in kernels])
