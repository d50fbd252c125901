"""The ASPP head (four 3x3 branches, rates 6/12/18/24) forward + backward, as Keras'
dilated Conv2D and as dcsp_dist's AtrousConv2D, on the demo's and on voc_paper's maps;
then the demo model's whole training step both ways. Contenders alternate; medians.

    .venv/bin/python benchmarks/aspp_bench.py [--threads 1] [--rounds 5]
"""
import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def median_ms(fns: dict, arg, rounds: int, calls: int) -> dict:
    """Median milliseconds per call of each function, the contenders in turn every round."""
    times = {name: [] for name in fns}
    for fn in fns.values():
        fn(arg)                                          # trace + warm-up
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(calls):
                out = fn(arg)
            float(out[0])
            times[name].append((time.perf_counter() - start) / calls * 1000)
    return {name: statistics.median(t) for name, t in times.items()}


def head_step(layers_: list):
    import tensorflow as tf
    variables = [v.value for layer in layers_ for v in layer.trainable_weights]

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = tf.add_n([layer(x) for layer in layers_])
            loss = tf.reduce_sum(y * y)
        return [loss] + tape.gradient(loss, variables + [x])
    return step


def model_step(cfg, atrous: bool):
    import keras
    import tensorflow as tf

    from dcsp_dist.models import build_model, deeplab, parameter_groups
    from dcsp_dist.training import losses
    keep = deeplab.AtrousConv2D
    if not atrous:   # the same model with Keras' own dilated convolutions in the head
        deeplab.AtrousConv2D = lambda filters, d, **kw: keras.layers.Conv2D(
            filters, 3, padding="same", dilation_rate=d, **kw)
    try:
        keras.utils.set_random_seed(0)
        model = build_model(cfg)
    finally:
        deeplab.AtrousConv2D = keep
    variables = [v.value for v in parameter_groups(model).trainable(True)]
    batch, crop = cfg.optimizer.global_batch // 2, cfg.input.crop_size
    tags = tf.cast(tf.random.stateless_uniform([batch, cfg.model.num_classes - 1], (1, 2)) > 0.8, tf.float32)
    cue = tf.cast(tf.random.stateless_uniform([batch, crop, crop], (3, 4), 0, cfg.model.num_classes, tf.int32), tf.uint8)

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            out = model(x, training=False)
            loss = losses.classification_loss(out["attention"], tags) + \
                losses.segmentation_loss(out["segmentation"], cue, cfg.model.output_stride)
        return [loss] + tape.gradient(loss, variables)
    return step


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=1, help="TensorFlow threads (the demo: 1 per rank)")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    import keras
    import numpy as np
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from dcsp_dist import config
    from dcsp_dist.models.atrous import AtrousConv2D
    from dcsp_dist.models.deeplab import ASPP_DILATIONS

    print(f"threads {args.threads}, medians of {args.rounds} rounds, contenders alternating")
    print("| case | maps | Conv2D ms | AtrousConv2D ms | speed-up | max rel. grad diff |")
    print("| --- | --- | --- | --- | --- | --- |")
    for case, shape, calls in (("ASPP, demo", (5, 15, 15, 512), 10), ("ASPP, voc_paper", (1, 41, 41, 2048), 3)):
        x = tf.random.stateless_normal(shape, (0, 1))
        keras_layers = [keras.layers.Conv2D(21, 3, padding="same", dilation_rate=d) for d in ASPP_DILATIONS]
        ours = [AtrousConv2D(21, d) for d in ASPP_DILATIONS]
        for a, b in zip(keras_layers, ours):
            a.build(shape), b.build(shape)
            b.set_weights(a.get_weights())
        fns = {"keras": head_step(keras_layers), "atrous": head_step(ours)}
        diff = max(float(np.abs(p - q).max() / (np.abs(p).max() + 1e-12))
                   for p, q in zip(fns["keras"](x)[1:], fns["atrous"](x)[1:]))
        ms = median_ms(fns, x, args.rounds, calls)
        print(f"| {case} | {list(shape)} | {ms['keras']:.1f} | {ms['atrous']:.1f} | "
              f"{ms['keras'] / ms['atrous']:.2f}x | {diff:.1e} |")
    cfg = config.make_config("synthetic_demo")
    x = tf.random.stateless_normal([cfg.optimizer.global_batch // 2, cfg.input.crop_size, cfg.input.crop_size, 3], (5, 6)) * 50
    fns = {"keras": model_step(cfg, atrous=False), "atrous": model_step(cfg, atrous=True)}
    ms = median_ms(fns, x, args.rounds, 4)
    print(f"| demo training step (forward + backward, one rank's batch) | {cfg.optimizer.global_batch // 2} x "
          f"{cfg.input.crop_size}^2 | {ms['keras']:.0f} | {ms['atrous']:.0f} | {ms['keras'] / ms['atrous']:.2f}x | |")


if __name__ == "__main__":
    main()
