"""A dilated ("atrous") 3x3 convolution computed as one 1x1 convolution plus shifts.

A 3x3 convolution with dilation d is the sum of nine 1x1 convolutions, one per tap, each
shifted by ((ky-1)*d, (kx-1)*d) with zeros where the shift leaves the map (``same``
padding). ``AtrousConv2D`` computes it that way: one 1x1 convolution of the input with the
taps' kernels side by side (a matmul, ``[B, h, w, C_in] -> [B, h, w, T*C_out]``), then
each tap's ``C_out`` channels shifted into place and added. It is the same function as
``keras.layers.Conv2D(..., dilation_rate=d, padding="same")`` (the same variables, so the
same checkpoints and Caffe weights), equal up to float rounding (the sums run in another
order).

Why: on CPU, TensorFlow runs a dilated convolution as SpaceToBatchND + convolution +
BatchToSpaceND, and its backward passes through the same detour; for the ASPP head
(C_out = 21) that costs far more than its arithmetic. Where the map's size is known when
the graph is traced, taps that fall wholly outside it (|offset| >= the map's size: DeepLab's
rates 18 and 24 on the 15x15 maps of 113-pixel crops) read only padding and are dropped.
Measured on this CPU (benchmarks/aspp_bench.py, forward + backward of the four ASPP
branches): 14x faster on the demo's [5, 15, 15, 512] maps, 5.3x on voc_paper's
[1, 41, 41, 2048]. See docs/demo.md.
"""
from __future__ import annotations

from keras import layers, ops


def tap_offsets(dilation: int, height: int | None, width: int | None) -> list[tuple[int, int, int, int]]:
    """(ky, kx, dy, dx) of the taps of a 3x3 kernel with ``dilation`` that can reach a
    ``height`` x ``width`` map (all nine when a size is unknown)."""
    def reaches(offset, size):
        return size is None or abs(offset) < size
    return [(ky, kx, (ky - 1) * dilation, (kx - 1) * dilation)
            for ky in range(3) for kx in range(3)
            if reaches((ky - 1) * dilation, height) and reaches((kx - 1) * dilation, width)]


class AtrousConv2D(layers.Conv2D):
    """``Conv2D(filters, 3, padding="same", dilation_rate=d)``, computed tap by tap."""

    def __init__(self, filters: int, dilation_rate: int, **kwargs):
        super().__init__(filters, 3, padding="same", dilation_rate=dilation_rate, **kwargs)

    def call(self, inputs):
        height, width = inputs.shape[1], inputs.shape[2]
        taps = tap_offsets(self.dilation_rate[0], height, width)
        kernel = self.kernel                                                   # [3, 3, C_in, C_out]
        stacked = ops.concatenate([kernel[ky, kx] for ky, kx, _, _ in taps], axis=-1)
        per_tap = ops.conv(inputs, stacked[None, None])                        # [B, h, w, T*C_out]
        channels = ops.split(per_tap, len(taps), axis=-1) if len(taps) > 1 else [per_tap]   # T x [B, h, w, C_out]
        if height is not None and width is not None:
            shifted = [_shift_static(c, dy, dx, height, width) for c, (_, _, dy, dx) in zip(channels, taps)]
        else:
            shifted = [_shift_dynamic(c, dy, dx) for c, (_, _, dy, dx) in zip(channels, taps)]
        out = ops.sum(ops.stack(shifted), axis=0) if len(shifted) > 1 else shifted[0]
        if self.use_bias:
            out = out + self.bias
        return out                                                             # [B, h, w, C_out]


def _shift_static(x, dy: int, dx: int, height: int, width: int):
    """out[:, i, j] = x[:, i + dy, j + dx], zero outside the map; sizes known. The valid
    window is cut, then padded back (backward: a slice of the gradient, and a pad of the
    tap's window only)."""
    window = x[:, max(0, dy):height + min(0, dy), max(0, dx):width + min(0, dx)]
    return ops.pad(window, [[0, 0], [max(0, -dy), max(0, dy)], [max(0, -dx), max(0, dx)], [0, 0]])


def _shift_dynamic(x, dy: int, dx: int):
    """As ``_shift_static`` on a map of unknown size: padded by the offsets, then cut."""
    pad_y, pad_x = abs(dy), abs(dx)
    padded = ops.pad(x, [[0, 0], [pad_y, pad_y], [pad_x, pad_x], [0, 0]])
    shape = ops.shape(x)
    return ops.slice(padded, (0, pad_y + dy, pad_x + dx, 0), shape)
