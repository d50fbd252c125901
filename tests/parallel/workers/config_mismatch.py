"""Ranks launched with different configs must all stop with a clear error."""
import sys

from dcsp_dist import config, distributed

ctx = distributed.init()
cfg = config.make_config("tiny_test", {"seed": str(ctx.rank)})  # differs per rank on purpose
try:
    distributed.check_same_everywhere(cfg.digest(), "the config")
except RuntimeError as exc:
    print(f"rank {ctx.rank}: {exc}", flush=True)
    sys.exit(3)
sys.exit(0)
