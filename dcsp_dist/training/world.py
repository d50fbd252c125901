"""The job's world as the trainer sees it: who reads shared state, how the ranks agree,
and the loop that runs a stage's steps.

Two implementations behind one interface, chosen once per job (``for_job``):

- ``FixedWorld`` (here): a fixed set of ranks. Rank 0 reads the run directory and
  broadcasts; checks are collective; the steps run in one plain loop.
- ``ElasticWorld`` (``dcsp_dist.training.elastic``): Horovod elastic. Every rank reads shared state
  itself (a worker that joins later must meet no collective before the elastic state's
  sync) and the steps run inside Horovod's reset loop.

Both speak to Horovod only through ``dcsp_dist.distributed``.
"""
from __future__ import annotations

import dataclasses
import typing

from dcsp_dist import distributed
from dcsp_dist.core.errors import UserError
from dcsp_dist.data import records
from dcsp_dist.rundir import layout
from dcsp_dist.rundir.lock import RunLock
from dcsp_dist.rundir.settings import check_config_unchanged
from dcsp_dist.training import watchdog


@dataclasses.dataclass(frozen=True)
class StageRun:
    """One stage's steps, as every world runs them (how a world runs them is set when it is made:
    ``for_job``)."""
    stage: str
    directory: str                # the stage directory
    steps: int
    model: typing.Any
    optimizer: typing.Any
    extra_state: tuple = ()       # variables beside model and optimizer that every rank holds alike


# The kinds of error ``FixedWorld.agree`` carries from rank 0 to every rank, by name (anything
# else is a bug: rank 0's traceback, and the others stop at the broadcast it never joins).
_AGREED_ERRORS = {"UserError": UserError, "OSError": OSError}


class FixedWorld:
    """A job whose ranks stay the same from start to end."""

    def __init__(self, ctx, stall_timeout: float):
        self._ctx = ctx
        self.stall_timeout = stall_timeout   # seconds without a step before a stalled rank ends the job

    @property
    def context(self):
        return self._ctx

    @property
    def reads_shared_state(self) -> bool:
        """Whether this rank reads checkpoints and done-markers itself (else: rank 0 broadcasts)."""
        return self.context.is_chief

    def check_stages(self, stages) -> None:
        """Every stage can run in a fixed world."""

    def check_shards(self, check_mine, check_all) -> None:
        """Every rank checks its own shards; a damaged one stops every rank."""
        distributed.check_on_every_rank(check_mine, records.DataError)

    def check_batch(self, cfg) -> None:
        cfg.per_rank_batch(self.context.size)

    def check_config(self, digest: str) -> None:
        distributed.check_same_everywhere(digest, "the config")

    def agree(self, compute):
        """Rank 0's ``compute()``, on every rank; a UserError or OSError it raises is raised
        on every rank (one line each), not only on rank 0 while the others wait."""
        value, failure = None, None
        if self.context.is_chief:
            try:
                value = compute()
            except (UserError, OSError) as exc:
                failure = ("OSError" if isinstance(exc, OSError) else "UserError", str(exc))
        value, failure = distributed.broadcast_object((value, failure))
        if failure:
            raise _AGREED_ERRORS[failure[0]](failure[1])
        return value

    def hold_run(self, workdir: str, settings: dict, allow_changed: bool):
        """Rank 0 takes the run directory's lock and compares the settings with the run's
        (``RunLock``, ``rundir.settings.check_config_unchanged``); a refusal is every rank's.
        Returns the lock (release it at the end) or None on other ranks."""
        lock = RunLock(workdir) if self.context.is_chief else None
        warn = distributed.log

        def take():
            lock.acquire(warn)
            try:
                check_config_unchanged(workdir, settings, allow_changed, warn)
            except BaseException:   # a refusal, or an OSError writing config_changes.json (a full disk)
                lock.release()
                raise
        self.agree(take)
        return lock

    def agree_failure(self, failure: str | None) -> str | None:
        """Rank 0's failure (one line, or None), on every rank."""
        return distributed.broadcast_object(failure)

    def sync_state(self, model, optimizer, extra=()) -> None:
        """Rank 0's weights, optimizer slots, step (optimizer.iterations) and ``extra``
        variables to every rank."""
        distributed.broadcast_state(model, optimizer, extra)

    def input_pipeline(self, make_dataset, cfg):
        """``(first_step, ctx) -> iterator`` over this rank's batches. A fixed world builds
        its dataset once, now (before the model: the seeded ops' order is part of a
        deterministic run). A resumed stage skips the batches of the steps already done,
        so that it trains on exactly the batches an uninterrupted run would (the skipped
        batches are read and augmented once more: about the input pipeline's time for
        those steps, far less than the steps themselves)."""
        dataset = make_dataset(cfg.per_rank_batch(self._ctx.size), self._ctx, 0)
        return lambda first, ctx: iter(dataset.skip(first) if first else dataset)

    def train(self, start: int, inputs, run_steps, run: StageRun) -> None:
        """Steps ``start``..``run.steps``: ``run_steps(first, iterator, ctx, on_step, beat)``,
        watched for a stalled rank (dcsp_dist.training.watchdog)."""
        iterator = inputs(start, self._ctx)
        with watchdog.watching(layout.heartbeat_dir(run.directory), self._ctx, self.stall_timeout) as beat:
            run_steps(start, iterator, self._ctx, None, beat)


def for_job(ctx, cfg):
    """The world this process was launched into (``horovodrun --min-np/--max-np ...``: elastic),
    configured once for every stage of the job from the settings' run section."""
    if distributed.elastic_enabled():
        from dcsp_dist.training.elastic import ElasticWorld
        return ElasticWorld(ctx, commit_every=cfg.run.elastic_commit_every, per_rank_batch=cfg.per_rank_batch)
    return FixedWorld(ctx, stall_timeout=cfg.run.stall_timeout)
