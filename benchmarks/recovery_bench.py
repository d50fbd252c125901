"""What keeping the last good state costs (dcsp_dist.training.recovery), for a given preset's model.

    python benchmarks/recovery_bench.py [--config voc_paper] [--repeats 7] [--steps 2]

Prints (medians over --repeats, the contenders alternated in one run):
- the copy of weights and momentum to the shadow variables (``Recovery.keep``, every
  ``run.recovery_every`` steps) and the roll-back (``_back``), with the bytes they hold;
- one training step of the segmentation stage on a batch of the preset's crops, the copy as a
  share of it, and that share spread over ``recovery_every`` steps.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="voc_paper")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=1, help="images in the timed step (per rank)")
    args = parser.parse_args(argv)

    import numpy as np
    import tensorflow as tf

    from dcsp_dist import config, distributed
    from dcsp_dist.training.recovery import Recovery
    from dcsp_dist.training.trainer import StageTrainer

    distributed.init()
    cfg = config.make_config(args.config, {"init_weights": "none", "normalization": "frozen_batch_norm"})
    trainer = StageTrainer("segmentation", cfg)
    recovery = Recovery(trainer, cfg.run)
    crop, classes = cfg.input.crop_size, cfg.model.num_classes or 21
    rng = np.random.default_rng(0)
    tags = np.zeros((args.batch, classes - 1), np.float32)
    tags[:, 0] = 1
    batch = {"image": tf.constant(rng.integers(0, 256, (args.batch, crop, crop, 3)), tf.uint8),
             "valid": tf.constant([[crop, crop]] * args.batch, tf.int32), "tags": tf.constant(tags),
             "cue": tf.constant(rng.integers(0, 2, (args.batch, crop, crop)), tf.uint8)}
    held = sum(v.numpy().nbytes for v in recovery._shadow)
    recovery.keep(0)
    recovery._back()
    trainer.step(batch)                                  # warm-up: tracing
    times = {"keep": [], "back": [], "step": []}
    for _ in range(args.repeats):                        # alternated, so a wandering CPU share hits all
        for name, fn in (("keep", lambda: recovery.keep(0)), ("step", lambda: trainer.step(batch)),
                         ("back", recovery._back)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    every = cfg.run.recovery_every
    print(f"config {cfg.name}: {sum(int(np.prod(v.shape)) for v in recovery._shadow) / 1e6:.1f} M values kept "
          f"({held / 2**20:.0f} MiB beside the model, on its device)")
    print(f"copy (keep) {1e3 * med['keep']:.1f} ms, roll-back {1e3 * med['back']:.1f} ms, one step of "
          f"{args.batch} crop(s) of {crop} {med['step']:.2f} s (medians of {args.repeats})")
    print(f"the copy is {100 * med['keep'] / med['step']:.2f}% of one step; every {every} steps: "
          f"{100 * med['keep'] / med['step'] / every:.3f}% of training time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
