"""The cue stages (docs/method.md §4.2, 4.4): cue shards for the training split, rank-parallel,
whole shards per rank.

``cues``: attention maps + saliency from the attention stage's model. ``adapt``:
segmentation logits restricted to the tags from the segmentation stage's model (through
the dense CRF first with ``adapt_crf``). Each shard is written under a temporary name and
renamed when complete; the cues' mIoU is reported when the split has masks.
"""
from __future__ import annotations

import dataclasses
import os
import time
import typing

import numpy as np

from dcsp_dist.core import atomic, preemption, stages
from dcsp_dist.core.errors import first_line
from dcsp_dist.core.progress import progress
from dcsp_dist.data import records
from dcsp_dist.inference import crf, metrics
from dcsp_dist.rundir import checkpoints, layout
from dcsp_dist.training.trainer import build_model


def make_cue_fn(stage: str, cfg, model):
    """``(example, saliency) -> (label [H, W] uint8 or probabilities, png bytes)`` for ``stage``."""
    import tensorflow as tf

    from dcsp_dist.data import cues
    from dcsp_dist.inference.predictor import make_multiscale_fn

    spec = stages.get(stage)
    attention_cues = spec.needs_saliency       # attention maps + saliency; else adapted from segmentation
    refine = not attention_cues and cfg.schedule.adapt_crf   # adapted cues through the dense CRF (an option)
    crf_params = cfg.crf
    space = "logits" if attention_cues else cfg.inference.upsample_space
    fused = make_multiscale_fn(model, cfg.inference.cue_scales, spec.output, cfg.model.output_stride, space,
                               cfg.inference_window_size)

    @tf.function(reduce_retracing=True)
    def make_cue(image, saliency, tags):
        maps = fused(image)                                              # [H, W, K]
        if attention_cues:
            label = cues.attention_cues(maps, tf.cast(saliency, tf.float32) / 255.0, tags, cfg.inference.bg_threshold)
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

    return cue_of


class _Stopped(Exception):
    """A signal arrived: the shard in progress is discarded."""


def write_shard(path: str, target: str, examples, cue_of, on_label) -> dict:
    """The cue shard ``target`` for the image shard ``path``, written whole or not at all
    (``on_label(example, label)`` sees every cue); returns its record (file, records,
    bytes) for ``cues.json``. Errors are raised as OSError/OpError; a signal between two
    images discards the shard (``_Stopped``)."""
    import tensorflow as tf

    tmp = atomic.temp_name(target)
    count = 0
    try:
        with tf.io.TFRecordWriter(tmp) as writer:
            for ex in examples:
                if preemption.requested():
                    raise _Stopped()
                saliency = ex["saliency"] if "saliency" in ex else tf.zeros(tf.shape(ex["image"])[:2], tf.uint8)
                label, png = cue_of(ex, saliency)
                writer.write(records.make_cue_example(ex["id"].numpy(), png.numpy()))
                on_label(ex, label)
                count += 1
        atomic.publish(tmp, target)
    finally:
        if os.path.exists(tmp):    # nothing half-written is left behind
            os.remove(tmp)
    return {"file": os.path.basename(target), "num_examples": count, "bytes": os.path.getsize(target)}


def _finished(target: str, expected: int, made_by: str):
    """The record of a cue shard finished earlier by the same model and settings (its
    sidecar ``<shard>.json`` matches the file), or None: a resumed stage redoes only the rest."""
    side = target + ".json"
    if not (os.path.isfile(target) and os.path.isfile(side)):
        return None
    try:
        record = atomic.read_json(side, "cue shard record")
    except ValueError:
        return None
    ok = (record.get("made_by") == made_by and record.get("num_examples") == expected
          and record.get("bytes") == os.path.getsize(target))
    return record if ok else None


def cue_stage(stage: str, cfg, ctx, data_dir: str, workdir: str) -> dict:
    """Write this rank's cue shards, skipping those already finished by the same model;
    returns the summary (with the cues' mIoU when the split has masks)."""

    from dcsp_dist import distributed

    spec, start = stages.get(stage), time.time()
    directory = layout.stage_dir(workdir, stage)
    manifest = records.read_manifest(data_dir, cfg.run.train_split)
    mine = records.files_for_rank(records.shard_files(data_dir, manifest), ctx.rank, ctx.size,
                                  what=f"{data_dir} split {cfg.run.train_split}")
    os.makedirs(directory, exist_ok=True)

    model = build_model(cfg)
    checkpoints.restore_model(model, layout.stage_checkpoint(workdir, spec.source),
                              f"the {spec.source} stage's checkpoint")
    distributed.broadcast_state(model)
    cue_of = make_cue_fn(stage, cfg, model)
    # A cue shard is stamped with the model's weights, the settings that change results and its
    # image shard's sha256: a changed model, setting or image shard redoes it, bookkeeping does not.
    made_by = f"{layout.read_done(workdir, spec.source).get('weights_sha256')}/{cfg.stamp()}"
    counts = {os.path.join(data_dir, s["file"]): s["num_examples"] for s in manifest["shards"]}
    stamps = {os.path.join(data_dir, s["file"]): f"{made_by}/{s['sha256'][:16]}" for s in manifest["shards"]}
    bar = progress(sum(counts[p] for p in mine), f"[{stage}] rank 0", enabled=ctx.is_chief)
    matrix = np.zeros((cfg.model.num_classes, cfg.model.num_classes), np.int64)
    writer = _ShardWriter(stage, cfg, data_dir, manifest, cue_of, bar)
    written, stopped = [], False
    for path in mine:
        target = layout.cue_shard_path(directory, path)
        record = _finished(target, counts[path], stamps[path])
        if record is None:
            try:
                record = writer.write(path, target, stamps[path])
            except _Stopped:
                stopped = True
                break
        else:
            bar.update(record["num_examples"])
        matrix += np.asarray(record.get("confusion", 0), np.int64)
        written.append({k: record[k] for k in ("file", "num_examples", "bytes")})
    bar.close()
    gathered = distributed.allgather_object((written, stopped))   # every rank learns if any was signalled
    if any(s for _, s in gathered):
        if ctx.is_chief:
            preemption.record(workdir, f"{stage}: {sum(len(w) for w, _ in gathered)} cue shards finished")
        distributed.barrier()          # the marker is on disk before any rank exits
        raise preemption.Preempted(f"[{stage}] preempted ({preemption.signal_name() or 'another rank was signalled'}); "
                                   f"finished cue shards are kept; relaunch the same command to write the rest")
    shards = sorted((s for rank, _ in gathered for s in rank), key=lambda s: s["file"])
    return summarise(stage, cfg, ctx, manifest, distributed.allreduce_sum(matrix), workdir, shards,
                     seconds=time.time() - start)


@dataclasses.dataclass(frozen=True)
class _ShardWriter:
    """What every cue shard of a stage is written with."""
    stage: str
    cfg: typing.Any
    data_dir: str
    manifest: dict
    cue_of: typing.Callable      # image example -> cue map (``make_cue_fn``)
    bar: typing.Any              # the rank's progress

    def write(self, path: str, target: str, made_by: str) -> dict:
        """The cue shard of image shard ``path`` at ``target``, and its sidecar record (with its
        confusion matrix when there are masks)."""
        import tensorflow as tf

        from dcsp_dist.data import pipeline
        cfg, manifest = self.cfg, self.manifest
        shard_matrix = np.zeros((cfg.model.num_classes, cfg.model.num_classes), np.int64)

        def on_label(ex, label):
            if manifest.get("has_mask"):
                shard_matrix[...] += metrics.confusion_matrix(ex["mask"].numpy(), label.numpy(),
                                                              cfg.model.num_classes)
            self.bar.update(1)

        examples = pipeline.make_inference_dataset(self.data_dir, cfg.run.train_split, files=[path],
                                                   need_saliency=stages.get(self.stage).needs_saliency)
        try:
            record = write_shard(path, target, examples, self.cue_of, on_label)
        except tf.errors.DataLossError as exc:
            raise records.DataError(records.damaged_shard_message(self.data_dir, manifest, [path], exc)) from None
        except (OSError, tf.errors.OpError) as exc:   # e.g. a full disk
            raise records.DataError(f"writing {target} failed: {first_line(exc)}") from None
        record.update(made_by=made_by, confusion=shard_matrix.tolist())
        atomic.write_json(target + ".json", record)
        return record


def summarise(stage: str, cfg, ctx, manifest: dict, matrix, workdir: str, shards: list,
              seconds: float | None = None) -> dict:
    """Rank 0 writes ``cues.json`` (every cue shard's records and bytes, checked when a
    training stage reads them; the cues' mIoU against the training masks, when there are
    masks) and ``done.json``, and prints the per-class table."""
    from dcsp_dist import distributed
    summary = {"stage": stage, "num_images": manifest["num_examples"], "shards": shards}
    if seconds is not None:
        summary["seconds"] = round(seconds, 1)
    if manifest.get("has_mask"):
        result = metrics.scores(matrix)
        summary.update(miou=result["miou"], iou=result["iou"].tolist(), confusion_matrix=matrix.tolist())
        distributed.log(metrics.format_table(result, manifest["class_names"], f"[{stage}] cue quality vs. training masks"))
    if ctx.is_chief:
        atomic.write_json(layout.cue_summary_path(layout.stage_dir(workdir, stage)), summary)
        done = {k: v for k, v in summary.items() if k in ("stage", "num_images", "miou", "seconds")}
        atomic.write_json(layout.done_path(workdir, stage), {**done, "records": records.records_digest(manifest)})
    distributed.barrier()
    return summary
