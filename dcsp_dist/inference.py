"""Multi-scale inference shared by the cues stage, evaluation and prediction (spec 4.2, 5)."""
from __future__ import annotations

import tensorflow as tf

from dcsp_dist.data import preprocess_image


def make_multiscale_fn(model, scales, key: str):
    """A compiled fn: uint8 RGB image [H, W, 3] -> fused ``key`` output [H, W, K] float32.

    The network runs at each scale; outputs of the smaller scales are resized bilinearly to
    the first (scale-1) output's size, fused by element-wise max, and the fused map is
    resized bilinearly to the image size. ``key`` is "attention" or "segmentation".
    """
    scales = tuple(float(s) for s in scales)

    @tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)], reduce_retracing=True)
    def fused(image):
        size = tf.shape(image)[:2]
        x = preprocess_image(image)
        reference, outputs = None, []
        for scale in scales:
            if scale == 1.0:
                scaled = x
            else:
                new = tf.cast(tf.math.ceil(tf.cast(size, tf.float32) * scale), tf.int32)
                scaled = tf.image.resize(x, new, method="bilinear")
            out = tf.cast(model(scaled[None], training=False)[key][0], tf.float32)  # [h_s, w_s, K]
            if reference is None:
                reference = tf.shape(out)[:2]
            else:
                out = tf.image.resize(out, reference, method="bilinear")
            outputs.append(out)
        maps = tf.reduce_max(tf.stack(outputs), axis=0)                              # [h, w, K]
        return tf.image.resize(maps, size, method="bilinear")                        # [H, W, K]

    return fused
