"""What the preemption agreement costs a step, on the demo's tiny model (run on 2 ranks).

    horovodrun --gloo -np 2 -H localhost:2 python benchmarks/preemption_bench.py [--rounds 7]

The stop flag rides in the step's own allreduce of the rank-averaged losses (5 floats become
6), so the agreement adds no collective. This prints, as medians over --rounds rounds that
alternate the contenders (each round times --calls calls of each):
- the tiny model's whole training step (forward, backward, gradient allreduce, update);
- an allreduce of the 5 loss values alone, of the 6 with the flag, and of the 5 plus the flag
  in a second allreduce of its own (what a separate agreement collective would cost);
and the two differences as a share of the step.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _seconds_per_call(fn, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="synthetic_demo")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=50)
    args = parser.parse_args(argv)

    import numpy as np
    import tensorflow as tf

    from dcsp_dist import config, distributed
    from dcsp_dist.training.trainer import StageTrainer

    ctx = distributed.init()
    cfg = config.make_config(args.config, {})
    trainer = StageTrainer("attention", cfg)
    per, crop = cfg.per_rank_batch(ctx.size), cfg.input.crop_size
    rng = np.random.default_rng(ctx.rank)
    batch = {"image": tf.constant(rng.integers(0, 255, (per, crop, crop, 3)), tf.float32),
             "valid": tf.constant([[crop, crop]] * per, tf.int32),
             "tags": tf.constant(rng.integers(0, 2, (per, cfg.model.num_classes - 1)), tf.float32),
             "id": tf.constant([b"x"] * per)}

    five, flag = tf.constant(rng.random(5), tf.float32), tf.constant([0.0])
    together = tf.function(lambda v, f: distributed.allreduce_mean_tensor(tf.concat([v, f], 0)))
    alone = tf.function(lambda v: distributed.allreduce_mean_tensor(v))
    apart = tf.function(lambda v, f: (distributed.allreduce_mean_tensor(v), distributed.allreduce_mean_tensor(f)))
    contenders = {"step": lambda: trainer.step(batch),
                  "allreduce 5": lambda: alone(five).numpy(),
                  "allreduce 5+flag": lambda: together(five, flag).numpy(),
                  "allreduce 5, flag apart": lambda: [t.numpy() for t in apart(five, flag)]}
    for fn in contenders.values():       # tracing and warm-up
        for _ in range(3):
            fn()
    times = {name: [] for name in contenders}
    for _ in range(args.rounds):
        for name, fn in contenders.items():
            times[name].append(_seconds_per_call(fn, args.calls))
    med = {name: statistics.median(t) for name, t in times.items()}
    if ctx.is_chief:
        print(f"{args.config} on {ctx.size} rank(s), per-rank batch {per}, medians of {args.rounds} rounds "
              f"x {args.calls} calls:")
        for name, s in med.items():
            print(f"  {name:24s} {s * 1e3:8.3f} ms")
        step = med["step"]
        print(f"  flag in the step's allreduce: {(med['allreduce 5+flag'] - med['allreduce 5']) * 1e3:+.3f} ms "
              f"= {(med['allreduce 5+flag'] - med['allreduce 5']) / step:+.2%} of a step")
        print(f"  flag in its own allreduce:    {(med['allreduce 5, flag apart'] - med['allreduce 5']) * 1e3:+.3f} ms "
              f"= {(med['allreduce 5, flag apart'] - med['allreduce 5']) / step:+.2%} of a step")
    return 0


if __name__ == "__main__":
    sys.exit(main())
