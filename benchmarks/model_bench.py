"""The full DCSP model on this CPU: forward and training-step time, peak memory, and the
training step's achieved GFLOP/s relative to a large float32 matmul on the same threads.

    .venv/bin/python benchmarks/model_bench.py [--threads N] [--steps 3] [--size 321]
"""
import argparse
import json
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def flops_of(concrete) -> float:
    """Float operations in a concrete function's graph (TF profiler, FLOP registry)."""
    from tensorflow.python.profiler import model_analyzer, option_builder
    opts = option_builder.ProfileOptionBuilder(option_builder.ProfileOptionBuilder.float_operation()).with_empty_output().build()
    return float(model_analyzer.profile(concrete.graph, options=opts).total_float_ops)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--size", type=int, default=321)
    args = parser.parse_args()
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from dcsp_dist import config
    from dcsp_dist.models import build_model, parameter_groups
    from dcsp_dist.training import losses

    cfg = config.make_config("voc_paper")
    model = build_model(cfg)
    variables = [v.value for v in parameter_groups(model).trainable(True)]
    x = tf.random.normal([1, args.size, args.size, 3]) * 50
    tags = tf.one_hot([[3]], 20)[:, 0]
    cue = tf.random.uniform([1, args.size, args.size], 0, 21, tf.int32)
    cue = tf.cast(cue, tf.uint8)

    @tf.function
    def forward(x):
        return model(x, training=False)

    @tf.function
    def train_step(x):
        with tf.GradientTape() as tape:
            out = model(x, training=False)
            loss = losses.classification_loss(out["attention"], tags) + losses.segmentation_loss(out["segmentation"], cue)
        return tape.gradient(loss, variables)

    def timed(fn, n):
        fn(x)  # trace + warm-up
        start = time.perf_counter()
        for _ in range(n):
            r = fn(x)
        tf.nest.map_structure(lambda t: t.numpy(), r)
        return (time.perf_counter() - start) / n

    fwd = timed(forward, args.steps)
    step = timed(train_step, args.steps)
    fwd_flops = flops_of(forward.get_concrete_function(x))
    step_flops = flops_of(train_step.get_concrete_function(x))

    n = 2048
    a, b = tf.random.normal([n, n]), tf.random.normal([n, n])
    mm = tf.function(lambda: tf.linalg.matmul(a, b))
    mm().numpy()
    reps = 10
    t = time.perf_counter()
    for _ in range(reps):
        r = mm()
    r.numpy()
    matmul_gflops = 2 * n ** 3 * reps / (time.perf_counter() - t) / 1e9
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    step_gflops = step_flops / step / 1e9
    result = {
        "threads": args.threads, "input": f"1x{args.size}x{args.size}",
        "forward_s": round(fwd, 3), "train_step_s": round(step, 3),
        "forward_gflop": round(fwd_flops / 1e9, 1), "train_step_gflop": round(step_flops / 1e9, 1),
        "train_step_gflops_per_s": round(step_gflops, 1), "matmul_gflops_per_s": round(matmul_gflops, 1),
        "ratio_to_matmul": round(step_gflops / matmul_gflops, 3), "peak_rss_mib": round(peak_mib),
    }
    for k, v in result.items():
        print(f"{k:>26}: {v}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
