"""The dense CRF's worker pool, overlapped with the network (docs/method.md §5).

No TensorFlow here: the pool's processes are spawned and import only this module and
``dcsp_dist.inference.crf``.
"""
from __future__ import annotations

import collections
import contextlib
import multiprocessing
import signal
from concurrent.futures import ProcessPoolExecutor

from dcsp_dist.core.placement import cores_per_rank
from dcsp_dist.core.preemption import DEFAULT_SIGNALS, parse_signals
from dcsp_dist.inference.crf import crf_on_labels, dense_crf, select_labels


def run_inference(probabilities, dataset, crf_params, workers: int = 1):
    """Yield (example, [H, W] uint8 label map, [H, W] uint8 network argmax) for every
    example of ``dataset`` (the label map is the CRF's, or the argmax without CRF).

    ``probabilities``: the compiled image -> [H, W, C] fn (``probability_fn_for``). The
    network runs here; the CPU-bound dense CRF of an image runs in a pool of
    ``workers`` processes while the network computes the next images (``workers=0``:
    inline, sequential). Labels come back in dataset order.
    """


    if workers <= 0 or crf_params is None:
        for ex in dataset:
            probs = probabilities(ex["image"]).numpy()
            argmax = probs.argmax(-1).astype("uint8")
            yield ex, argmax if crf_params is None else dense_crf(ex["image"].numpy(), probs, crf_params), argmax
        return
    pending = collections.deque()
    signals = _preemption_signals()
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=ignore_preemption_signals)
    try:
        for ex in dataset:
            probs = probabilities(ex["image"]).numpy()
            # Only the labels that can matter travel to the worker, as [k, H, W] float32.
            labels, sub = select_labels(probs, crf_params.label_margin)
            with _blocked(signals):   # a worker this submit starts is born with them blocked
                future = pool.submit(crf_on_labels, ex["image"].numpy(), sub, labels, crf_params)
            pending.append((ex, future, probs.argmax(-1).astype("uint8")))
            while len(pending) > 2 * workers:   # bounded look-ahead keeps memory flat
                done_ex, future, argmax = pending.popleft()
                yield done_ex, future.result(), argmax
        while pending:
            done_ex, future, argmax = pending.popleft()
            yield done_ex, future.result(), argmax
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _preemption_signals():
    return parse_signals(DEFAULT_SIGNALS)


@contextlib.contextmanager
def _blocked(signals):
    """Blocks ``signals`` in the calling thread for the block: the pool spawns its workers from
    ``submit`` in this thread, and a spawned process starts with its parent's signal mask, so
    a signal that reaches the process group while a worker starts up waits, blocked, until the
    worker has set it to be ignored. The rank loses nothing: a signal sent meanwhile is
    delivered to another of its threads, or to it when the block ends."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def ignore_preemption_signals() -> None:
    """In a CRF worker: a preemption signal (sent to the whole process group by SLURM, srun or
    a terminal) is the rank's to handle; the worker finishes its image, and the rank stops
    between images with exit 75. A worker killed by it would break the pool instead. The
    worker starts with them blocked (``_blocked``); one sent before this point is discarded
    when they are unblocked here, being ignored by then."""
    signals = _preemption_signals()
    for sig in signals:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, signals)


def default_crf_workers(local_size: int) -> int:
    """CRF processes per rank: the rank's share of this node's cores.

    The CRF (~1 s of CPU per VOC image) outweighs the network's CPU work (small on a GPU,
    and on a CPU the network waits for the CRF anyway), so every core gets a CRF process.
    """
    return cores_per_rank(local_size)
