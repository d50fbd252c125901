"""The layout of a run directory: one sub-directory per stage. This module is the only one
that spells these names; everything else asks it.

    <workdir>/.lock                 the run lock (dcsp_dist.rundir.lock)
    <workdir>/config_changes.json   settings changed on a resume (--allow-changed-config)
    <workdir>/preempted.json        the marker of a resumable stop (dcsp_dist.core.preemption)
    <workdir>/attention/            ckpt/  tb/  heartbeat/  config.json  classes.json  done.json
    <workdir>/cues/                 train-0000i-of-0000N.cues.tfrecord  cues.json  done.json
    <workdir>/segmentation/         ckpt/  tb/  heartbeat/  config.json  classes.json  done.json
    <workdir>/adapt/                adapted cue shards  cues.json  done.json
    <workdir>/segmentation_adapted/ ckpt/  tb/  heartbeat/  config.json  classes.json  done.json
    <workdir>/eval_<split>/         results.json  confusion.png  tb/   (dcsp_dist.evaluate)

A training stage may also hold ``diagnostics.jsonl`` (``run.diagnostics_every``).
"""
from __future__ import annotations

import os

from dcsp_dist.core.atomic import read_json
from dcsp_dist.core.stages import SCHEDULE, TRAINING_STAGES  # noqa: F401  (the stage table's names)


def stage_dir(workdir: str, stage: str) -> str:
    return os.path.join(workdir, stage)


CONFIG, CLASSES, CUES, DONE = "config.json", "classes.json", "cues.json", "done.json"
CHECKPOINTS, HEARTBEAT, CONFIG_CHANGES = "ckpt", "heartbeat", "config_changes.json"


def config_path(stage_directory: str) -> str:
    """A training stage's resolved settings."""
    return os.path.join(stage_directory, CONFIG)


def classes_path(stage_directory: str) -> str:
    """A training stage's class list (background first)."""
    return os.path.join(stage_directory, CLASSES)


def checkpoint_dir(stage_directory: str) -> str:
    return os.path.join(stage_directory, CHECKPOINTS)


def heartbeat_dir(stage_directory: str) -> str:
    """The stall watchdog's per-rank heartbeat files (dcsp_dist.training.watchdog)."""
    return os.path.join(stage_directory, HEARTBEAT)


def stage_of_checkpoint(prefix: str) -> str | None:
    """The stage directory of a checkpoint prefix ``<stage dir>/ckpt/ckpt-N``, or None when
    the prefix does not lie in a stage's checkpoint folder."""
    ckpt_dir = os.path.dirname(os.path.abspath(prefix))
    return os.path.dirname(ckpt_dir) if os.path.basename(ckpt_dir) == CHECKPOINTS else None


def config_changes_path(workdir: str) -> str:
    return os.path.join(workdir, CONFIG_CHANGES)


def eval_dir(run: str, split: str) -> str:
    """Where evaluation of a run on ``split`` writes by default."""
    return os.path.join(run, f"eval_{split}")


def cue_summary_path(cue_dir: str) -> str:
    """A cue stage's record of every cue shard's records and bytes."""
    return os.path.join(cue_dir, CUES)


def cue_shard_name(image_shard: str) -> str:
    """The cue shard that mirrors an image shard: ``train-00001-of-00008.tfrecord`` ->
    ``train-00001-of-00008.cues.tfrecord``."""
    return os.path.basename(image_shard)[: -len(".tfrecord")] + ".cues.tfrecord"


def cue_shard_path(cue_dir: str, image_shard: str) -> str:
    return os.path.join(cue_dir, cue_shard_name(image_shard))


def diagnostics_path(workdir: str, stage: str) -> str:
    """Rank 0's training diagnostics (``run.diagnostics_every``), one JSON object per line."""
    return os.path.join(stage_dir(workdir, stage), "diagnostics.jsonl")


def done_path(workdir: str, stage: str) -> str:
    return os.path.join(stage_dir(workdir, stage), DONE)


def is_done(workdir: str, stage: str) -> bool:
    return os.path.isfile(done_path(workdir, stage))


def read_done(workdir: str, stage: str) -> dict:
    return read_json(done_path(workdir, stage), "done-marker")


def final_checkpoint(path: str) -> tuple[str, str]:
    """Resolve ``--checkpoint`` (a run directory, a stage directory or a checkpoint prefix)
    to (checkpoint prefix, config.json path). Raises FileNotFoundError with the reason."""
    import tensorflow as tf

    if os.path.isdir(path):
        candidates = [path] + [stage_dir(path, s) for s in reversed(TRAINING_STAGES)]
        for directory in candidates:
            done = os.path.join(directory, DONE)
            if os.path.isfile(done):
                info = read_json(done, "done-marker")
                if "checkpoint" in info:  # stored relative to the stage directory
                    return os.path.join(directory, info["checkpoint"]), config_path(directory)
        for directory in candidates:
            latest = tf.train.latest_checkpoint(checkpoint_dir(directory))
            if latest:
                return latest, config_path(directory)
        raise FileNotFoundError(f"--checkpoint {path}: no finished training stage or checkpoint in it")
    if os.path.isfile(path + ".index"):
        return path, config_path(os.path.dirname(os.path.dirname(os.path.abspath(path))))
    raise FileNotFoundError(f"--checkpoint {path}: no such run directory or checkpoint")


def stage_checkpoint(workdir: str, stage: str) -> str:
    """The checkpoint prefix a finished training stage's done.json names."""
    return os.path.join(stage_dir(workdir, stage), read_done(workdir, stage)["checkpoint"])
