"""DCSP training on Horovod: attention stage, cues, segmentation, adaptation (spec 4).

    horovodrun -np 8 python -m dcsp_dist.train --stage attention --config voc_paper \
        --data records/voc12 --workdir runs/voc
    python -m dcsp_dist.train --stage all --config synthetic_demo --data ... --workdir ...

``--stage all`` runs attention -> cues -> segmentation -> adapt -> segmentation_adapted,
skipping stages already done and resuming an interrupted one from its last checkpoint.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from dcsp_dist import config as config_lib
from dcsp_dist import workdir as layout


# ============================================================================ arguments
def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m dcsp_dist.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", required=True, choices=("all",) + layout.SCHEDULE)
    parser.add_argument("--config", default="voc_paper", help=f"preset: {', '.join(config_lib.PRESETS)}")
    parser.add_argument("--config-file", help="JSON file of settings overriding the preset")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="override one setting (repeatable)")
    parser.add_argument("--data", required=True, help="directory of TFRecords from data_tools.build")
    parser.add_argument("--workdir", required=True, help="run directory (one sub-directory per stage)")
    parser.add_argument("--threads", type=int, default=None, help="TensorFlow threads per rank")
    parser.add_argument("--horovod-timeline", metavar="FILE", help="write Horovod's timeline (a Chrome trace of every "
                        "collective) to FILE; open it in chrome://tracing or ui.perfetto.dev")
    parser.add_argument("--verify-data", action="store_true",
                        help="before training, check every shard's sha256 and record count (default: "
                             "existence and size, which is free)")
    return parser.parse_args(argv)


# ============================================================================ helpers
def _fmt_eta(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def _build_model(cfg):
    import keras
    from dcsp_dist.models import build_model
    keras.utils.set_random_seed(cfg.seed)  # identical initial weights on every rank
    return build_model(cfg)


def _restore_model(model, checkpoint: str, what: str) -> None:
    import tensorflow as tf

    from dcsp_dist import checkpoints
    checkpoints.check(checkpoint, what)
    tf.train.Checkpoint(model=model).read(checkpoint).expect_partial()


def _stage_checkpoint(workdir: str, stage: str) -> str:
    info = layout.read_done(workdir, stage)
    return os.path.join(layout.stage_dir(workdir, stage), info["checkpoint"])


def _visualise(model, batch, stride: int, space: str = "logits"):
    """One image strip for TensorBoard: input | cue | prediction | attention of tagged classes.

    The network's outputs are brought to the crop with the stride-8 geometry (spec 7), and
    the segmentation in ``space`` (``Config.upsample_space``), as in cues and evaluation, so
    the strip shows what the loss and the cues see.
    """
    import numpy as np
    import tensorflow as tf

    from dcsp_dist import data, geometry
    from dcsp_dist.voc import color_map

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


def _save(manager, step: int) -> None:
    """manager.save, or one clear error (e.g. a full disk) that leaves the earlier
    checkpoints as they were and no partial one behind."""
    import glob
    import shutil

    import tensorflow as tf
    try:
        manager.save(checkpoint_number=step)
    except (tf.errors.OpError, OSError) as exc:
        prefix = os.path.join(manager.directory, f"ckpt-{step}")
        for partial in glob.glob(prefix + ".*") + glob.glob(prefix + "_temp*"):
            shutil.rmtree(partial) if os.path.isdir(partial) else os.remove(partial)
        kept = ", ".join(os.path.basename(p) for p in manager.checkpoints) or "none"
        why = (str(getattr(exc, "message", exc)).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise OSError(f"saving checkpoint {prefix} failed ({why}); earlier checkpoints kept: {kept}") from None


# ============================================================================ training stage
STAGE_STEPS = {"attention": "attention_steps", "segmentation": "segmentation_steps",
               "segmentation_adapted": "adapt_segmentation_steps"}
CUES_FOR = {"segmentation": "cues", "segmentation_adapted": "adapt"}
INIT_FROM = {"segmentation": "attention", "segmentation_adapted": "segmentation"}


class StageTrainer:
    """Model, optimiser and compiled step of one training stage.

    The attention stage trains the new layers only (the backbone too when
    cfg.attention_trains_backbone, for models without ImageNet features) on classification
    + L2. Segmentation stages train everything but batch norm, with the objective
    cfg.segmentation_objective (spec 4.3): "authors_code" sends the segmentation loss
    alone into backbone and ASPP and classification + L2 on its own kernel into the
    attention head; "paper_text" sends segmentation + classification + L2 into everything.
    Learning-rate multipliers x1/x10/x20 scale the gradients of the backbone / head kernels
    / head biases (SGD: same as scaling the rate).
    """

    def __init__(self, stage: str, cfg):
        import keras
        from dcsp_dist.models import attention_head, parameter_groups
        from dcsp_dist.schedule import PolyWithWarmup

        self.stage, self.cfg = stage, cfg
        self.steps = getattr(cfg, STAGE_STEPS[stage])
        self.use_segmentation = stage in CUES_FOR
        self.model = _build_model(cfg)
        groups = parameter_groups(self.model)
        train_backbone = stage != "attention" or cfg.attention_trains_backbone
        variables = groups.trainable(train_backbone)
        multipliers = ([cfg.lr_mult_backbone] * len(groups.backbone) if train_backbone else []) + \
            [cfg.lr_mult_head_kernel] * len(groups.head_kernels) + [cfg.lr_mult_head_bias] * len(groups.head_biases)
        head = attention_head(self.model)
        self.split_objective = self.use_segmentation and cfg.segmentation_objective == "authors_code"
        if self.split_objective:
            # Shared variables (backbone + ASPP) first, the attention head's last.
            order = sorted(range(len(variables)), key=lambda i: variables[i] is head.kernel or variables[i] is head.bias)
            variables, multipliers = [variables[i] for i in order], [multipliers[i] for i in order]
            self.num_shared = len(variables) - 2
            self.kernels = [head.kernel]
        else:
            self.kernels = groups.conv_kernels if train_backbone else groups.head_kernels
        self.variables, self.multipliers = variables, multipliers
        self.schedule = PolyWithWarmup(cfg.learning_rate(stage), self.steps, cfg.poly_power, cfg.warmup_steps)
        self.optimizer = keras.optimizers.SGD(learning_rate=self.schedule, momentum=cfg.momentum)
        self.optimizer.build(self.variables)
        self.step = self._make_step()

    def _make_step(self):
        import tensorflow as tf
        from dcsp_dist import data, distributed, losses

        cfg, model, optimizer = self.cfg, self.model, self.optimizer
        variables, multipliers, kernels = self.variables, self.multipliers, self.kernels
        use_segmentation, split = self.use_segmentation, self.split_objective
        shared, head = variables[:self.num_shared] if split else None, variables[self.num_shared:] if split else None
        loss_scale = 1024.0 if cfg.mixed_precision == "float16" else 1.0

        @tf.function(jit_compile=cfg.xla)
        def local_step(batch):
            """Forward + backward on this rank's batch (XLA-compilable: no collectives)."""
            with tf.GradientTape(persistent=split) as tape:
                out = model(data.network_input(batch["image"], batch["valid"]), training=False)
                cls = losses.classification_loss(out["attention"], batch["tags"])
                seg = losses.segmentation_loss(out["segmentation"], batch["cue"], cfg.output_stride) \
                    if use_segmentation else 0.0
                l2 = losses.l2_loss(kernels, cfg.weight_decay)
                total = cls + seg + l2
                # Static loss scaling for float16 (1 otherwise), inside the tape.
                scaled_total, scaled_seg, scaled_head = total * loss_scale, seg * loss_scale, (cls + l2) * loss_scale
            if split:   # spec 4.3, authors' code: each loss reaches its own layers only
                grads = tape.gradient(scaled_seg, distributed.raw_variables(shared)) + \
                    tape.gradient(scaled_head, distributed.raw_variables(head))
            else:
                grads = tape.gradient(scaled_total, distributed.raw_variables(variables))
            return tf.stack([total, cls, tf.cast(seg, tf.float32), l2]), grads

        @tf.function
        def train_step(batch):
            """One SGD step; returns rank-averaged [total, cls, seg, l2] (same on every rank,
            so a non-finite loss anywhere stops every rank)."""
            values, grads = local_step(batch)
            grads = distributed.average_gradients(grads, cfg.gradient_compression)   # Horovod allreduce, outside XLA
            grads = [g * (m / loss_scale) for g, m in zip(grads, multipliers)]
            optimizer.apply(grads, variables)
            return distributed.allreduce_mean_tensor(values)

        return train_step


def train_stage(stage: str, cfg, ctx, data_dir: str, workdir: str):
    """Run (or resume) one training stage; returns its StageTrainer."""
    import numpy as np
    import tensorflow as tf

    from dcsp_dist import checkpoints, data, distributed, records
    from dcsp_dist.models import load_initial_weights

    import keras
    # The global seed first: tf.data's seeded ops derive their seeds from it, so a stage
    # draws the same batches whether it runs alone or inside --stage all.
    keras.utils.set_random_seed(cfg.seed)
    directory = layout.stage_dir(workdir, stage)
    if ctx.is_chief:
        os.makedirs(directory, exist_ok=True)
        layout.write_json(os.path.join(directory, "config.json"), json.loads(cfg.to_json()))

    # ---- input pipeline ---------------------------------------------------------------
    elastic = distributed.elastic_enabled()
    cue_dir = layout.stage_dir(workdir, CUES_FOR[stage]) if stage in CUES_FOR else None
    if not elastic:   # an elastic job builds its pipeline for each world size in the loop
        dataset = data.make_train_dataset(data_dir, cfg, cfg.per_rank_batch(ctx.size), ctx.rank, ctx.size,
                                          cue_dir=cue_dir)
    manifest = records.read_manifest(data_dir, cfg.train_split)
    all_shards = records.shard_files(data_dir, manifest)

    # ---- model, optimiser, checkpoint ---------------------------------------------------
    trainer = StageTrainer(stage, cfg)
    model, optimizer, schedule, steps = trainer.model, trainer.optimizer, trainer.schedule, trainer.steps
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer)
    ckpt_dir = os.path.join(directory, "ckpt")
    # Rank 0 finds the newest checkpoint that reads back in full, from the files themselves
    # (a lost index or a damaged newest checkpoint never means "start from scratch"); a
    # failure is raised on every rank, so none waits in the broadcast below.
    # In an elastic job every rank reads the (shared) checkpoint itself instead: a worker
    # that joins later must meet no collective before the elastic state's sync.
    latest, failure = None, None
    if ctx.is_chief or elastic:
        try:
            latest = checkpoints.newest_readable(ckpt_dir, warn=lambda m: distributed.log(f"[{stage}] {m}"))
            if latest is None and stage in INIT_FROM:
                _restore_model(model, _stage_checkpoint(workdir, INIT_FROM[stage]), f"the {INIT_FROM[stage]} stage's checkpoint")
        except checkpoints.CheckpointError as exc:
            failure = str(exc)
    if not elastic:
        failure = distributed.broadcast_object(failure)
    if failure:
        raise checkpoints.CheckpointError(failure)
    manager = tf.train.CheckpointManager(checkpoint, ckpt_dir, max_to_keep=cfg.keep_checkpoints)
    if ctx.is_chief or elastic:
        if latest:
            checkpoint.restore(latest).expect_partial()
            distributed.log(f"[{stage}] resuming from {latest}")
        elif stage in INIT_FROM:
            distributed.log(f"[{stage}] initialised from the {INIT_FROM[stage]} stage")
        else:
            distributed.log(f"[{stage}] initialised from {load_initial_weights(model, cfg.init_weights)}")
    # Rank 0's weights, optimizer slots and step (optimizer.iterations) go to every rank.
    # The optimizer is built in StageTrainer, so this can happen before the first step.
    if not elastic:
        distributed.broadcast_state(model, optimizer)
    start = int(optimizer.iterations.numpy())

    # ---- loop ---------------------------------------------------------------------------
    if start >= steps:
        distributed.log(f"[{stage}] already at step {start}/{steps}")
    t0 = time.time()
    writers = {}

    def writer():
        """Rank 0's TensorBoard writer (rank 0 may change in an elastic job)."""
        if "tb" not in writers:
            writers["tb"] = tf.summary.create_file_writer(os.path.join(directory, "tb"))
        return writers["tb"]

    def run_steps(first: int, iterator, shards: list, c, on_step=None) -> None:
        """Steps ``first``..``steps`` on this rank's ``iterator`` over its ``shards``; ``c``
        is the job's context."""
        tick, last_step = time.time(), first
        for step in range(first, steps):
            try:
                batch = next(iterator)
            except tf.errors.DataLossError as exc:
                raise records.DataError(records.damaged_shard_message(data_dir, manifest, shards, exc)) from None
            step_start = time.time()
            values = trainer.step(batch).numpy()
            if not np.isfinite(values).all():
                raise FloatingPointError(
                    f"[{stage}] non-finite loss {values[0]} at step {step + 1}; stopped. The last good "
                    f"checkpoint is kept: {manager.latest_checkpoint or 'none yet'}")
            done = step + 1
            if c.is_chief and (done % cfg.log_every == 0 or done == steps):
                now = time.time()
                images_per_sec = (done - last_step) * cfg.global_batch / max(now - tick, 1e-9)
                lr = float(schedule(done - 1))
                eta = (now - t0) / max(done - first, 1) * (steps - done)
                distributed.log(
                    f"[{stage}] step {done}/{steps} ({100 * done / steps:.0f}%) loss {values[0]:.4f} "
                    f"(cls {values[1]:.4f} seg {values[2]:.4f} l2 {values[3]:.4f}) lr {lr:.2e} "
                    f"{images_per_sec:.1f} img/s ETA {_fmt_eta(eta)}")
                with writer().as_default(step=done):
                    for name, v in zip(("total", "classification", "segmentation", "l2"), values):
                        tf.summary.scalar(f"loss/{name}", v)
                    tf.summary.scalar("learning_rate", lr)
                    tf.summary.scalar("images_per_sec", images_per_sec)
                    tf.summary.scalar("step_time_sec", time.time() - step_start)
                tick, last_step = now, done
            if c.is_chief and (done % cfg.image_summary_every == 0 or done == steps):
                with writer().as_default(step=done):
                    tf.summary.image("input|cue|prediction|attention", _visualise(model, batch, cfg.output_stride,
                                                                                 cfg.upsample_space))
            if c.is_chief and (done % cfg.checkpoint_every == 0 or done == steps):
                _save(manager, done)
            if on_step:
                on_step(done)

    if elastic:
        # Horovod elastic: commit (weights, optimizer, step) to host memory every
        # elastic_commit_every steps; a lost worker rolls the others back to the last commit,
        # a new one syncs from rank 0. The global batch is kept and re-split over the new
        # world; each rank's pipeline is rebuilt for its new shards from the committed step.
        state = distributed.ElasticState(model, optimizer, step=start)
        calls = []

        def on_step(done):
            state.step = done
            if done % cfg.elastic_commit_every == 0 or done == steps:
                state.commit()

        @distributed.run_elastic
        def elastic_loop(state):
            c = distributed.refresh_context()
            per = cfg.per_rank_batch(c.size)   # ValueError (one line, every rank) if it does not divide
            if calls:
                distributed.log(f"[{stage}] elastic: {c.size} rank(s) from step {state.step}, "
                                f"{per} image(s) per rank")
            calls.append(state.step)
            iterator = iter(data.make_train_dataset(data_dir, cfg, per, c.rank, c.size, cue_dir=cue_dir,
                                                    start_step=state.step))
            run_steps(state.step, iterator, records.files_for_rank(all_shards, c.rank, c.size), c, on_step)

        elastic_loop(state)
        ctx = distributed.context()
    else:
        run_steps(start, iter(dataset), records.files_for_rank(all_shards, ctx.rank, ctx.size), ctx)
    ranks = distributed.check_weights_in_sync(model.variables, f"[{stage}] end of stage")
    # Rank 0 prints every rank's gathered digest in one write: lines printed by each rank
    # reach mpirun's output in pieces and can be spliced into one another.
    distributed.log("\n".join(f"[{stage}] rank {i} on {h}: weights sha256 {d}" for i, (d, h) in enumerate(ranks)))
    digest, hosts = ranks[0][0], [h for _, h in ranks]
    if ctx.is_chief:
        if manager.latest_checkpoint is None or not manager.latest_checkpoint.endswith(f"-{steps}"):
            _save(manager, max(steps, start))
        writer().flush()
        rel = os.path.relpath(manager.latest_checkpoint, directory)
        layout.write_json(layout.done_path(workdir, stage),
                          {"stage": stage, "steps": steps, "checkpoint": rel,
                           "seconds": round(time.time() - t0, 1), "weights_sha256": digest,
                           "hosts": sorted(set(hosts))})
        distributed.log(f"[{stage}] done: {manager.latest_checkpoint}")
    distributed.barrier()
    return trainer


# ============================================================================ cue stages
def cue_stage(stage: str, cfg, ctx, data_dir: str, workdir: str) -> dict:
    """Write cue shards for the training split (rank-parallel, whole shards per rank).

    ``cues``: attention maps + saliency (spec 4.2) from the attention stage's model.
    ``adapt``: segmentation logits restricted to the tags (spec 4.4) from the
    segmentation stage's model. Reports the cues' mIoU when the split has masks.
    """
    import numpy as np
    import tensorflow as tf

    from dcsp_dist import crf, cues, data, distributed, metrics, records
    from dcsp_dist.inference import make_multiscale_fn
    from dcsp_dist.progress import progress
    directory = layout.stage_dir(workdir, stage)
    refine = stage == "adapt" and cfg.adapt_crf   # adapted cues through the dense CRF (an option)
    crf_params = crf.CRFParams.from_config(cfg)
    source = "attention" if stage == "cues" else "segmentation"
    manifest = records.read_manifest(data_dir, cfg.train_split)
    all_files = records.shard_files(data_dir, manifest)
    mine = records.files_for_rank(all_files, ctx.rank, ctx.size, what=f"{data_dir} split {cfg.train_split}")
    has_mask = bool(manifest.get("has_mask"))
    os.makedirs(directory, exist_ok=True)

    model = _build_model(cfg)
    _restore_model(model, _stage_checkpoint(workdir, source), f"the {source} stage's checkpoint")
    distributed.broadcast_state(model)
    key = "attention" if stage == "cues" else "segmentation"
    space = "logits" if stage == "cues" else cfg.upsample_space
    fused = make_multiscale_fn(model, cfg.cue_scales, key, cfg.output_stride, space, cfg.inference_window_size)

    @tf.function(reduce_retracing=True)
    def make_cue(image, saliency, tags):
        maps = fused(image)                                              # [H, W, K]
        if stage == "cues":
            label = cues.attention_cues(maps, tf.cast(saliency, tf.float32) / 255.0, tags, cfg.bg_threshold)
        elif refine:
            return cues.adapted_probabilities(maps, tags, are_probabilities=space == "probabilities")
        else:
            label = cues.adapted_cues(maps, tags)
        return label

    def cue_of(example, saliency):
        out = make_cue(example["image"], saliency, example["tags"])
        if refine:
            out = tf.constant(crf.dense_crf(example["image"].numpy(), out.numpy(), crf_params))
        return out, tf.io.encode_png(out[..., None])

    matrix = np.zeros((cfg.num_classes, cfg.num_classes), np.int64)
    total = sum(s["num_examples"] for s in manifest["shards"] if os.path.join(data_dir, s["file"]) in mine)
    bar = progress(total, f"[{stage}] rank 0", enabled=ctx.is_chief)
    for path in mine:
        target = os.path.join(directory, os.path.basename(path)[: -len(".tfrecord")] + ".cues.tfrecord")
        tmp = f"{target}.tmp-{os.getpid()}"
        try:
            with tf.io.TFRecordWriter(tmp) as writer:
                for ex in data.make_inference_dataset(data_dir, cfg.train_split, files=[path],
                                                      need_saliency=stage == "cues"):
                    saliency = ex["saliency"] if "saliency" in ex else tf.zeros(tf.shape(ex["image"])[:2], tf.uint8)
                    label, png = cue_of(ex, saliency)
                    writer.write(records.make_cue_example(ex["id"].numpy(), png.numpy()))
                    if has_mask:
                        matrix += metrics.confusion_matrix(ex["mask"].numpy(), label.numpy(), cfg.num_classes)
                    bar.update(1)
            os.replace(tmp, target)
        except tf.errors.DataLossError as exc:
            raise records.DataError(records.damaged_shard_message(data_dir, manifest, [path], exc)) from None
        except (OSError, tf.errors.OpError) as exc:   # e.g. a full disk
            raise records.DataError(f"writing {target} failed: {str(exc).strip().splitlines()[0][:200]}") from None
        finally:
            if os.path.exists(tmp):    # nothing half-written is left behind
                os.remove(tmp)
    bar.close()
    matrix = distributed.allreduce_sum(matrix)
    summary = {"stage": stage, "num_images": manifest["num_examples"]}
    if has_mask:
        result = metrics.scores(matrix)
        summary.update(miou=result["miou"], iou=result["iou"].tolist(), confusion_matrix=matrix.tolist())
        distributed.log(metrics.format_table(result, manifest["class_names"], f"[{stage}] cue quality vs. training masks"))
    if ctx.is_chief:
        layout.write_json(os.path.join(directory, "cues.json"), summary)
        layout.write_json(layout.done_path(workdir, stage), {k: v for k, v in summary.items()
                                                              if k in ("stage", "num_images", "miou")})
    distributed.barrier()
    return summary


# ============================================================================ main
def check_inputs(stages, cfg, ctx, data_dir: str, verify_data: bool = False) -> None:
    """Fail before any work on missing or inconsistent records (one clear line)."""
    from dcsp_dist import distributed, records
    manifest = records.read_manifest(data_dir, cfg.train_split)
    mine = records.files_for_rank(records.shard_files(data_dir, manifest), ctx.rank, ctx.size,
                                  what=f"{data_dir} split {cfg.train_split}")
    # Every rank checks its own shards; a damaged one stops every rank. (Elastic jobs check
    # all shards on every rank without a collective: a joining worker's first collective
    # must be the elastic state's sync.)
    if distributed.elastic_enabled():
        records.check_shards(data_dir, manifest, records.shard_files(data_dir, manifest), deep=verify_data)
    else:
        distributed.check_on_every_rank(lambda: records.check_shards(data_dir, manifest, mine, deep=verify_data),
                                        records.DataError)
    if "cues" in stages and not manifest.get("has_saliency"):
        raise records.DataError(f"{records.manifest_path(data_dir, cfg.train_split)}: the training split has no "
                                f"saliency maps, which the cues stage needs (see data_tools.saliency)")
    if manifest.get("role") not in (None, "train") or not manifest["num_examples"]:
        raise records.DataError(f"{records.manifest_path(data_dir, cfg.train_split)}: not a training split "
                                f"(role {manifest.get('role')}, {manifest['num_examples']} examples)")
    if not distributed.elastic_enabled():   # elastic: checked for each world inside the loop
        cfg.per_rank_batch(ctx.size)


def _is_done(workdir: str, stage: str) -> bool:
    """done.json exists and, for a training stage, the checkpoint it names reads back."""
    from dcsp_dist import checkpoints, distributed
    if not layout.is_done(workdir, stage):
        return False
    if stage in layout.TRAINING_STAGES:
        prefix = _stage_checkpoint(workdir, stage)
        why = checkpoints.problem(prefix)
        if why:
            distributed.log(f"[{stage}] warning: done.json names {prefix}, which is unreadable ({why}); "
                            f"the stage resumes from its newest readable checkpoint")
            return False
    return True


def resolve_classes(cfg, data_dir: str, explicit: bool):
    """The config sized for the training records' class list; train and val must agree."""
    from dcsp_dist import records
    manifest = records.read_manifest(data_dir, cfg.train_split, check_files=False)
    if os.path.isfile(records.manifest_path(data_dir, cfg.val_split)):
        records.check_same_classes(data_dir, cfg.train_split, cfg.val_split)
    return cfg.with_classes(manifest["class_names"], explicit)


def run(stage: str, cfg, ctx, data_dir: str, workdir: str, verify_data: bool = False) -> None:
    from dcsp_dist import distributed

    stages = layout.SCHEDULE if stage == "all" else (stage,)
    elastic = distributed.elastic_enabled()
    if elastic and any(name not in layout.TRAINING_STAGES for name in stages):
        raise ValueError(f"--stage {stage}: elastic jobs run one training stage at a time ("
                         f"{', '.join(layout.TRAINING_STAGES)}); run the cue stages with launch/local.sh or "
                         f"launch/multinode.sh")
    layout.check_writable_dir(workdir, "--workdir")
    check_inputs(stages, cfg, ctx, data_dir, verify_data)
    if not elastic:   # horovodrun starts every elastic worker with the same command
        distributed.check_same_everywhere(cfg.digest(), "the config")
    for name in stages:
        # Rank 0 owns the run directory; every rank follows its view of what is done.
        if (_is_done(workdir, name) if elastic
                else distributed.broadcast_object(_is_done(workdir, name) if ctx.is_chief else None)):
            distributed.log(f"[{name}] already done, skipping")
            continue
        if name in layout.TRAINING_STAGES:
            train_stage(name, cfg, ctx, data_dir, workdir)
        else:
            cue_stage(name, cfg, ctx, data_dir, workdir)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        cfg = config_lib.make_config(args.config, config_lib.parse_overrides(args.set), args.config_file)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from dcsp_dist import distributed, records
    explicit = "num_classes" in config_lib.explicit_settings(args.set, args.config_file)
    try:
        cfg = resolve_classes(cfg, args.data, explicit)
    except ValueError as exc:   # DataError included: one line, before Horovod starts
        print(f"error: {exc}", file=sys.stderr)
        return 2 if not isinstance(exc, records.DataError) else 1
    ctx = distributed.init(intra_threads=args.threads, deterministic=cfg.deterministic, timeline=args.horovod_timeline)
    distributed.log(f"dcsp_dist.train: stage {args.stage}, config {cfg.name} ({cfg.digest()}), "
                    f"{ctx.size} rank(s), global batch {cfg.global_batch}")
    return distributed.run_or_report(
        lambda: run(args.stage, cfg, ctx, args.data, args.workdir, args.verify_data),
        (records.DataError, ValueError, OSError, FloatingPointError, RuntimeError))


if __name__ == "__main__":
    sys.exit(main())
