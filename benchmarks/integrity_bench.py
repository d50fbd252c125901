"""What the integrity checks and a preemption checkpoint cost, for a given preset's model.

    python benchmarks/integrity_bench.py [--config voc_paper] [--repeats 5]

Prints (medians over --repeats):
- the gradient-finiteness flag the step computes (one reduction over every gradient),
- the state check before a checkpoint (every weight and momentum read once on the host),
- writing and reading back a checkpoint of model + optimizer (what a preemption adds
  between the signal and the exit), with its size and write speed.
Compare the first with the model's step time (benchmarks/model_bench.py).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _median_seconds(fn, repeats: int) -> float:
    fn()   # warm-up (tracing)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="voc_paper")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    import numpy as np
    import tensorflow as tf

    from dcsp_dist import config, distributed
    from dcsp_dist.training.trainer import StageTrainer

    distributed.init()
    cfg = config.make_config(args.config, {"init_weights": "none", "normalization": "frozen_batch_norm"})
    trainer = StageTrainer("segmentation", cfg)
    grads = [tf.random.normal(v.shape) for v in distributed.raw_variables(trainer.variables)]
    params = sum(int(np.prod(g.shape)) for g in grads)

    @tf.function
    def flag(gs):
        return tf.reduce_all(tf.stack([tf.reduce_all(tf.math.is_finite(g)) for g in gs]))

    flag_s = _median_seconds(lambda: flag(grads).numpy(), args.repeats)
    check_s = _median_seconds(trainer.nonfinite_state, args.repeats)

    ckpt = tf.train.Checkpoint(model=trainer.model, optimizer=trainer.optimizer)
    with tempfile.TemporaryDirectory(dir=os.environ.get("DCSP_BENCH_DIR")) as tmp:
        prefix = os.path.join(tmp, "ckpt")
        write_s = _median_seconds(lambda: ckpt.write(prefix), args.repeats)
        size = sum(os.path.getsize(os.path.join(tmp, f)) for f in os.listdir(tmp))
        read_s = _median_seconds(lambda: ckpt.read(prefix).expect_partial(), args.repeats)
    print(f"{cfg.name}: {params / 1e6:.1f} M trained parameters, {len(grads)} gradient tensors")
    print(f"gradient-finiteness flag (per step):          {1000 * flag_s:8.1f} ms")
    print(f"state check before a checkpoint (per save):   {1000 * check_s:8.1f} ms")
    print(f"checkpoint write (model + momentum):          {write_s:8.2f} s  ({size / 1e6:.0f} MB, "
          f"{size / 1e6 / max(write_s, 1e-9):.0f} MB/s)")
    print(f"checkpoint read back:                         {read_s:8.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
