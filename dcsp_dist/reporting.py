"""What a training stage reports on rank 0: the console line with its ETA, TensorBoard
scalars and the image strip (input | cue | prediction | attention of tagged classes)."""
from __future__ import annotations

import os
import time


def fmt_eta(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def visualise(model, batch, stride: int, space: str = "logits"):
    """One image strip for TensorBoard: input | cue | prediction | attention of tagged classes.

    The network's outputs are brought to the crop with the stride-8 geometry (docs/method.md §7), and
    the segmentation in ``space`` (``Config.inference.upsample_space``), as in cues and evaluation, so
    the strip shows what the loss and the cues see.
    """
    import numpy as np
    import tensorflow as tf

    from dcsp_dist import data, geometry
    from dcsp_dist.palette import color_map

    cmap = color_map()
    image = batch["image"][0].numpy()
    crop = image.shape[:2]
    out = model(data.network_input(batch["image"][:1], batch["valid"][:1]), training=False)
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

    def __init__(self, stage: str, cfg, directory: str, steps: int, schedule, model):
        self.stage, self.cfg, self.steps, self.schedule, self.model = stage, cfg, steps, schedule, model
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
        lr = float(self.schedule(done - 1))
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

    def flush(self) -> None:
        self.writer().flush()
