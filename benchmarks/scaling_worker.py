"""Worker for scaling_bench.py: timed training steps on this rank's records; prints JSON."""
import argparse
import json
import time

from dcsp_dist import distributed

ctx = distributed.init()
from dcsp_dist import config  # noqa: E402
from dcsp_dist.data import pipeline
from dcsp_dist.training.trainer import StageTrainer  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--data", required=True)
parser.add_argument("--preset", required=True)
parser.add_argument("--per-rank-batch", type=int, required=True)
parser.add_argument("--crop", type=int, required=True)
parser.add_argument("--steps", type=int, default=5)
parser.add_argument("--warmup", type=int, default=2)
args = parser.parse_args()
cfg = config.make_config(args.preset, {"global_batch": str(args.per_rank_batch * ctx.size),
                                       "crop_size": str(args.crop), "attention_trains_backbone": "true",
                                       "init_weights": "none"})
trainer = StageTrainer("attention", cfg)   # gradients through the whole network
distributed.broadcast_state(trainer.model, trainer.optimizer)
batches = iter(pipeline.make_train_dataset(args.data, cfg, args.per_rank_batch, ctx.rank, ctx.size))
for _ in range(args.warmup):
    trainer.step(next(batches))
start = time.perf_counter()
for _ in range(args.steps):
    trainer.step(next(batches))
seconds = time.perf_counter() - start
per_rank = args.steps * args.per_rank_batch / seconds
if ctx.is_chief:
    print(json.dumps({"ranks": ctx.size, "images_per_sec_per_rank": per_rank,
                      "images_per_sec_total": per_rank * ctx.size, "step_s": seconds / args.steps}), flush=True)
