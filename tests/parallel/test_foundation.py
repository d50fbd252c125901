"""Horovod really averages gradients and reduces integers exactly (2 real processes)."""
import numpy as np

from tests.support.hvd import run_ranks


def _load(path):
    with np.load(path) as data:
        return [data[k] for k in sorted(data.files, key=lambda k: int(k.split("_")[1]))]


def test_two_ranks_match_single_process_on_concatenated_batch(tmp_path):
    run_ranks(2, "tests/parallel/workers/keras_sync.py", "--out", str(tmp_path))
    run_ranks(1, "tests/parallel/workers/keras_sync.py", "--out", str(tmp_path))
    rank0 = _load(tmp_path / "weights-np2-rank0.npz")
    rank1 = _load(tmp_path / "weights-np2-rank1.npz")
    single = _load(tmp_path / "weights-np1-rank0.npz")
    for a, b in zip(rank0, rank1):
        np.testing.assert_array_equal(a, b)   # identical on both ranks
    worst = max(float(np.abs(a - s).max()) for a, s in zip(rank0, single))
    assert worst < 1e-5, f"2-rank weights differ from the 1-rank run by {worst}"
    # The run must have moved the weights, or equality would prove nothing.
    assert max(float(np.abs(a).max()) for a in rank0) > 0


def test_int64_allreduce_sum_is_exact():
    proc = run_ranks(2, "tests/parallel/workers/collectives.py")
    assert proc.stdout.count("collectives OK") == 2
