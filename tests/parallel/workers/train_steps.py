"""A few segmentation-stage steps on one fixed global batch (augmentation off).

Rank r takes rows [r*b, (r+1)*b) of the global batch of size*b... with one rank the whole
batch. The cue is the ground-truth mask, so both losses and every parameter group move.
Saves OUT/weights-np<size>-rank<rank>.npz.
"""
import argparse
import os

import numpy as np

from dcsp_dist import distributed

ctx = distributed.init()
import tensorflow as tf  # noqa: E402

from dcsp_dist import config  # noqa: E402
from dcsp_dist.data import pipeline, records
from dcsp_dist.training.trainer import StageTrainer  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--data", required=True)
parser.add_argument("--out", required=True)
parser.add_argument("--global-batch", type=int, default=4)
parser.add_argument("--steps", type=int, default=2)
args = parser.parse_args()

cfg = config.make_config("tiny_test", {"augment": "false", "global_batch": str(args.global_batch),
                                       "base_lr": "0.001"})
manifest = records.read_manifest(args.data, "train")
examples = []
for ex in pipeline.make_inference_dataset(args.data, "train", files=records.shard_files(args.data, manifest)):
    ex["cue"] = ex["mask"]
    examples.append(pipeline.augment(ex, cfg.input, tf.constant([0, 0], tf.int64), maps=("cue",)))
    if len(examples) == args.global_batch * args.steps:
        break
per_rank = cfg.per_rank_batch(ctx.size)
trainer = StageTrainer("segmentation", cfg)
distributed.broadcast_state(trainer.model, trainer.optimizer)
for step in range(args.steps):
    rows = examples[step * args.global_batch:(step + 1) * args.global_batch]
    rows = rows[ctx.rank * per_rank:(ctx.rank + 1) * per_rank]
    batch = {k: tf.stack([r[k] for r in rows]) for k in ("image", "valid", "tags", "cue")}
    losses = np.array(trainer.step(batch), np.float64)
    print(f"rank {ctx.rank} step {step + 1}: losses {losses}", flush=True)
os.makedirs(args.out, exist_ok=True)
np.savez(os.path.join(args.out, f"weights-np{ctx.size}-rank{ctx.rank}.npz"),
         *[np.asarray(v) for v in trainer.model.weights])
