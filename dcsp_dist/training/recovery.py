"""Roll back from a loss spike instead of stopping (docs/divergence.md).

Every ``run.recovery_every`` steps the stage's state (weights and optimizer slots, not the
step counter) is copied to shadow variables beside it, on the same device, once the step's
loss is finite and not itself spiking. When a step's loss is non-finite, or above
``run.recovery_spike`` times the median of the last ``SPIKE_WINDOW`` steps' losses, or its
gradients are non-finite, every rank restores that copy, the learning rate of the rest of the
stage is multiplied by ``run.recovery_lr_factor``, and the run goes on with the next batch:
the batches between the copy and the spike are skipped (the step counter and the input
pipeline move on together, so a resume still draws the batches an uninterrupted run would).
After ``run.recovery_max`` roll-backs in one stage the stage stops as before, with the
copied state saved as a checkpoint at the step it was taken.

Every rank decides alone and alike: the losses it judges are the step's rank-averaged ones
(the same numbers on every rank) and every rank copies at the same steps, so no collective
is added. A world whose ranks changed (elastic) takes a fresh copy when its loop restarts.
"""
from __future__ import annotations

import collections
import dataclasses
import math
import statistics

# The median of this many recent finite, unspiked losses is a step's "recent level". No spike
# is judged before half of it is filled (non-finite losses always are).
SPIKE_WINDOW = 50


@dataclasses.dataclass
class Event:
    step: int
    loss: float
    why: str
    back_to: int
    lr_scale: float

    def line(self, stage: str, count: int, limit: int) -> str:
        return (f"[{stage}] recovery {count}/{limit}: {self.why} at step {self.step}; rolled back to the state of "
                f"step {self.back_to}, skipped batches {self.back_to + 1}-{self.step}, learning rate x{self.lr_scale:g}")


class Recovery:
    """The in-memory last good state of one stage's trainer, and the roll-back policy."""

    def __init__(self, trainer, run_cfg):
        import tensorflow as tf

        from dcsp_dist import distributed
        self.trainer = trainer
        self.limit, self.every = run_cfg.recovery_max, run_cfg.recovery_every
        self.spike, self.factor = run_cfg.recovery_spike, run_cfg.recovery_lr_factor
        self.enabled = self.limit > 0
        self.events: list[Event] = []
        self.good_step: int | None = None
        self._recent = collections.deque(maxlen=SPIKE_WINDOW)
        if not self.enabled:
            return
        # Weights and slots (float only: the step counter moves on through a roll-back).
        state = [v for v in list(trainer.model.variables) + list(trainer.optimizer.variables)
                 if "float" in str(v.dtype)]
        raw = distributed.raw_variables(state)
        self._state = raw
        self._shadow = [tf.Variable(tf.zeros_like(v), trainable=False, name="recovery_shadow") for v in raw]
        shadow = self._shadow

        @tf.function
        def copy():
            for s, v in zip(shadow, raw):
                s.assign(v)

        @tf.function
        def back():
            for s, v in zip(shadow, raw):
                v.assign(s)
        self._copy, self._back = copy, back

    # -- the copy --------------------------------------------------------------------------
    def keep(self, step: int) -> None:
        """Copy the current state as the last good one (step ``step`` done)."""
        if self.enabled:
            self._copy()
            self.good_step = step

    def due(self, done: int) -> bool:
        return self.enabled and done % self.every == 0

    # -- the judgement ---------------------------------------------------------------------
    def judge(self, result) -> str | None:
        """Why this step's result is a spike to roll back from, or None (and the loss then
        joins the recent level). With recovery off only a non-finite value counts (the job
        stops at it, as it always did)."""
        total = result.total
        if not all(math.isfinite(v) for v in result.losses.values()):
            return f"non-finite loss {total}"
        if not result.finite:
            return f"non-finite gradients (loss {total:.4f})"
        if self.enabled and len(self._recent) >= SPIKE_WINDOW // 2:
            level = statistics.median(self._recent)
            if total > self.spike * level:
                return f"loss {total:.4f} is {total / level:.1f}x its recent level {level:.4f}"
        self._recent.append(total)
        return None

    def can_roll_back(self) -> bool:
        return self.enabled and self.good_step is not None and len(self.events) < self.limit

    def roll_back(self, done: int, loss: float, why: str) -> Event:
        """Restore the last good state and lower the learning rate for the rest of the stage."""
        self._back()
        scale = float(self.trainer.lr_scale.numpy()) * self.factor
        self.trainer.lr_scale.assign(scale)
        event = Event(done, loss, why, self.good_step, scale)
        self.events.append(event)
        return event

    def restore_last_good(self) -> int:
        """The last good state back in place, with the step counter at its step (for the final
        checkpoint of a stage that could not be recovered); returns that step."""
        self._back()
        self.trainer.optimizer.iterations.assign(self.good_step)
        return self.good_step

    def record(self) -> list[dict]:
        """The events, for done.json."""
        return [dataclasses.asdict(e) for e in self.events]
