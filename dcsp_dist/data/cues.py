"""Localization cues (docs/method.md §4.2 and 4.4): attention + saliency -> label maps, and adapted
cues from the segmentation logits."""
from __future__ import annotations

import tensorflow as tf

EPS = 1e-12


def normalise_maps(maps):
    """Per channel: shift by the spatial min (+1e-12), divide by the spatial max -> (0, 1].

    maps: [H, W, K] float32.
    """
    shifted = maps - tf.reduce_min(maps, axis=[0, 1], keepdims=True) + EPS
    return shifted / tf.reduce_max(shifted, axis=[0, 1], keepdims=True)


def attention_cues(attention, saliency, tags, bg_threshold: float = 0.4):
    """Initial cues from fused attention maps and saliency (docs/method.md §4.2).

    Args:
      attention: [H, W, C-1] attention maps at image size (fused over scales).
      saliency: [H, W] float in [0, 1].
      tags: [C-1] multi-hot of the classes present.
      bg_threshold: pixels whose best harmonic mean is below it are background.
    Returns: [H, W] uint8 labels (0 = background, c = class c).
    """
    att = normalise_maps(attention)                                          # [H, W, C-1]
    sal = tf.cast(saliency, tf.float32)[..., None]                            # [H, W, 1]
    harmonic = 2.0 / (1.0 / (att + EPS) + 1.0 / (sal + EPS))                  # [H, W, C-1]
    present = tf.cast(tags, tf.bool)[None, None, :]
    harmonic = tf.where(present, harmonic, -1.0)  # untagged classes never win
    best = tf.reduce_max(harmonic, axis=-1)
    label = tf.cast(tf.argmax(harmonic, axis=-1), tf.int32) + 1
    return tf.cast(tf.where(best < bg_threshold, 0, label), tf.uint8)


def adapted_probabilities(scores, tags, are_probabilities: bool = False):
    """Fused segmentation logits [H, W, C] (or probabilities) restricted to background +
    tagged classes and renormalised (untagged classes get probability 0): what the optional
    CRF of the adapt step refines."""
    allowed = tf.concat([[True], tf.cast(tags, tf.bool)], axis=0)[None, None, :]
    if are_probabilities:
        kept = tf.where(allowed, scores, tf.zeros_like(scores))
        return kept / tf.maximum(tf.reduce_sum(kept, axis=-1, keepdims=True), EPS)
    return tf.nn.softmax(tf.where(allowed, scores, tf.constant(-float("inf"), scores.dtype)), axis=-1)


def adapted_cues(logits, tags):
    """Adapted cues from fused segmentation logits [H, W, C] (docs/method.md §4.4, with the fix):
    argmax over background + tagged classes; untagged classes are excluded (-inf), not
    multiplied by 0 as in the original. Probabilities instead of logits work the same."""
    allowed = tf.concat([[True], tf.cast(tags, tf.bool)], axis=0)[None, None, :]   # [1, 1, C]
    masked = tf.where(allowed, logits, tf.constant(-float("inf"), logits.dtype))
    return tf.cast(tf.argmax(masked, axis=-1), tf.uint8)
