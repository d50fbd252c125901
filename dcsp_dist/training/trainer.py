"""The compiled training step of one stage: model, optimiser, parameter groups and the
Horovod-averaged SGD step (docs/method.md §3, 4.1, 4.3)."""
from __future__ import annotations

import typing

from dcsp_dist.core import stages


def build_model(cfg):
    """The stage's network with identical initial weights on every rank (seeded)."""
    import keras

    from dcsp_dist.models import build_model as build
    keras.utils.set_random_seed(cfg.run.seed)
    return build(cfg)



class StepResult(typing.NamedTuple):
    """One training step's outcome, averaged over the ranks (so the same on every rank)."""
    total: float
    classification: float
    segmentation: float
    l2: float
    finite: bool      # every rank's gradients were finite
    stop: bool        # some rank was signalled: every rank stops after this step

    @classmethod
    def of(cls, values) -> "StepResult":
        """From the compiled step's vector [total, cls, seg, l2, finite mean, stop mean]."""
        return cls(*(float(v) for v in values[:4]), bool(values[4] >= 1), bool(values[5] > 0))

    @property
    def losses(self) -> dict:
        return {"total": self.total, "classification": self.classification, "segmentation": self.segmentation,
                "l2": self.l2}

class StageTrainer:
    """Model, optimiser and compiled step of one training stage.

    The attention stage trains the new layers only (the backbone too when
    cfg.schedule.attention_trains_backbone, for models without ImageNet features) on classification
    + L2. Segmentation stages train everything but batch norm, with the objective
    cfg.schedule.segmentation_objective (docs/method.md §4.3): "authors_code" sends the segmentation loss
    alone into backbone and ASPP and classification + L2 on its own kernel into the
    attention head; "paper_text" sends segmentation + classification + L2 into everything.
    Learning-rate multipliers x1/x10/x20 scale the gradients of the backbone / head kernels
    / head biases (SGD: same as scaling the rate).
    """

    def __init__(self, stage: str, cfg):
        import keras

        from dcsp_dist.models import attention_head, parameter_groups
        from dcsp_dist.training.schedule import PolyWithWarmup, ScaledSchedule

        self.stage, self.cfg = stage, cfg
        spec, opt = stages.get(stage), cfg.optimizer
        self.steps = getattr(cfg.schedule, spec.steps_setting)
        self.use_segmentation = spec.cues is not None
        self.model = build_model(cfg)
        groups = parameter_groups(self.model)
        train_backbone = spec.backbone_setting is None or getattr(cfg.schedule, spec.backbone_setting)
        variables = groups.trainable(train_backbone)
        multipliers = ([opt.lr_mult_backbone] * len(groups.backbone) if train_backbone else []) + \
            [opt.lr_mult_head_kernel] * len(groups.head_kernels) + [opt.lr_mult_head_bias] * len(groups.head_biases)
        head = attention_head(self.model)
        self.split_objective = self.use_segmentation and cfg.schedule.segmentation_objective == "authors_code"
        if self.split_objective:
            # Shared variables (backbone + ASPP) first, the attention head's last.
            order = sorted(range(len(variables)), key=lambda i: variables[i] is head.kernel or variables[i] is head.bias)
            variables, multipliers = [variables[i] for i in order], [multipliers[i] for i in order]
            self.num_shared = len(variables) - 2
            self.kernels = [head.kernel]
        else:
            self.kernels = groups.conv_kernels if train_backbone else groups.head_kernels
        self.variables, self.multipliers = variables, multipliers
        self.schedule = PolyWithWarmup(cfg.learning_rate(stage), self.steps, cfg.optimizer.poly_power, cfg.optimizer.warmup_steps)
        # The stage's learning rate relative to its schedule: lowered by a roll-back from a loss
        # spike (dcsp_dist.training.recovery), saved in the checkpoints, 1 in a run that never spikes. It
        # scales the rate, not the gradients: the rate times 1.0 is the same number, while a
        # product more on the gradients changed how the update was fused and rounded.
        import tensorflow as tf
        self.lr_scale = tf.Variable(1.0, trainable=False, dtype=tf.float32, name="lr_scale")
        self.optimizer = keras.optimizers.SGD(learning_rate=ScaledSchedule(self.schedule, self.lr_scale),
                                              momentum=cfg.optimizer.momentum)
        self.optimizer.build(self.variables)
        self.step = self._make_step()
        self._state_finite = None

    def nonfinite_state(self) -> str | None:
        """The first weight or optimizer slot holding a non-finite value, or None (one
        compiled reduction over the state on the device; the state stays where it is)."""
        import tensorflow as tf

        from dcsp_dist import distributed
        state = [v for v in list(self.model.variables) + list(self.optimizer.variables) if "float" in str(v.dtype)]
        if self._state_finite is None:
            raw = distributed.raw_variables(state)
            self._state_finite = tf.function(lambda: tf.stack([tf.reduce_all(tf.math.is_finite(v)) for v in raw]))
        flags = self._state_finite().numpy()
        return next((state[i].path for i in range(len(state)) if not flags[i]), None)

    def _make_step(self):
        import tensorflow as tf

        from dcsp_dist import distributed
        from dcsp_dist.models.inputs import network_input
        from dcsp_dist.training import losses

        cfg, model = self.cfg, self.model
        variables, kernels = self.variables, self.kernels
        use_segmentation, split = self.use_segmentation, self.split_objective
        shared, head = variables[:self.num_shared] if split else None, variables[self.num_shared:] if split else None
        loss_scale = 1024.0 if cfg.model.mixed_precision == "float16" else 1.0

        @tf.function(jit_compile=cfg.model.xla)
        def local_step(batch):
            """Forward + backward on this rank's batch (XLA-compilable: no collectives)."""
            with tf.GradientTape(persistent=split) as tape:
                out = model(network_input(batch["image"], batch["valid"]), training=False)
                cls = losses.classification_loss(out["attention"], batch["tags"])
                seg = losses.segmentation_loss(out["segmentation"], batch["cue"], cfg.model.output_stride) \
                    if use_segmentation else 0.0
                l2 = losses.l2_loss(kernels, cfg.optimizer.weight_decay)
                total = cls + seg + l2
                # Static loss scaling for float16 (1 otherwise), inside the tape.
                scaled_total, scaled_seg, scaled_head = total * loss_scale, seg * loss_scale, (cls + l2) * loss_scale
            if split:   # docs/method.md §4.3, authors' code: each loss reaches its own layers only
                grads = tape.gradient(scaled_seg, distributed.raw_variables(shared)) + \
                    tape.gradient(scaled_head, distributed.raw_variables(head))
            else:
                grads = tape.gradient(scaled_total, distributed.raw_variables(variables))
            return tf.stack([total, cls, tf.cast(seg, tf.float32), l2]), grads

        self.local_step = local_step     # rank-local loss terms and gradients, no update (diagnostics)
        return self._make_train_step(local_step, loss_scale)

    def _make_train_step(self, local_step, loss_scale: float):
        """The SGD step around ``local_step``: Horovod's gradient allreduce, multipliers,
        the overflow flag and the update."""
        import tensorflow as tf

        from dcsp_dist import distributed

        cfg, optimizer, variables, multipliers = self.cfg, self.optimizer, self.variables, self.multipliers
        tensors = ("image", "valid", "tags") + (("cue",) if self.use_segmentation else ())
        skip_overflow = cfg.model.mixed_precision == "float16"

        @tf.function
        def train_step(batch, stop):
            """One SGD step; returns rank-averaged [total, cls, seg, l2, gradients finite,
            stop] (the same on every rank, so a non-finite value anywhere stops every rank,
            and a rank asked to stop, ``stop`` = 1, stops every rank after this step).

            With float16, a step whose gradients overflow is skipped (weights and momentum
            untouched, the step counter moves on), as Keras' LossScaleOptimizer does; in
            float32 the loop stops at it before any checkpoint holds its weights.
            """
            # Only the tensors the step uses enter the (XLA-compilable) local step: the
            # batch's string ids have no XLA kernel.
            values, grads = local_step({k: batch[k] for k in tensors})
            grads = distributed.average_gradients(grads, cfg.run.gradient_compression)   # Horovod allreduce, outside XLA
            # The flag reads the averaged (loss-scaled) gradients before the multipliers: with a
            # second reader after them, grappler rewrites the update and changes its rounding.
            finite = tf.reduce_all(tf.stack([tf.reduce_all(tf.math.is_finite(g)) for g in grads]))
            grads = [g * (m / loss_scale) for g, m in zip(grads, multipliers)]
            if skip_overflow:
                def apply():
                    optimizer.apply(grads, variables)
                    return tf.constant(True)

                def skip():
                    optimizer.iterations.assign_add(1)
                    return tf.constant(False)
                tf.cond(finite, apply, skip)
            else:
                optimizer.apply(grads, variables)
            values = tf.concat([values, tf.cast(finite, tf.float32)[None], stop[None]], 0)
            return distributed.allreduce_mean_tensor(values)

        return lambda batch, stop=False: StepResult.of(train_step(batch, tf.constant(1.0 if stop else 0.0)).numpy())
