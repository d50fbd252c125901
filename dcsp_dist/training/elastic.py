"""Horovod elastic training: the world of a job whose workers come and go.

``horovodrun --min-np/--max-np --host-discovery-script`` starts every worker with the same
command, and a worker may join mid-stage. So every rank reads shared state (checkpoints,
done-markers, shards) itself, with no collective before the elastic state's first sync;
the steps run in Horovod's reset loop. Weights, optimizer and step are committed to host
memory every ``elastic_commit_every`` steps; a lost worker rolls the others back to the
last commit, a new one syncs from rank 0. The global batch is kept and re-split over the
new world; each rank's pipeline is rebuilt for its new shards from the committed step.
"""
from __future__ import annotations

from dcsp_dist import distributed
from dcsp_dist.core.errors import UserError
from dcsp_dist.core.stages import TRAINING_STAGES
from dcsp_dist.rundir.settings import check_config_unchanged


class ElasticWorld:
    """The same interface as ``world.FixedWorld``, for an elastic job."""

    def __init__(self, ctx, commit_every: int, per_rank_batch):
        self._ctx = ctx
        self.commit_every = commit_every         # steps between commits of the elastic state
        self.per_rank_batch = per_rank_batch     # images per rank for a world size

    @property
    def context(self):
        return distributed.context()

    reads_shared_state = True

    def check_stages(self, stages) -> None:
        if any(name not in TRAINING_STAGES for name in stages):
            raise UserError(f"--stage {'all' if len(stages) > 1 else stages[0]}: elastic jobs run one training "
                             f"stage at a time ({', '.join(TRAINING_STAGES)}); run the cue stages with "
                             f"launch/local.sh or launch/multinode.sh")

    def check_shards(self, check_mine, check_all) -> None:
        """All shards, on every rank, with no collective."""
        check_all()

    def check_batch(self, cfg) -> None:
        """Checked for each world size inside the loop."""

    def check_config(self, digest: str) -> None:
        """horovodrun starts every elastic worker with the same command."""

    def agree(self, compute):
        return compute()

    def hold_run(self, workdir: str, settings: dict, allow_changed: bool):
        """Workers come and go and rank 0 may change, so an elastic job holds no lock; every
        rank compares the settings with the run's (no collective)."""
        check_config_unchanged(workdir, settings, allow_changed, distributed.log)
        return None

    def agree_failure(self, failure: str | None) -> str | None:
        return failure

    def sync_state(self, model, optimizer, extra=()) -> None:
        """The elastic state's sync does it, inside the loop."""

    def input_pipeline(self, make_dataset, cfg):
        """Rebuilt for each world size, from the committed step."""
        return lambda first, ctx: iter(make_dataset(cfg.per_rank_batch(ctx.size), ctx, first))

    def train(self, start: int, inputs, run_steps, run) -> None:
        state = distributed.ElasticState(run.model, run.optimizer, run.extra_state, step=start)
        calls = []

        def on_step(done):
            state.step = done
            if done % self.commit_every == 0 or done == run.steps:
                state.commit()

        @distributed.run_elastic
        def elastic_loop(state):
            c = distributed.refresh_context()
            iterator = inputs(state.step, c)   # ValueError (one line, every rank) if the batch does not divide
            if calls:
                distributed.log(f"[{run.stage}] elastic: {c.size} rank(s) from step {state.step}, "
                                f"{self.per_rank_batch(c.size)} image(s) per rank")
            calls.append(state.step)
            run_steps(state.step, iterator, c, on_step)

        elastic_loop(state)
