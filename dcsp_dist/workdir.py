"""The layout of a run directory: one sub-directory per stage.

    <workdir>/attention/            ckpt/  tb/  config.json  done.json
    <workdir>/cues/                 train-0000i-of-0000N.cues.tfrecord  cues.json  done.json
    <workdir>/segmentation/         ckpt/  tb/  config.json  done.json
    <workdir>/adapt/                adapted cue shards  cues.json  done.json
    <workdir>/segmentation_adapted/ ckpt/  tb/  config.json  done.json
    <workdir>/eval/                 results.json  confusion.png  tb/
"""
from __future__ import annotations

import os

from dcsp_dist.atomic import read_json
from dcsp_dist.stages import SCHEDULE, TRAINING_STAGES  # noqa: F401  (the stage table's names)


def stage_dir(workdir: str, stage: str) -> str:
    return os.path.join(workdir, stage)


def diagnostics_path(workdir: str, stage: str) -> str:
    """Rank 0's training diagnostics (``run.diagnostics_every``), one JSON object per line."""
    return os.path.join(stage_dir(workdir, stage), "diagnostics.jsonl")


def done_path(workdir: str, stage: str) -> str:
    return os.path.join(stage_dir(workdir, stage), "done.json")


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
            done = os.path.join(directory, "done.json")
            if os.path.isfile(done):
                info = read_json(done, "done-marker")
                if "checkpoint" in info:  # stored relative to the stage directory
                    return os.path.join(directory, info["checkpoint"]), os.path.join(directory, "config.json")
        for directory in candidates:
            latest = tf.train.latest_checkpoint(os.path.join(directory, "ckpt"))
            if latest:
                return latest, os.path.join(directory, "config.json")
        raise FileNotFoundError(f"--checkpoint {path}: no finished training stage or checkpoint in it")
    if os.path.isfile(path + ".index"):
        config = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(path))), "config.json")
        return path, config
    raise FileNotFoundError(f"--checkpoint {path}: no such run directory or checkpoint")


def stage_checkpoint(workdir: str, stage: str) -> str:
    """The checkpoint prefix a finished training stage's done.json names."""
    return os.path.join(stage_dir(workdir, stage), read_done(workdir, stage)["checkpoint"])
