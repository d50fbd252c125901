"""Everything dcsp_dist knows about Horovod lives here, and nothing else: the process set-up
and its context, rank-aware logging, the collectives, the exit policy and the elastic state.

The order follows Horovod's TensorFlow 2 examples: ``init`` (which also pins one GPU per
process and sizes the CPU thread pools), then gradients through ``allreduce_gradients``,
then ``broadcast_state`` from rank 0, and logging on rank 0 only. Rank and world size are
read once and handed to the rest of the package as plain ints.

Keras 3 variables are not ``tf.Variable``s and Horovod's ``DistributedGradientTape``
calls ``.ref()`` on its sources (horovod issue #4290), so gradients and broadcasts go
through the underlying ``tf.Variable`` (``keras_variable.value``).
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import socket
import sys
from typing import Iterable, NoReturn, Sequence

import horovod.tensorflow as hvd
import horovod.tensorflow.elastic  # noqa: F401  (hvd.elastic)
import numpy as np
import tensorflow as tf
from horovod.common import elastic as hvd_elastic_common
from horovod.common.exceptions import HorovodInternalError

from dcsp_dist.core import preemption
from dcsp_dist.core.console import say
from dcsp_dist.core.errors import UserError, first_line
from dcsp_dist.core.placement import cores_per_rank


@dataclasses.dataclass(frozen=True)
class Context:
    """This process's place in the job, as plain ints."""
    rank: int
    size: int
    local_rank: int
    local_size: int

    @property
    def is_chief(self) -> bool:
        return self.rank == 0


_CONTEXT: Context | None = None


def init(intra_threads: int | None = None, inter_threads: int | None = None,
         deterministic: bool = False, timeline: str | None = None) -> Context:
    """Initialise Horovod, pin one GPU per process and size CPU thread pools per rank.

    Args:
      intra_threads: TensorFlow intra-op threads for this rank. Default: the machine's
        cores divided by the ranks on this node, so N ranks on N cores do not
        oversubscribe. ``DCSP_THREADS`` overrides it.
      inter_threads: inter-op threads; default 2 (1 when a rank has a single core).
      deterministic: TensorFlow's op determinism (same inputs and seed, same results).
      timeline: write Horovod's timeline (Chrome trace JSON of every collective's
        negotiation and allreduce phases, by rank 0) to this file; same as HOROVOD_TIMELINE.
    Must be called before TensorFlow runs its first op.
    """
    global _CONTEXT
    if _CONTEXT is not None:
        return _CONTEXT
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        # Horovod's background thread wakes every few milliseconds by default to negotiate
        # over Gloo/MPI; on CPU-only ranks with one core each that steals compute. Measured
        # here: full-model 2-rank step 16.2 s -> 12.0 s with 50 ms (1-rank step 11.0 s).
        os.environ.setdefault("HOROVOD_CYCLE_TIME", "50")
    if timeline:
        # Read by Horovod's core at init; a relative path would land in each rank's cwd.
        os.environ["HOROVOD_TIMELINE"] = os.path.abspath(timeline)
        os.environ.setdefault("HOROVOD_TIMELINE_MARK_CYCLES", "1")
    hvd.init()
    ctx = _read_context()

    for gpu in gpus:
        tf.config.experimental.set_memory_growth(gpu, True)
    if gpus:
        tf.config.set_visible_devices(gpus[ctx.local_rank % len(gpus)], "GPU")

    env_threads = os.environ.get("DCSP_THREADS")
    if intra_threads is None:
        intra_threads = int(env_threads) if env_threads else cores_per_rank(ctx.local_size)
    if inter_threads is None:
        inter_threads = 1 if intra_threads == 1 else 2
    try:
        tf.config.threading.set_intra_op_parallelism_threads(intra_threads)
        tf.config.threading.set_inter_op_parallelism_threads(inter_threads)
    except RuntimeError:
        pass  # TensorFlow already initialised (e.g. a test imported it first): keep its pools
    if deterministic:
        tf.config.experimental.enable_op_determinism()
    _CONTEXT = ctx
    return ctx


def _read_context() -> Context:
    return Context(hvd.rank(), hvd.size(), hvd.local_rank(), hvd.local_size())


def refresh_context() -> Context:
    """Re-read rank and world size (they change when an elastic job's workers come or go)."""
    global _CONTEXT
    _CONTEXT = _read_context()
    return _CONTEXT


def context() -> Context:
    if _CONTEXT is None:
        raise RuntimeError("dcsp_dist.distributed.init() has not been called")
    return _CONTEXT


def log(*args, sep: str = " ") -> None:
    """One line on rank 0 only, in one write, flushed so that horovodrun shows it at once."""
    if _CONTEXT is None or _CONTEXT.is_chief:
        say(sep.join(str(a) for a in args))


def error(message: str) -> None:
    """One clear line on stderr (every rank that hits it), for fatal input errors."""
    prefix = f"[rank {_CONTEXT.rank}] " if _CONTEXT and _CONTEXT.size > 1 else ""
    say(f"{prefix}error: {message}", err=True)


def raw_variables(variables: Iterable) -> list[tf.Variable]:
    """The tf.Variables behind Keras 3 variables (plain tf.Variables pass through); use these
    as gradient sources and broadcast targets."""
    return [v if isinstance(v, tf.Variable) else v.value for v in variables]


def allreduce_gradients(tape: tf.GradientTape, loss: tf.Tensor, variables: Sequence,
                        compression: str = "none") -> list[tf.Tensor]:
    """Gradients of ``loss`` averaged over all ranks (what Horovod's DistributedGradientTape
    does: one grouped allreduce of the tape's gradients).

    ``variables`` may be Keras 3 variables: gradients are taken with respect to the
    underlying tf.Variables. Never divide the loss by the world size: Horovod averages.
    """
    return average_gradients(tape.gradient(loss, raw_variables(variables)), compression)


def average_gradients(grads: Sequence[tf.Tensor], compression: str = "none") -> list[tf.Tensor]:
    """Average already-computed gradients over ranks (one grouped, fused allreduce).

    Used by steps whose gradient part is compiled with XLA (Horovod's collectives run
    outside the compiled function) and by ``allreduce_gradients``.
    """
    comp = hvd.Compression.fp16 if compression == "fp16" else hvd.Compression.none
    compressed, contexts = zip(*[comp.compress(g) for g in grads])
    reduced = hvd.grouped_allreduce(list(compressed), op=hvd.Average)
    return [comp.decompress(g, c) for g, c in zip(reduced, contexts)]


def broadcast_variables(variables: Iterable, root_rank: int = 0) -> None:
    """Overwrite ``variables`` on every rank with rank ``root_rank``'s values."""
    raw = raw_variables(variables)
    if raw:
        hvd.broadcast_variables(raw, root_rank=root_rank)


def broadcast_state(model, optimizer=None, extra: Iterable = (), root_rank: int = 0) -> None:
    """Broadcast model weights (trainable and not), optimizer slots and ``extra`` vars."""
    variables = list(model.variables)
    if optimizer is not None:
        variables += list(optimizer.variables)
    variables += list(extra)
    broadcast_variables(variables, root_rank)


def allreduce_sum(value) -> np.ndarray:
    """Element-wise sum over ranks; exact for integers (counts, confusion matrices)."""
    tensor = tf.convert_to_tensor(value)
    return hvd.allreduce(tensor, op=hvd.Sum, name=None).numpy()


def allreduce_mean(value) -> np.ndarray:
    """Element-wise mean over ranks of a float metric."""
    tensor = tf.convert_to_tensor(value, dtype=tf.float64 if np.asarray(value).dtype == np.float64 else tf.float32)
    return hvd.allreduce(tensor, op=hvd.Average).numpy()


def allgather_object(obj) -> list:
    """Every rank's ``obj``, in rank order (pickled; for small things like config hashes)."""
    return hvd.allgather_object(obj)


def broadcast_object(obj, root_rank: int = 0):
    return hvd.broadcast_object(obj, root_rank=root_rank)


def barrier() -> None:
    """Wait for every rank (horovod.tensorflow has no barrier op; a tiny allreduce is one)."""
    hvd.allreduce(tf.constant(0, tf.int32), op=hvd.Sum, name="dcsp_barrier")


def check_same_everywhere(value: str, what: str) -> None:
    """Raise on every rank unless all ranks hold the same ``value`` (e.g. a config hash)."""
    values = allgather_object(value)
    if len(set(values)) != 1:
        detail = ", ".join(f"rank {i}: {v}" for i, v in enumerate(values))
        raise UserError(f"ranks disagree on {what} ({detail}); launch every rank with the same flags")


def weights_digest(variables: Iterable) -> str:
    """sha256 over the values of ``variables`` in order (bit-exact fingerprint of a model)."""
    digest = hashlib.sha256()
    for v in raw_variables(variables):
        digest.update(np.ascontiguousarray(v.numpy()).tobytes())
    return digest.hexdigest()


def check_weights_in_sync(variables: Iterable, what: str) -> list[tuple[str, str]]:
    """Every rank's weight digest and host name, in rank order; raise on every rank if the
    digests differ.

    Synchronous data parallelism keeps weights bit-identical everywhere; a difference means
    a rank trained on its own.
    """
    gathered = allgather_object((weights_digest(variables), socket.gethostname()))
    if len({d for d, _ in gathered}) != 1:
        detail = ", ".join(f"rank {i} on {h}: {d[:12]}" for i, (d, h) in enumerate(gathered))
        raise RuntimeError(f"{what}: ranks hold different weights ({detail})")
    return gathered


def peer_failed(exc: BaseException) -> bool:
    """True for the error a rank gets in a collective after another rank has failed."""
    return "Horovod has been shut down" in str(exc)


def collective_failed(exc: BaseException) -> bool:
    """True for a collective that failed underneath (Gloo's receive timeout, a peer's closed
    connection, Horovod's internal error), as opposed to an error of this rank's own."""
    if isinstance(exc, HorovodInternalError):
        return True
    text = str(exc)
    return isinstance(exc, tf.errors.OpError) and any(
        k in text for k in ("Horovod", "horovod", "Gloo", "gloo", "Timed out", "Connection closed", "Connection reset"))


def run_or_report(job) -> int:
    """Run ``job()``; exit status 0, or 1 after one line on stderr for the project's own errors
    (``errors.UserError``: bad input, damaged files, a refused run) and ``OSError`` (a full
    disk), or for the error a rank gets in a collective once another rank has failed or
    stopped (the failing rank's own line, or the watchdog's, says which when it could).
    Anything else is a bug and keeps its traceback. After a signal stopped the job resumably
    the rank ends at once with ``preemption.EXIT_PREEMPTED`` (``leave_now``)."""
    try:
        job()
    except preemption.Preempted as exc:
        log(str(exc))
        leave_now(preemption.EXIT_PREEMPTED)
    except (UserError, OSError) as exc:
        error(str(exc))
        return 1
    except Exception as exc:
        if not (peer_failed(exc) or collective_failed(exc)):
            raise
        error(f"stopped: a collective with the other ranks failed ({first_line(exc)}); another rank stopped or "
              f"failed")
        return 1
    return 0


def leave_now(status: int) -> NoReturn:
    """End this rank at once with ``status``: Horovod shut down with the other ranks, then no
    interpreter teardown. For a preemption stop, when every rank has passed the barrier behind
    the checkpoint and its marker and nothing is left to write: tearing a ResNet-101 process
    down took over 30 s on a loaded node, and a cluster does not wait that long (srun ends the
    other ranks once one has exited, with KILL after ``KillWait``, and holds the requeue)."""
    sys.stdout.flush()
    sys.stderr.flush()
    hvd.shutdown()
    os._exit(status)


def check_on_every_rank(check, error_type=UserError) -> None:
    """Run this rank's ``check()``; if it raises ``error_type`` on any rank, raise the
    first rank's error on every rank, so one rank's bad input stops all of them at once
    instead of leaving the others waiting in a collective."""
    try:
        check()
        problem = None
    except error_type as exc:
        problem = str(exc)
    problem = next((p for p in allgather_object(problem) if p), None)
    if problem:
        raise error_type(problem)


def allreduce_mean_tensor(tensor: tf.Tensor) -> tf.Tensor:
    """Graph-friendly mean over ranks (usable inside tf.function, e.g. for step losses)."""
    return hvd.allreduce(tensor, op=hvd.Average)


# ============================================================================ elastic
def elastic_enabled() -> bool:
    """True when launched by ``horovodrun --min-np/--max-np --host-discovery-script``."""
    return os.environ.get("HOROVOD_ELASTIC") == "1"


class ElasticState(hvd_elastic_common.ObjectState):
    """Horovod elastic state for Keras 3 models: weights, optimizer slots and step counter
    (``optimizer.iterations``), plus plain Python attributes given as keywords.

    Horovod's own ``TensorFlowKerasState`` broadcasts the Keras variables themselves and
    fails on Keras 3 (horovod#4290), so saving, restoring and syncing go through the
    underlying ``tf.Variable``s, as ``broadcast_state`` does. ``commit()`` copies every
    variable to host memory (numpy) and checks for host changes; after a worker is lost the
    survivors ``restore()`` the last commit; ``sync()`` sends rank 0's state to every rank,
    including workers that just joined.
    """

    def __init__(self, model, optimizer, extra=(), **attributes):
        self._variables = raw_variables(list(model.variables) + list(optimizer.variables) + list(extra))
        self._saved_values = None
        super().__init__(bcast_object=hvd.broadcast_object, get_rank=hvd.rank, **attributes)
        self._save_variables()

    def _save_variables(self):
        self._saved_values = [v.numpy() for v in self._variables]

    def save(self):
        self._save_variables()
        super().save()

    def restore(self):
        for variable, value in zip(self._variables, self._saved_values):
            variable.assign(value)
        super().restore()

    def sync(self):
        if self._variables:
            hvd.broadcast_variables(self._variables, root_rank=0)
        super().sync()
        self._save_variables()


def run_elastic(func):
    """Horovod's elastic driver loop around ``func(state)``: on a lost worker the
    survivors roll back to the last commit, re-form the ring and call ``func`` again; on
    added workers everyone syncs from rank 0 and calls it again."""

    def guarded(state, *args, **kwargs):
        try:
            return func(state, *args, **kwargs)
        except tf.errors.OpError as exc:
            # Horovod's wrapper only recognises UnknownErrors naming its ops; a lost peer in
            # a tf.function step surfaces as "Horovod has been shut down" (another type), and
            # any other failed Horovod op names Horovod too.
            if "Horovod" in str(exc):
                raise HorovodInternalError(exc) from exc
            raise
    return hvd.elastic.run(guarded)
