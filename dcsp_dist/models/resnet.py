"""Dilated ResNet v1 (MSRA / keras.applications layout) built from a block list.

Layer names follow ``keras.applications.ResNet101`` (``conv1_conv``, ``conv4_block23_3_bn``
...), so its weights copy over layer by layer. The stride sits on the first 1x1 conv of a
down-sampling block (ResNet v1). For output stride 8 the last two stages keep stride 1 and
dilate their 3x3 convs by 2 and 4 (DeepLab-v2, docs/method.md §2).

Normalisation: ``frozen_batch_norm`` (the paper's, for ImageNet weights) builds batch norm
with ``trainable=False``, which in Keras 3 also means inference mode (moving statistics).
A network trained from scratch has no statistics to freeze (frozen batch norm is then the
identity: no normalisation at all), so ``group_norm`` (Wu & He, ECCV 2018) replaces every
batch norm with a trained group norm: batch-independent, the same in training and
inference and on any number of ranks.
"""
from __future__ import annotations

import math

import keras
from keras import layers

from dcsp_dist.core.errors import UserError

RESNET101 = (3, 4, 23, 3)
BN_EPSILON = 1.001e-5  # keras.applications' value
GN_GROUPS = 8          # at most; fewer when a layer has fewer channels
NORMALIZATIONS = ("frozen_batch_norm", "group_norm")


def _norm(x, name: str, normalization: str, dtype):
    """The normalisation after a conv: frozen batch norm (``<name>_bn``, keras.applications'
    names, so ImageNet weights copy over) or group norm (``<name>_gn``)."""
    if normalization == "frozen_batch_norm":
        return layers.BatchNormalization(axis=3, epsilon=BN_EPSILON, trainable=False,
                                         name=name + "_bn", dtype=dtype)(x)
    if normalization == "group_norm":
        groups = math.gcd(int(x.shape[-1]), GN_GROUPS)
        return layers.GroupNormalization(groups, axis=3, name=name + "_gn", dtype=dtype)(x)
    raise UserError(f"normalization must be one of {', '.join(NORMALIZATIONS)}, not {normalization!r}")


def stage_strides_and_dilations(output_stride: int) -> list[tuple[int, int]]:
    """(stride, dilation) of stages conv2..conv5 for output stride 8, 16 or 32."""
    table = {
        8: [(1, 1), (2, 1), (1, 2), (1, 4)],
        16: [(1, 1), (2, 1), (2, 1), (1, 2)],
        32: [(1, 1), (2, 1), (2, 1), (2, 1)],
    }
    if output_stride not in table:
        raise UserError(f"output_stride must be 8, 16 or 32, not {output_stride}")
    return table[output_stride]


def _bottleneck(x, filters: int, stride: int, dilation: int, shortcut_conv: bool,
                name: str, normalization: str, dtype):
    if shortcut_conv:
        shortcut = layers.Conv2D(4 * filters, 1, strides=stride, name=name + "_0_conv", dtype=dtype)(x)
        shortcut = _norm(shortcut, name + "_0", normalization, dtype)
    else:
        shortcut = x
    x = layers.Conv2D(filters, 1, strides=stride, name=name + "_1_conv", dtype=dtype)(x)
    x = _norm(x, name + "_1", normalization, dtype)
    x = layers.Activation("relu", name=name + "_1_relu", dtype=dtype)(x)
    x = layers.Conv2D(filters, 3, padding="same", dilation_rate=dilation,
                      name=name + "_2_conv", dtype=dtype)(x)
    x = _norm(x, name + "_2", normalization, dtype)
    x = layers.Activation("relu", name=name + "_2_relu", dtype=dtype)(x)
    x = layers.Conv2D(4 * filters, 1, name=name + "_3_conv", dtype=dtype)(x)
    x = _norm(x, name + "_3", normalization, dtype)
    x = layers.Add(name=name + "_add", dtype=dtype)([shortcut, x])
    return layers.Activation("relu", name=name + "_out", dtype=dtype)(x)


def build_resnet(blocks=RESNET101, base_width: int = 64, output_stride: int = 8,
                 dtype=None, name: str = "resnet", normalization: str = "frozen_batch_norm") -> keras.Model:
    """A dilated ResNet v1 backbone: [B, H, W, 3] -> [B, H/os, W/os, 4 * base_width * 8].

    Args:
      blocks: bottleneck blocks per stage, e.g. (3, 4, 23, 3) for ResNet-101.
      base_width: bottleneck width of the first stage (64 in ResNet; smaller for tests).
      output_stride: 8 (DeepLab-v2), 16 or 32 (plain ResNet).
      dtype: a Keras dtype policy name ("mixed_bfloat16"...) or None for float32.
      normalization: "frozen_batch_norm" (paper, ImageNet weights) or "group_norm" (from scratch).
    """
    inputs = keras.Input((None, None, 3), name="image")
    x = layers.ZeroPadding2D(3, name="conv1_pad", dtype=dtype)(inputs)
    x = layers.Conv2D(base_width, 7, strides=2, name="conv1_conv", dtype=dtype)(x)
    x = _norm(x, "conv1", normalization, dtype)
    x = layers.Activation("relu", name="conv1_relu", dtype=dtype)(x)
    x = layers.ZeroPadding2D(1, name="pool1_pad", dtype=dtype)(x)
    x = layers.MaxPooling2D(3, strides=2, name="pool1_pool", dtype=dtype)(x)
    for stage, (num_blocks, (stride, dilation)) in enumerate(
            zip(blocks, stage_strides_and_dilations(output_stride))):
        filters = base_width * 2 ** stage
        for block in range(num_blocks):
            x = _bottleneck(x, filters, stride if block == 0 else 1, dilation,
                            shortcut_conv=block == 0, name=f"conv{stage + 2}_block{block + 1}",
                            normalization=normalization, dtype=dtype)
    return keras.Model(inputs, x, name=name)
