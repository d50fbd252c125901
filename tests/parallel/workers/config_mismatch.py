"""Ranks launched with different configs must all stop with a clear error."""
import sys

from dcsp_dist import config, distributed
from dcsp_dist.core.errors import UserError

ctx = distributed.init()
cfg = config.make_config("tiny_test", {"seed": str(ctx.rank)})  # differs per rank on purpose
try:
    distributed.check_same_everywhere(cfg.digest(), "the config")
except UserError as exc:   # an input error: one line on every rank
    print(f"rank {ctx.rank}: {exc}", flush=True)
    sys.exit(3)
sys.exit(0)
