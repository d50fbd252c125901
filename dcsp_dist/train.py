"""DCSP training on Horovod: attention stage, cues, segmentation, adaptation (docs/method.md §4).

    horovodrun -np 8 python -m dcsp_dist.train --stage attention --config voc_paper \
        --data records/voc12 --workdir runs/voc
    python -m dcsp_dist.train --stage all --config synthetic_demo --data ... --workdir ...

``--stage all`` runs attention -> cues -> segmentation -> adapt -> segmentation_adapted,
skipping stages already done and resuming an interrupted one from its last checkpoint.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

from dcsp_dist import config as config_lib
from dcsp_dist import configs
from dcsp_dist.core import atomic, preemption
from dcsp_dist.core import stages as stage_table
from dcsp_dist.core.errors import TrainingStopped, UserError
from dcsp_dist.data import records
from dcsp_dist.rundir import checkpoints, layout
from dcsp_dist.training.cue_writer import cue_stage
from dcsp_dist.training.recovery import Recovery
from dcsp_dist.training.reporting import Diagnostics, Reporter
from dcsp_dist.training.trainer import StageTrainer


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m dcsp_dist.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", required=True, choices=("all",) + stage_table.SCHEDULE)
    parser.add_argument("--config", default="voc_paper", help=f"preset: {', '.join(configs.names())}")
    parser.add_argument("--config-file", help="JSON file of settings overriding the preset")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="override one setting by its dotted or flat name: crf.iterations=5, attention_steps=300 "
                             "(repeatable; python -m dcsp_dist.config lists them)")
    parser.add_argument("--data", required=True, help="directory of TFRecords from data_tools.build")
    parser.add_argument("--workdir", required=True, help="run directory (one sub-directory per stage)")
    parser.add_argument("--threads", type=int, default=None, help="TensorFlow threads per rank")
    parser.add_argument("--horovod-timeline", metavar="FILE", help="write Horovod's timeline (a Chrome trace of every "
                        "collective) to FILE; open it in chrome://tracing or ui.perfetto.dev")
    parser.add_argument("--verify-data", action="store_true",
                        help="before training, check every shard's sha256 and record count (default: "
                             "existence and size, which is free)")
    parser.add_argument("--allow-changed-config", action="store_true",
                        help="resume a run with settings that differ from its saved config.json (the "
                             "differences are recorded in <workdir>/config_changes.json)")
    return parser.parse_args(argv)


@dataclasses.dataclass(frozen=True)
class TrainInputs:
    """The training split as checked at start: its manifest and every shard file."""
    data_dir: str
    manifest: dict
    shards: list


class StepLoop:
    """The shared loop of fixed and elastic jobs: ``loop(first, iterator, ctx, on_step)``
    runs steps ``first``..``steps`` with reporting and periodic checkpoints."""

    def __init__(self, stage: str, cfg, workdir: str, inputs: TrainInputs, trainer, ckpts):
        self.stage, self.cfg, self.workdir, self.inputs, self.trainer, self.ckpts = \
            stage, cfg, workdir, inputs, trainer, ckpts
        spec = stage_table.get(stage)
        self.cue_dir = layout.stage_dir(workdir, spec.cues) if spec.cues else None
        self.reporter = Reporter(stage, cfg, layout.stage_dir(workdir, stage), trainer.steps, trainer.schedule,
                                 trainer.model, trainer.lr_scale)
        self.recovery = Recovery(trainer, cfg.run)
        self.diagnostics = Diagnostics(trainer, cfg, layout.diagnostics_path(workdir, stage), self.reporter.writer) \
            if cfg.run.diagnostics_every else None

    def __call__(self, first: int, iterator, ctx, on_step=None, beat=None) -> None:
        """``beat(progress)``, when given, hears 2*step+1 as a step starts and 2*done when it ends."""
        beat = beat or (lambda progress: None)
        self.reporter.begin(first)
        self.recovery.keep(first)          # a good state from the start, before any checkpoint
        for step in range(first, self.trainer.steps):
            batch = self._next(iterator, ctx)
            beat(2 * step + 1)
            step_start = time.time()
            result = self.trainer.step(batch, preemption.requested())
            done = step + 1
            beat(2 * done)
            if ctx.is_chief:               # nothing more is written once the run lock was lost
                atomic.check_writes(layout.stage_dir(self.workdir, self.stage))
            spiked = self._judge(result, done)
            self.reporter.step_done(done, result, batch, ctx.is_chief, step_start)
            if self.diagnostics and ctx.is_chief:
                self.diagnostics.step_done(done, result, batch)
            stop = result.stop             # some rank was signalled: every rank sees it at this step
            if stop or done % self.cfg.run.checkpoint_every == 0 or done == self.trainer.steps:
                spiked = self._check_state(done) or spiked   # every rank: they hold the same weights
                if ctx.is_chief:
                    self._save(done, stop)
            if not spiked and self.recovery.due(done):
                self.recovery.keep(done)
            if on_step:
                on_step(done)
            if stop:
                self._preempted(done)

    def _save(self, done: int, stop: bool) -> None:
        """Rank 0's checkpoint, and on a preemption its marker: one write that no signal cuts
        short (a hard stop asked for meanwhile exits 75 right after it, the job resumable)."""
        with preemption.critical(f"checkpoint {done}", safe_exit=preemption.EXIT_PREEMPTED if stop else None):
            self.ckpts.save(done)
            if stop:
                self.reporter.flush()
                preemption.record(self.workdir, f"{self.stage} step {done}, {self.ckpts.latest}")

    def _preempted(self, done: int) -> None:
        from dcsp_dist import distributed
        distributed.barrier()          # the checkpoint and marker are on disk before any rank exits
        raise preemption.Preempted(f"[{self.stage}] preempted at step {done}/{self.trainer.steps} "
                                   f"({preemption.signal_name() or 'another rank was signalled'}); checkpoint "
                                   f"{self.ckpts.latest}; relaunch the same command to resume")

    def _judge(self, result, done: int) -> bool:
        """A step's rank-averaged losses and gradient flag (the same on every rank): a spike
        is rolled back from (``dcsp_dist.training.recovery``); True if it was."""
        from dcsp_dist import distributed
        if not result.finite and self.cfg.model.mixed_precision == "float16":
            distributed.log(f"[{self.stage}] step {done}: float16 gradients overflowed; step skipped")
            return False
        why = self.recovery.judge(result)
        if why:
            self._recover(why, result.total, done)
        return why is not None

    def _check_state(self, done: int) -> bool:
        """No checkpoint holds a non-finite weight or momentum (finite gradients can still
        overflow the weights): rolled back from like a spike. One compiled pass over the
        state, at checkpoint steps only; True if it rolled back."""
        bad = self.trainer.nonfinite_state()
        if bad:
            self._recover(f"non-finite values in {bad}", float("nan"), done)
        return bad is not None

    def _recover(self, why: str, loss: float, done: int) -> None:
        """Every rank rolls back to the last good state, or, past ``run.recovery_max``
        roll-backs (or with recovery off), saves that state and stops."""
        from dcsp_dist import distributed
        recovery = self.recovery
        if recovery.can_roll_back():
            event = recovery.roll_back(done, loss, why)
            line = event.line(self.stage, len(recovery.events), recovery.limit)
            distributed.log(line)
            self.reporter.recovery(done, line, event.lr_scale, len(recovery.events), distributed.context().is_chief)
            return
        kept = "none (recovery is off: run.recovery_max=0)"
        if recovery.good_step is not None:
            good = recovery.restore_last_good()
            if distributed.context().is_chief:
                self.ckpts.save(good)
            distributed.barrier()       # the last good state is on disk before any rank stops
            kept = f"{os.path.join(self.ckpts.directory, f'ckpt-{good}')} (step {good})"   # every rank names it
        after = f" after {len(recovery.events)} recoveries" if recovery.events else ""
        raise TrainingStopped(f"[{self.stage}] {why} at step {done}{after}; stopped. The last good state is "
                              f"saved: {kept}")

    def _next(self, iterator, ctx):
        import tensorflow as tf

        try:
            return next(iterator)
        except tf.errors.DataLossError as exc:
            shards = records.files_for_rank(self.inputs.shards, ctx.rank, ctx.size)
            raise records.DataError(records.damaged_shard_message(
                self.inputs.data_dir, self.inputs.manifest, shards, exc, self.cue_dir)) from None


def train_stage(stage: str, cfg, world, inputs: TrainInputs, workdir: str):
    """Run (or resume) one training stage; returns its StageTrainer."""
    import keras

    from dcsp_dist import distributed
    from dcsp_dist.data import pipeline
    from dcsp_dist.training.world import StageRun

    # The global seed first: tf.data's seeded ops derive their seeds from it, so a stage
    # draws the same batches whether it runs alone or inside --stage all.
    keras.utils.set_random_seed(cfg.run.seed)
    spec, directory = stage_table.get(stage), layout.stage_dir(workdir, stage)
    if world.context.is_chief:
        os.makedirs(directory, exist_ok=True)
        atomic.write_json(layout.config_path(directory), json.loads(cfg.to_json()))
        atomic.write_json(layout.classes_path(directory), {"class_names": inputs.manifest["class_names"]})
    cue_dir = layout.stage_dir(workdir, spec.cues) if spec.cues else None
    if cue_dir:
        mine = records.files_for_rank(inputs.shards, world.context.rank, world.context.size)
        world.check_shards(lambda: records.check_cue_shards(cue_dir, mine, spec.cues),
                           lambda: records.check_cue_shards(cue_dir, inputs.shards, spec.cues))
    batches = world.input_pipeline(lambda per, c, first: pipeline.make_train_dataset(
        inputs.data_dir, cfg, per, c.rank, c.size, cue_dir=cue_dir, start_step=first), cfg)

    trainer = StageTrainer(stage, cfg)
    ckpts = checkpoints.StageCheckpoints(trainer.model, trainer.optimizer, directory, cfg.run.keep_checkpoints,
                                         extra={"lr_scale": trainer.lr_scale})
    origin = ckpts.resume_or_initialise(world.reads_shared_state, world.agree_failure,
                                        lambda: _initialise(trainer.model, spec, cfg, workdir),
                                        warn=lambda m: distributed.log(f"[{stage}] {m}"))
    if origin:
        distributed.log(f"[{stage}] {origin}")
    world.sync_state(trainer.model, trainer.optimizer, (trainer.lr_scale,))
    start = int(trainer.optimizer.iterations.numpy())
    if start >= trainer.steps:
        distributed.log(f"[{stage}] already at step {start}/{trainer.steps}")

    loop = StepLoop(stage, cfg, workdir, inputs, trainer, ckpts)
    world.train(start, batches, loop, StageRun(stage=stage, directory=directory, steps=trainer.steps,
                                               model=trainer.model, optimizer=trainer.optimizer,
                                               extra_state=(trainer.lr_scale,)))
    _finish(loop, world.context, start)
    return trainer


def _initialise(model, spec, cfg, workdir: str) -> str:
    """A stage's starting weights when it has no checkpoint of its own; says which."""
    from dcsp_dist.models import load_initial_weights
    if spec.init_from:
        checkpoints.restore_model(model, layout.stage_checkpoint(workdir, spec.init_from),
                                  f"the {spec.init_from} stage's checkpoint")
        return f"initialised from the {spec.init_from} stage"
    return f"initialised from {load_initial_weights(model, cfg.model.init_weights)}"


def _finish(loop: StepLoop, ctx, start: int) -> None:
    """Check every rank holds the same weights, then rank 0 saves the final checkpoint and
    writes done.json (with the digest of the records it trained on and any roll-backs)."""
    from dcsp_dist import distributed
    stage, trainer, ckpts, reporter, workdir = loop.stage, loop.trainer, loop.ckpts, loop.reporter, loop.workdir
    ranks = distributed.check_weights_in_sync(trainer.model.variables, f"[{stage}] end of stage")
    # Rank 0 prints every rank's gathered digest in one write: lines printed by each rank
    # reach mpirun's output in pieces and can be spliced into one another.
    distributed.log("\n".join(f"[{stage}] rank {i} on {h}: weights sha256 {d}" for i, (d, h) in enumerate(ranks)))
    steps = trainer.steps
    if ctx.is_chief:
        if ckpts.latest is None or not ckpts.latest.endswith(f"-{steps}"):
            ckpts.save(max(steps, start))
        reporter.flush()
        directory = layout.stage_dir(workdir, stage)
        done = {"stage": stage, "steps": steps, "checkpoint": os.path.relpath(ckpts.latest, directory),
                "seconds": round(time.time() - reporter.t0, 1), "weights_sha256": ranks[0][0],
                "hosts": sorted({h for _, h in ranks}), "records": records.records_digest(loop.inputs.manifest),
                "recoveries": loop.recovery.record()}
        atomic.write_json(layout.done_path(workdir, stage), done)
        distributed.log(f"[{stage}] done: {ckpts.latest}")
    distributed.barrier()


def check_inputs(stages, cfg, world, data_dir: str, verify_data: bool = False) -> TrainInputs:
    """Fail before any work on missing or inconsistent records (one clear line); returns
    the training split as checked."""
    from dcsp_dist import distributed
    ctx = world.context
    manifest = records.read_manifest(data_dir, cfg.run.train_split)
    shards = records.shard_files(data_dir, manifest)
    mine = records.files_for_rank(shards, ctx.rank, ctx.size, what=f"{data_dir} split {cfg.run.train_split}")
    world.check_shards(lambda: records.check_shards(data_dir, manifest, mine, deep=verify_data),
                       lambda: records.check_shards(data_dir, manifest, shards, deep=verify_data))
    if any(stage_table.get(s).needs_saliency for s in stages) and not manifest.get("has_saliency"):
        raise records.DataError(f"{records.manifest_path(data_dir, cfg.run.train_split)}: the training split has no "
                                f"saliency maps, which the cue stage needs (see data_tools.saliency)")
    if manifest.get("role") not in (None, "train") or not manifest["num_examples"]:
        raise records.DataError(f"{records.manifest_path(data_dir, cfg.run.train_split)}: not a training split "
                                f"(role {manifest.get('role')}, {manifest['num_examples']} examples)")
    world.check_batch(cfg)
    records.check_balance(data_dir, manifest, ctx.size, distributed.log)
    return TrainInputs(data_dir, manifest, shards)


def _is_done(workdir: str, stage: str, inputs: TrainInputs) -> bool:
    """done.json exists, the stage was done on these records and, for a training stage, the
    checkpoint it names reads back. A cue stage done on other records is redone (its shards
    whose image shard is unchanged are kept); a training stage is refused (ValueError)."""
    from dcsp_dist import distributed
    if not layout.is_done(workdir, stage):
        return False
    made_from, now = layout.read_done(workdir, stage).get("records"), records.records_digest(inputs.manifest)
    if made_from not in (None, now):    # a done.json without the record: taken as it is
        if not stage_table.get(stage).trains:
            distributed.log(f"[{stage}] the training records changed since this stage was done; redoing it "
                            f"(cue shards of unchanged image shards are kept)")
            return False
        raise UserError(f"[{stage}] was trained on other records than {inputs.data_dir} split "
                         f"{inputs.manifest['split']} holds now (records {made_from}, now {now}); train on a new "
                         f"--workdir, or delete {layout.stage_dir(workdir, stage)} and the stages after it")
    if stage_table.get(stage).trains:
        prefix = layout.stage_checkpoint(workdir, stage)
        why = checkpoints.problem(prefix)
        if why:
            distributed.log(f"[{stage}] warning: done.json names {prefix}, which is unreadable ({why}); "
                            f"the stage resumes from its newest readable checkpoint")
            return False
    return True


def resolve_classes(cfg, data_dir: str, explicit: bool):
    """The config sized for the training records' class list; train and val must agree."""
    manifest = records.read_manifest(data_dir, cfg.run.train_split, check_files=False)
    if os.path.isfile(records.manifest_path(data_dir, cfg.run.val_split)):
        records.check_same_classes(data_dir, cfg.run.train_split, cfg.run.val_split)
    return cfg.with_classes(manifest["class_names"], explicit)


def run(stage: str, cfg, ctx, data_dir: str, workdir: str, verify_data: bool = False,
        allow_changed_config: bool = False) -> None:
    from dcsp_dist.training import world as worlds

    world = worlds.for_job(ctx, cfg)
    stages = stage_table.SCHEDULE if stage == "all" else (stage,)
    world.check_stages(stages)
    atomic.check_writable_dir(workdir, "--workdir")
    inputs = check_inputs(stages, cfg, world, data_dir, verify_data)
    world.check_config(cfg.digest())
    lock = world.hold_run(workdir, cfg.flat(), allow_changed_config)
    try:
        _run_stages(stages, cfg, world, inputs, workdir)
    finally:
        if lock:
            lock.release()


def _run_stages(stages, cfg, world, inputs: TrainInputs, workdir: str) -> None:
    from dcsp_dist import distributed
    for name in stages:
        # Rank 0 owns the run directory; every rank follows its view of what is done.
        if world.agree(lambda name=name: _is_done(workdir, name, inputs)):
            distributed.log(f"[{name}] already done, skipping")
        elif stage_table.get(name).trains:
            train_stage(name, cfg, world, inputs, workdir)
        else:
            cue_stage(name, cfg, world.context, inputs.data_dir, workdir)


def _start(args, cfg, ctx) -> None:
    from dcsp_dist.training import devices
    preemption.install(cfg.run.preempt_signals)
    devices.report_devices(ctx, cfg.run.require_gpu)
    run(args.stage, cfg, ctx, args.data, args.workdir, args.verify_data, args.allow_changed_config)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        cfg = config_lib.make_config(args.config, config_lib.parse_overrides(args.set), args.config_file)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from dcsp_dist import distributed
    explicit = "num_classes" in config_lib.explicit_settings(args.set, args.config_file)
    try:
        cfg = resolve_classes(cfg, args.data, explicit)
    except (UserError, OSError) as exc:   # DataError included: one line, before Horovod starts
        print(f"error: {exc}", file=sys.stderr)
        return 2 if not isinstance(exc, records.DataError) else 1
    ctx = distributed.init(intra_threads=args.threads, deterministic=cfg.run.deterministic, timeline=args.horovod_timeline)
    distributed.log(f"dcsp_dist.train: stage {args.stage}, config {cfg.name} ({cfg.digest()}), "
                    f"{ctx.size} rank(s), global batch {cfg.optimizer.global_batch}")
    return distributed.run_or_report(lambda: _start(args, cfg, ctx))


if __name__ == "__main__":
    sys.exit(main())
