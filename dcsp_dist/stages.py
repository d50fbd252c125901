"""The DCSP schedule (spec 4): the only list of stage names.

Each stage says what kind it is, which setting counts its steps, which stage's model it
starts from and which cue stage's shards it trains on (training stages), or which stage's
model and output it reads (cue stages). ``python -m dcsp_dist.stages`` prints the names
in order, for the shell launchers.
"""
from __future__ import annotations

import dataclasses
import sys


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    kind: str                        # "train": SGD steps and checkpoints; "cues": cue shards
    steps_setting: str | None = None  # train: the Config field with its step count
    init_from: str | None = None     # train: the stage whose checkpoint it starts from (None: init_weights)
    cues: str | None = None          # train: the cue stage whose shards are its targets (None: tags only)
    source: str | None = None        # cues: the stage whose model makes the cues
    output: str | None = None        # cues: that model's output the cues come from

    @property
    def trains(self) -> bool:
        return self.kind == "train"


SCHEDULE_TABLE = (
    Stage("attention", "train", steps_setting="attention_steps"),
    Stage("cues", "cues", source="attention", output="attention"),
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
        raise ValueError(f"unknown stage {name!r}: one of {', '.join(SCHEDULE)}") from None


def main(argv=None) -> int:
    """Print the stage names in schedule order (``--training``: training stages only)."""
    argv = sys.argv[1:] if argv is None else argv
    print(" ".join(TRAINING_STAGES if "--training" in argv else SCHEDULE))
    return 0


if __name__ == "__main__":
    sys.exit(main())
