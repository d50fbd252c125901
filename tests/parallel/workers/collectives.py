"""Integer allreduce-sum of per-rank int64 matrices must equal the element-wise sum exactly."""
import sys

import numpy as np
import tensorflow as tf

from dcsp_dist import distributed

ctx = distributed.init()


def matrix(rank: int) -> np.ndarray:
    # Values above 2**53 would be rounded by any float path; the sum must stay exact.
    rng = np.random.default_rng(rank)
    return rng.integers(0, 2 ** 60 // 8, size=(21, 21), dtype=np.int64) + (1 << 54)


got = distributed.allreduce_sum(matrix(ctx.rank))
want = sum(matrix(r) for r in range(ctx.size))
if got.dtype != np.int64 or not np.array_equal(got, want):
    print(f"rank {ctx.rank}: allreduce_sum mismatch ({got.dtype}); max diff {np.abs(got - want).max()}", file=sys.stderr)
    sys.exit(1)
mean = distributed.allreduce_mean(np.array([float(ctx.rank)]))
if abs(mean[0] - (ctx.size - 1) / 2) > 1e-6:
    print(f"rank {ctx.rank}: allreduce_mean gave {mean}", file=sys.stderr)
    sys.exit(1)
gathered = distributed.allgather_object(ctx.rank)
assert gathered == list(range(ctx.size)), gathered

same = [tf.Variable(np.arange(6, dtype=np.float32).reshape(2, 3))]
ranks = distributed.check_weights_in_sync(same, "same weights")
assert len(ranks) == ctx.size and len({d for d, _ in ranks}) == 1, ranks
own = [tf.Variable(np.full((2, 3), float(ctx.rank), dtype=np.float32))]
try:
    distributed.check_weights_in_sync(own, "own weights")
    raise AssertionError("ranks holding different weights passed the check")
except RuntimeError as exc:   # on every rank, naming every rank
    assert "own weights: ranks hold different weights" in str(exc) and "rank 1 on" in str(exc), exc
print(f"rank {ctx.rank}: collectives OK", flush=True)
