"""The DCSP schedule (docs/method.md §4): the only list of stage names.

Each stage says what kind it is, which setting counts its steps, which stage's model it
starts from, which cue stage's shards it trains on, whether it trains the backbone and which
learning rate it takes (training stages), or which stage's model and output it reads and
whether it needs saliency (cue stages). Code asks the table, never a stage's name.
``python -m dcsp_dist.core.stages [--training | --cues | --segmentation]`` prints the names in
order, for the shell launchers and scripts.
"""
from __future__ import annotations

import dataclasses
import sys

from dcsp_dist.core.console import say
from dcsp_dist.core.errors import UserError


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    kind: str                        # "train": SGD steps and checkpoints; "cues": cue shards
    steps_setting: str | None = None  # train: the schedule setting with its step count
    init_from: str | None = None     # train: the stage whose checkpoint it starts from (None: init_weights)
    cues: str | None = None          # train: the cue stage whose shards are its targets (None: tags only)
    source: str | None = None        # cues: the stage whose model makes the cues
    output: str | None = None        # cues: that model's output the cues come from
    # train: the schedule setting that decides whether the backbone trains (None: it always does)
    backbone_setting: str | None = None
    lr: str = "segmentation"         # train: "base" (base_lr) or "segmentation" (segmentation_base_lr if > 0)
    needs_saliency: bool = False     # cues: combines the model's maps with the records' saliency

    @property
    def trains(self) -> bool:
        return self.kind == "train"


SCHEDULE_TABLE = (
    Stage("attention", "train", steps_setting="attention_steps", backbone_setting="attention_trains_backbone",
          lr="base"),
    Stage("cues", "cues", source="attention", output="attention", needs_saliency=True),
    Stage("segmentation", "train", steps_setting="segmentation_steps", init_from="attention", cues="cues"),
    Stage("adapt", "cues", source="segmentation", output="segmentation"),
    Stage("segmentation_adapted", "train", steps_setting="adapt_segmentation_steps",
          init_from="segmentation", cues="adapt"),
)
SCHEDULE = tuple(s.name for s in SCHEDULE_TABLE)
TRAINING_STAGES = tuple(s.name for s in SCHEDULE_TABLE if s.trains)
_BY_NAME = {s.name: s for s in SCHEDULE_TABLE}


def get(name: str) -> Stage:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise UserError(f"unknown stage {name!r}: one of {', '.join(SCHEDULE)}") from None


def main(argv=None) -> int:
    """Print the stage names in schedule order (``--training`` / ``--cues``: one kind only)."""
    argv = sys.argv[1:] if argv is None else argv
    if "--training" in argv:
        say(" ".join(TRAINING_STAGES))
    elif "--cues" in argv:
        say(" ".join(s.name for s in SCHEDULE_TABLE if not s.trains))
    elif "--segmentation" in argv:   # training stages that train on cues: their model segments
        say(" ".join(s.name for s in SCHEDULE_TABLE if s.trains and s.cues))
    else:
        say(" ".join(SCHEDULE))
    return 0


if __name__ == "__main__":
    sys.exit(main())
