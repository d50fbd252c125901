"""Learning-rate schedule: poly decay (docs/method.md §3), optional linear warm-up for large batches."""
from __future__ import annotations

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="dcsp_dist")
class PolyWithWarmup(keras.optimizers.schedules.LearningRateSchedule):
    """lr(step) = peak * (1 - step / total)^power, times step / warmup during warm-up.

    ``peak`` is the base rate after the scaling rule (config.learning_rate()). The schedule
    restarts in every training stage because every stage has its own optimizer.
    """

    def __init__(self, peak: float, total_steps: int, power: float = 0.9, warmup_steps: int = 0):
        self.peak, self.total_steps, self.power, self.warmup_steps = peak, total_steps, power, warmup_steps

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        progress = tf.minimum(step / float(max(self.total_steps, 1)), 1.0)
        lr = self.peak * tf.pow(1.0 - progress, self.power)
        if self.warmup_steps > 0:
            lr *= tf.minimum(1.0, (step + 1.0) / float(self.warmup_steps))
        return lr

    def get_config(self):
        return {"peak": self.peak, "total_steps": self.total_steps, "power": self.power,
                "warmup_steps": self.warmup_steps}


@keras.saving.register_keras_serializable(package="dcsp_dist")
class ScaledSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """``schedule(step) * scale``: the stage's rate, lowered after a roll-back from a loss spike
    (``scale``, a variable saved with the checkpoints; dcsp_dist.training.recovery). At scale 1 it is
    ``schedule`` to the bit."""

    def __init__(self, schedule, scale=None):
        self.schedule, self.scale = schedule, scale

    def __call__(self, step):
        lr = self.schedule(step)
        return lr if self.scale is None else lr * tf.cast(self.scale, lr.dtype)

    def get_config(self):
        return {"schedule": keras.saving.serialize_keras_object(self.schedule)}

    @classmethod
    def from_config(cls, config):
        return cls(keras.saving.deserialize_keras_object(config["schedule"]))
