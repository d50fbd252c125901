"""The numerics of inference shared by the cues stages, evaluation and prediction (spec
4.2, 5): multi-scale fusion, crop-size windows, class probabilities, and a trained model
loaded from a run. The CRF worker pool is ``crf_pool``; the evaluate/predict command
line is ``jobs``."""
from __future__ import annotations

import os

import tensorflow as tf

from dcsp_dist import config as config_lib
from dcsp_dist.core import atomic
from dcsp_dist.core.errors import UserError, first_line
from dcsp_dist.models import build_model, geometry
from dcsp_dist.models.inputs import preprocess_image
from dcsp_dist.rundir import checkpoints, layout


def windowed_outputs(model, x, key: str, window: int, stride: int = 8):
    """The network's ``key`` output [ceil(H/s), ceil(W/s), K] float32 for a preprocessed
    image ``x`` [H, W, 3], computed in ``window`` x ``window`` tiles, as training saw it.

    A network trained on crops has only ever seen inputs of the crop's size; on a larger
    image every output's receptive field holds context (and no padding) it never saw in
    training. Here the image is cut into windows of the crop's size, overlapping by about a
    third, each starting on a multiple of the stride (so a window's output j is the whole
    image's output origin/s + j, docs/method.md §7), the last one padded with 0 (the mean, as training
    pads) up to the window; the outputs of overlapping windows are averaged. An image
    smaller than the window is one window, padded as a training crop would be.
    """
    cells = -(-window // stride)                                    # outputs per window side
    step = max(stride, (2 * window // 3) // stride * stride)
    size = tf.shape(x)[:2]

    def origins(n):
        last = tf.maximum((n - window + stride - 1) // stride * stride, 0)
        return tf.concat([tf.range(0, last, step), [last]], 0)

    rows, cols = origins(size[0]), origins(size[1])
    padded = tf.pad(x, [[0, rows[-1] + window - size[0]], [0, cols[-1] + window - size[1]], [0, 0]])
    corners = tf.reshape(tf.stack(tf.meshgrid(rows, cols, indexing="ij"), -1), [-1, 2])   # [N, 2]
    outputs = tf.map_fn(
        lambda o: tf.cast(model(tf.slice(padded, [o[0], o[1], 0], [window, window, 3])[None],
                                training=False)[key][0], tf.float32),
        corners, fn_output_signature=tf.float32, parallel_iterations=1)                   # [N, c, c, K]
    offsets = tf.stack(tf.meshgrid(tf.range(cells), tf.range(cells), indexing="ij"), -1)  # [c, c, 2]
    index = corners[:, None, None, :] // stride + offsets[None]                          # [N, c, c, 2]
    grid = tf.stack([rows[-1] // stride + cells, cols[-1] // stride + cells, tf.shape(outputs)[-1]])
    total = tf.scatter_nd(index, outputs, grid)
    count = tf.scatter_nd(index, tf.ones_like(outputs[..., :1]), tf.concat([grid[:2], [1]], 0))
    out_size = (size + stride - 1) // stride
    return (total / count)[:out_size[0], :out_size[1]]


def make_multiscale_fn(model, scales, key: str, stride: int = 8, space: str = "logits", window: int = 0):
    """A compiled fn: uint8 RGB image [H, W, 3] -> fused ``key`` output [H, W, K] float32.

    The network runs at each scale (the image resized with pixel-centre bilinear
    resizing); each smaller scale's output is brought onto the scale-1 output grid, the
    maps are fused by element-wise max, and the fused map is upsampled to the image size,
    all keeping output i on the pixel it is computed around (docs/method.md §7, ``geometry``).
    ``key`` is "attention" or "segmentation"; ``stride`` the network's output stride.
    ``space="probabilities"`` (segmentation only) returns the softmax of the fused map,
    taken on the output grid before the upsampling (``Config.inference.upsample_space``).
    ``window > 0`` runs the network on windows of that size at every scale
    (``windowed_outputs``, ``Config.inference.inference_window``); 0 on the whole image.
    """

    scales = tuple(float(s) for s in scales)

    @tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)], reduce_retracing=True)
    def fused(image):
        size = tf.shape(image)[:2]
        x = preprocess_image(image)
        reference, outputs = None, []
        for scale in scales:
            if scale == 1.0:
                scaled, ratio = x, None
            else:
                new = tf.cast(tf.math.ceil(tf.cast(size, tf.float32) * scale), tf.int32)
                scaled = tf.image.resize(x, new, method="bilinear")
                ratio = tf.cast(new, tf.float32) / tf.cast(size, tf.float32)        # exact, per axis
            if window:
                out = windowed_outputs(model, scaled, key, window, stride)          # [h_s, w_s, K]
            else:
                out = tf.cast(model(scaled[None], training=False)[key][0], tf.float32)
            if reference is None:
                reference = tf.shape(out)[:2]
            else:
                out = geometry.to_reference_grid(out, reference, ratio, stride)     # [h, w, K]
            outputs.append(out)
        maps = tf.reduce_max(tf.stack(outputs), axis=0)                              # [h, w, K]
        if space == "probabilities":
            maps = tf.nn.softmax(maps, axis=-1)
        return geometry.upsample(maps, size, stride)                                 # [H, W, K]

    return fused


def make_probability_fn(model, scales, stride: int = 8, space: str = "logits", window: int = 0):
    """A compiled fn: uint8 RGB image [H, W, 3] -> class probabilities [H, W, C] (docs/method.md §5):
    the fused segmentation logits upsampled then softmax (``space="logits"``, the authors'),
    or softmax on the output grid then upsampled (``space="probabilities"``); ``window``
    as ``make_multiscale_fn``."""
    fused = make_multiscale_fn(model, scales, "segmentation", stride, space, window)
    if space == "probabilities":
        return fused

    @tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)], reduce_retracing=True)
    def probabilities(image):
        return tf.nn.softmax(fused(image), axis=-1)                 # [H, W, C]

    return probabilities


def load_for_inference(checkpoint: str, preset: str | None = None):
    """(model, cfg) from ``--checkpoint`` (run dir, stage dir or checkpoint prefix).

    The architecture comes from the config.json saved beside the checkpoint (else from
    ``preset``). Raises FileNotFoundError/ValueError with one clear line.
    """

    prefix, config_path = layout.final_checkpoint(checkpoint)
    if os.path.isfile(config_path):
        cfg = config_lib.load_saved(config_path)
    elif preset:
        cfg = config_lib.make_config(preset)
    else:
        raise FileNotFoundError(f"--checkpoint {checkpoint}: no config.json beside {prefix}; pass --config PRESET")
    checkpoints.check(prefix)
    model = build_model(cfg)
    try:
        tf.train.Checkpoint(model=model).read(prefix).expect_partial().assert_existing_objects_matched()
    except (ValueError, AssertionError, tf.errors.OpError) as exc:
        raise UserError(f"--checkpoint {prefix} does not fit a {cfg.model.num_classes}-class "
                         f"{cfg.name} model: {first_line(exc, 300)}") from None
    return model, cfg, prefix


def class_names_for(prefix: str, cfg) -> list[str]:
    """The run's class list, saved beside the checkpoint's config.json (``classes.json``,
    written by training); ``class <i>`` names for a run without one."""
    stage = layout.stage_of_checkpoint(prefix)
    path = layout.classes_path(stage) if stage else ""
    if os.path.isfile(path):
        names = atomic.read_json(path, "class list")["class_names"]
        if len(names) == cfg.model.num_classes:
            return list(names)
    return ["background"] + [f"class {i}" for i in range(1, cfg.model.num_classes)]


def probability_fn_for(model, cfg, scales=None):
    """``make_probability_fn`` with a run's settings: its eval_scales (or ``scales``), output
    stride, ``upsample_space`` and ``inference_window``."""
    return make_probability_fn(model, cfg.inference.eval_scales if scales is None else scales, cfg.model.output_stride,
                               cfg.inference.upsample_space, cfg.inference_window_size)
