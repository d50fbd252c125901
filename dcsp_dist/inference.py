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


def load_for_inference(checkpoint: str, preset: str | None = None):
    """(model, cfg) from ``--checkpoint`` (run dir, stage dir or checkpoint prefix).

    The architecture comes from the config.json saved beside the checkpoint (else from
    ``preset``). Raises FileNotFoundError/ValueError with one clear line.
    """
    import os

    from dcsp_dist import config as config_lib
    from dcsp_dist import workdir as layout
    from dcsp_dist.models import build_model

    prefix, config_path = layout.final_checkpoint(checkpoint)
    if os.path.isfile(config_path):
        cfg = config_lib.load_saved(config_path)
    elif preset:
        cfg = config_lib.make_config(preset)
    else:
        raise FileNotFoundError(f"--checkpoint {checkpoint}: no config.json beside {prefix}; pass --config PRESET")
    model = build_model(cfg)
    try:
        tf.train.Checkpoint(model=model).read(prefix).expect_partial().assert_existing_objects_matched()
    except (ValueError, AssertionError, tf.errors.OpError) as exc:
        raise ValueError(f"--checkpoint {prefix} does not fit a {cfg.num_classes}-class "
                         f"{cfg.name} model: {str(exc).splitlines()[0][:300]}") from None
    return model, cfg, prefix


def run_inference(model, dataset, scales, crf_params, workers: int = 1):
    """Yield (example, [H, W] uint8 label map) for every example of ``dataset``.

    The network runs here; the CPU-bound dense CRF of an image runs in a pool of
    ``workers`` processes while the network computes the next images (``workers=0``:
    inline, sequential). Labels come back in dataset order.
    """
    import collections
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from dcsp_dist.crf import crf_or_argmax

    fused = make_multiscale_fn(model, scales, "segmentation")

    @tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)], reduce_retracing=True)
    def probabilities(image):
        return tf.nn.softmax(fused(image), axis=-1)                 # [H, W, C]

    if workers <= 0:
        for ex in dataset:
            image = ex["image"].numpy()
            yield ex, crf_or_argmax(image, probabilities(ex["image"]).numpy(), crf_params)
        return
    pending = collections.deque()
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        for ex in dataset:
            image = ex["image"].numpy()
            probs = probabilities(ex["image"]).numpy()
            pending.append((ex, pool.submit(crf_or_argmax, image, probs, crf_params)))
            while len(pending) > 2 * workers:   # bounded look-ahead keeps memory flat
                done_ex, future = pending.popleft()
                yield done_ex, future.result()
        while pending:
            done_ex, future = pending.popleft()
            yield done_ex, future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
