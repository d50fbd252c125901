"""Rank-parallel evaluation with dense CRF; confusion matrices are summed across ranks.

    horovodrun -np 16 -H node1:8,node2:8 python -m dcsp_dist.evaluate \
        --checkpoint runs/voc --data records/voc12 --split val

``--checkpoint`` repeated evaluates several models in one launch (``--out`` repeated names
their result directories in the same order; the rest take the default).

Each rank evaluates its own shard files (every image exactly once, whatever the number of
ranks); per image: multi-scale logits fused by max, bilinear resize, softmax, dense CRF
(in worker processes, overlapped with the network), argmax, an int64 confusion matrix.
One allreduce(sum) at the end; rank 0 prints the per-class IoU table and writes
results.json, confusion.png and TensorBoard scalars.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
from PIL import Image, ImageDraw

from dcsp_dist.core import atomic
from dcsp_dist.core.errors import UserError
from dcsp_dist.core.progress import progress
from dcsp_dist.inference import metrics
from dcsp_dist.inference.jobs import Job, RecordSource, add_job_arguments, check_output, main_for
from dcsp_dist.inference.settings import InferenceSettings
from dcsp_dist.rundir import layout


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m dcsp_dist.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_job_arguments(parser, default_split="val", many_checkpoints=True)
    parser.add_argument("--out", action="append", default=[],
                        help="results directory (default: <run>/eval_<split>); with several --checkpoint, the "
                             "n-th --out is the n-th checkpoint's")
    return parser.parse_args(argv)


def each_checkpoint(args) -> list[tuple[InferenceSettings, str]]:
    """(settings, out) for each --checkpoint, all checked before any work: a second model's
    unusable output directory is refused before the first model's inference."""
    if len(args.out) > len(args.checkpoint):
        raise UserError(f"--out given {len(args.out)} times for {len(args.checkpoint)} --checkpoint")
    outs = args.out + [default_out(c, args.split) for c in args.checkpoint[len(args.out):]]
    seen = {}
    for checkpoint, out in zip(args.checkpoint, outs):
        key = os.path.abspath(out)
        if key in seen:
            raise UserError(f"--checkpoint {seen[key]} and {checkpoint} would both write {out}; give each an --out")
        seen[key] = checkpoint
        check_output(out, "results.json")
    each = [(InferenceSettings.from_args(args, checkpoint=c), o) for c, o in zip(args.checkpoint, outs)]
    each[0][0].check()
    return each


def evaluate_each(args, ctx) -> list:
    """``evaluate`` for every --checkpoint in one process (one start-up: TensorFlow, Horovod,
    the CRF workers' spawn)."""
    return [evaluate(settings, args.data, args.split, out, ctx, verify=args.verify_data)
            for settings, out in each_checkpoint(args)]


def default_out(checkpoint: str, split: str) -> str:
    """<run>/eval_<split> for a run or stage directory, or for a checkpoint prefix inside a
    run (``<run>/<stage>/ckpt/ckpt-N``); any other prefix needs --out (ValueError)."""
    path = os.path.abspath(checkpoint)
    if os.path.isdir(path):
        run = os.path.dirname(path) if os.path.basename(path) in layout.SCHEDULE else path
    else:
        stage_dir = layout.stage_of_checkpoint(path)
        if stage_dir is None or os.path.basename(stage_dir) not in layout.SCHEDULE:
            raise UserError(f"--checkpoint {checkpoint} is not inside a run directory (<run>/<stage>/ckpt/); "
                            f"give --out for its results")
        run = os.path.dirname(stage_dir)
    return layout.eval_dir(run, split)


def confusion_png(matrix, class_names, path: str, cell: int = 18) -> None:
    """Row-normalised confusion matrix as a picture (rows: truth, columns: prediction)."""

    m = np.asarray(matrix, np.float64)
    norm = m / np.maximum(m.sum(1, keepdims=True), 1)
    n, margin = len(m), 110
    img = Image.new("RGB", (margin + n * cell, margin + n * cell), "white")
    draw = ImageDraw.Draw(img)
    for i in range(n):
        draw.text((2, margin + i * cell + 3), class_names[i][:16], fill="black")
        draw.text((margin + i * cell + 2, 2 + (i % 6) * 17), class_names[i][:6], fill="black")
        for j in range(n):
            v = int(255 * (1 - norm[i, j]))
            draw.rectangle([margin + j * cell, margin + i * cell, margin + (j + 1) * cell - 1,
                            margin + (i + 1) * cell - 1], fill=(v, v, 255))
    tmp = atomic.temp_name(path)
    img.save(tmp, format="PNG")
    atomic.publish(tmp, path)


def evaluate(settings: InferenceSettings, data: str, split: str, out: str, ctx, verify: bool = False) -> dict | None:
    """The model of ``settings`` over ``split`` of the records in ``data``, every rank its
    shards; rank 0 writes the scores under ``out`` and returns them."""
    from dcsp_dist import distributed

    check_output(out, "results.json")
    settings.check()
    job = Job(settings, RecordSource(data, split, ctx, need_mask=True, verify=verify), ctx)   # every check first
    cfg, crf, scales, prefix, manifest = job.cfg, job.crf, job.loaded.scales, job.loaded.checkpoint, job.source.manifest

    # ---- per-rank inference, then one reduction -------------------------------------------
    # Two matrices: the labels (CRF's when on) and the network's own argmax, so every
    # evaluation with CRF also says what the CRF adds.
    matrices = np.zeros((2, cfg.model.num_classes, cfg.model.num_classes), np.int64)
    count, start = 0, time.time()
    bar = progress(job.num_images, f"eval {split} (rank 0)", enabled=ctx.is_chief)
    for ex, label, argmax in job.results():
        mask = ex["mask"].numpy()
        confusion = metrics.confusion_matrix(mask, label, cfg.model.num_classes)
        matrices[0] += confusion
        # Without CRF the label is the argmax: the same matrix, computed once.
        matrices[1] += confusion if crf is None else metrics.confusion_matrix(mask, argmax, cfg.model.num_classes)
        count += 1
        bar.update(1)
    bar.close()
    seconds = time.time() - start
    matrix, network_matrix = distributed.allreduce_sum(matrices)
    images = job.count_and_agree(count)
    if not ctx.is_chief:
        return None

    # ---- report on rank 0 -------------------------------------------------------------------
    result, network = metrics.scores(matrix), metrics.scores(network_matrix)
    names = manifest["class_names"]
    title = (f"{split}: {images} images, {ctx.size} rank(s), CRF {'off' if crf is None else 'on'}, "
             f"scales {','.join(map(str, scales))}, window {job.cfg.inference.inference_window}, checkpoint {prefix}")
    distributed.log(metrics.format_table(result, names, title))
    if crf is not None:
        distributed.log(f"without CRF: mIoU {100 * network['miou']:.2f}")
    staging = atomic.staging_dir(out)   # the whole result, then renamed to ``out``
    try:
        summary = _write_results(split, ctx, job, staging, matrix, network_matrix, images, seconds)
        atomic.publish_dir(staging, out)
    except BaseException:
        atomic.discard_dir(staging)
        raise
    distributed.log(f"wrote {out}/results.json, confusion.png and TensorBoard scalars")
    return summary


def _write_results(split: str, ctx, job, out: str, matrix, network_matrix, images: int, seconds: float) -> dict:
    """results.json, confusion.png and TensorBoard scalars into ``out`` (rank 0)."""
    import tensorflow as tf

    result, network = metrics.scores(matrix), metrics.scores(network_matrix)
    names, crf, scales, prefix = job.class_names, job.crf, job.loaded.scales, job.loaded.checkpoint
    summary = {"split": split, "checkpoint": prefix, "num_images": images, "ranks": ctx.size,
               "crf": crf is not None, "crf_workers": job.workers, "scales": list(scales),
               "window": job.cfg.inference.inference_window, "miou": result["miou"],
               "pixel_accuracy": result["pixel_accuracy"],
               "iou": {n: (None if np.isnan(v) else float(v)) for n, v in zip(names, result["iou"])},
               "miou_without_crf": network["miou"],
               "iou_without_crf": {n: (None if np.isnan(v) else float(v)) for n, v in zip(names, network["iou"])},
               "confusion_matrix": matrix.tolist(), "seconds": round(seconds, 2),
               "images_per_sec": round(images / max(seconds, 1e-9), 3)}
    atomic.write_json(os.path.join(out, "results.json"), summary)
    confusion_png(matrix, names, os.path.join(out, "confusion.png"))
    writer = tf.summary.create_file_writer(os.path.join(out, "tb"))
    with writer.as_default(step=0):
        tf.summary.scalar(f"{split}/miou", result["miou"])
        tf.summary.scalar(f"{split}/pixel_accuracy", result["pixel_accuracy"])
        for n, v in zip(names, result["iou"]):
            if not np.isnan(v):
                tf.summary.scalar(f"{split}/iou/{n}", v)
    writer.flush()
    writer.close()
    return summary


def main(argv=None) -> int:
    return main_for(evaluate_each, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
