"""What a training stage reports on rank 0: the console line with its ETA, TensorBoard
scalars and the image strip (input | cue | prediction | attention of tagged classes)."""
from __future__ import annotations

import json
import os
import time

import numpy as np

from dcsp_dist.data.palette import color_map


def fmt_eta(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def visualise(model, batch, stride: int, space: str = "logits"):
    """One image strip for TensorBoard: input | cue | prediction | attention of tagged classes.

    The network's outputs are brought to the crop with the stride-8 geometry (docs/method.md §7), and
    the segmentation in ``space`` (``Config.inference.upsample_space``), as in cues and evaluation, so
    the strip shows what the loss and the cues see.
    """
    import tensorflow as tf

    from dcsp_dist.models import geometry
    from dcsp_dist.models.inputs import network_input

    cmap = color_map()
    image = batch["image"][0].numpy()
    crop = image.shape[:2]
    out = model(network_input(batch["image"][:1], batch["valid"][:1]), training=False)
    scores = out["segmentation"][0]
    if space == "probabilities":
        scores = tf.nn.softmax(tf.cast(scores, tf.float32), axis=-1)
    segmentation = geometry.upsample(scores, crop, stride).numpy()                 # [crop, crop, C]
    attention = geometry.upsample(out["attention"][0], crop, stride).numpy()      # [crop, crop, C-1]

    panels = [image]
    if "cue" in batch:
        panels.append(cmap[batch["cue"][0].numpy()])
    panels.append(cmap[np.argmax(segmentation, -1)])
    for c in np.flatnonzero(batch["tags"][0].numpy()):
        a = attention[..., c]
        a = (a - a.min()) / (a.max() - a.min() + 1e-12)
        panels.append(np.repeat((a[..., None] * 255).astype(np.uint8), 3, axis=-1))
    return np.concatenate(panels, axis=1)[None]


class Reporter:
    """Rank 0's console line, TensorBoard scalars and image strip for one stage.

    ``step_done`` is called on every rank after every step with the rank-averaged losses;
    only the chief (which may change in an elastic job) writes anything.
    """

    def __init__(self, stage: str, cfg, directory: str, steps: int, schedule, model, lr_scale=None):
        self.stage, self.cfg, self.steps, self.schedule, self.model = stage, cfg, steps, schedule, model
        self.lr_scale = lr_scale          # the trainer's rate multiplier (lowered by a roll-back)
        self.tb_dir = os.path.join(directory, "tb")
        self._writer = None
        self.t0 = time.time()
        self.first = self.tick = self.last_step = 0

    def writer(self):
        """Rank 0's TensorBoard writer, made when first needed (rank 0 may change in an elastic job)."""
        if self._writer is None:
            import tensorflow as tf
            self._writer = tf.summary.create_file_writer(self.tb_dir)
        return self._writer

    def begin(self, first: int) -> None:
        """A run of steps starts at step ``first`` (again, after an elastic reset)."""
        self.first, self.tick, self.last_step = first, time.time(), first

    def step_done(self, done: int, result, batch, is_chief: bool, step_start: float) -> None:
        cfg = self.cfg
        if not is_chief:
            return
        if done % cfg.run.log_every == 0 or done == self.steps:
            self._scalars(done, result, step_start)
        if done % cfg.run.image_summary_every == 0 or done == self.steps:
            import tensorflow as tf
            with self.writer().as_default(step=done):
                tf.summary.image("input|cue|prediction|attention",
                                 visualise(self.model, batch, cfg.model.output_stride, cfg.inference.upsample_space))

    def _scalars(self, done: int, result, step_start: float) -> None:
        import tensorflow as tf

        from dcsp_dist.distributed import log
        now = time.time()
        images_per_sec = (done - self.last_step) * self.cfg.optimizer.global_batch / max(now - self.tick, 1e-9)
        lr = self.learning_rate(done)
        eta = (now - self.t0) / max(done - self.first, 1) * (self.steps - done)
        log(f"[{self.stage}] step {done}/{self.steps} ({100 * done / self.steps:.0f}%) loss {result.total:.4f} "
            f"(cls {result.classification:.4f} seg {result.segmentation:.4f} l2 {result.l2:.4f}) lr {lr:.2e} "
            f"{images_per_sec:.1f} img/s ETA {fmt_eta(eta)}")
        with self.writer().as_default(step=done):
            for name, v in result.losses.items():
                tf.summary.scalar(f"loss/{name}", v)
            tf.summary.scalar("learning_rate", lr)
            tf.summary.scalar("images_per_sec", images_per_sec)
            tf.summary.scalar("step_time_sec", time.time() - step_start)
        self.tick, self.last_step = now, done

    def learning_rate(self, done: int) -> float:
        scale = 1.0 if self.lr_scale is None else float(self.lr_scale.numpy())
        return float(self.schedule(done - 1)) * scale

    def recovery(self, done: int, line: str, lr_scale: float, count: int, is_chief: bool) -> None:
        """A roll-back from a spike (``dcsp_dist.training.recovery``) in TensorBoard (rank 0)."""
        if not is_chief:
            return
        import tensorflow as tf
        with self.writer().as_default(step=done):
            tf.summary.text("recovery", line)
            tf.summary.scalar("recovery/count", count)
            tf.summary.scalar("recovery/lr_scale", lr_scale)
        self.writer().flush()

    def flush(self) -> None:
        self.writer().flush()


class Diagnostics:
    """Rank 0's record of what drives a stage's loss (``run.diagnostics_every``), to find why a
    stage diverges (docs/divergence.md).

    Every step: the rank-averaged loss terms. Every ``diagnostics_every`` steps: for each
    parameter group (backbone, ASPP, attention head) the norm of rank 0's gradient on its own
    batch (the step's local gradients, recomputed by the same compiled function without
    touching the state), of the update it makes (rate x multiplier x gradient) and of its
    weights; the rate; and each class's share of the batch's cue pixels. Written to
    ``<stage>/diagnostics.jsonl`` and TensorBoard (``grad_norm/``, ``update_norm/``,
    ``weight_norm/``)."""

    GROUPS = ("backbone", "aspp", "attention")

    def __init__(self, trainer, cfg, path: str, writer):
        from dcsp_dist.models.deeplab import ASPP_NAMES, ATTENTION_NAME
        self.trainer, self.cfg, self.path = trainer, cfg, path
        self._writer = writer     # the stage's TensorBoard writer (``Reporter.writer``)
        self.every = cfg.run.diagnostics_every

        def group(v) -> str:
            name = v.path
            if name.startswith(ATTENTION_NAME + "/"):
                return "attention"
            return "aspp" if name.split("/")[0] in ASPP_NAMES else "backbone"
        self.groups = [group(v) for v in trainer.variables]

    def step_done(self, done: int, result, batch) -> None:

        record = {"step": done, **result.losses}
        if done % self.every == 0:
            record.update(self._norms(done, batch))
            if "cue" in batch:
                cue = batch["cue"].numpy().ravel()
                counts = np.bincount(cue[cue != 255], minlength=self.cfg.model.num_classes)
                record["cue_share"] = [round(float(c), 5) for c in counts / max(counts.sum(), 1)]
                record["cue_labelled"] = round(float((cue != 255).mean()), 5)
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record) + "\n")

    def _norms(self, done: int, batch) -> dict:
        import tensorflow as tf
        trainer = self.trainer
        tensors = ("image", "valid", "tags") + (("cue",) if trainer.use_segmentation else ())
        _, grads = trainer.local_step({k: batch[k] for k in tensors})
        lr = float(trainer.schedule(done - 1)) * float(trainer.lr_scale.numpy())
        sums = {g: {"grad": 0.0, "update": 0.0, "weight": 0.0} for g in self.GROUPS}
        for g, v, m, name in zip(grads, trainer.variables, trainer.multipliers, self.groups):
            gn = float(np.sum(np.square(g.numpy().astype(np.float64))))
            sums[name]["grad"] += gn
            sums[name]["update"] += gn * (lr * m) ** 2
            sums[name]["weight"] += float(np.sum(np.square(np.asarray(v.numpy(), np.float64))))
        out = {"lr": lr}
        with self._writer().as_default(step=done):
            for name, parts in sums.items():
                for kind, value in parts.items():
                    out[f"{kind}_norm/{name}"] = round(float(np.sqrt(value)), 6)
                    tf.summary.scalar(f"{kind}_norm/{name}", out[f"{kind}_norm/{name}"])
        return out
