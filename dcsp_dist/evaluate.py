"""Rank-parallel evaluation with dense CRF; confusion matrices are summed across ranks.

    horovodrun -np 16 -H node1:8,node2:8 python -m dcsp_dist.evaluate \
        --checkpoint runs/voc --data records/voc12 --split val

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


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m dcsp_dist.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="run directory, stage directory or checkpoint prefix")
    parser.add_argument("--data", required=True, help="TFRecords directory")
    parser.add_argument("--split", default="val")
    parser.add_argument("--no-crf", action="store_true", help="argmax of the network's probabilities")
    parser.add_argument("--scales", default=None, help="comma-separated, first is 1 (default: the run's eval_scales)")
    parser.add_argument("--crf-workers", type=int, default=1,
                        help="CRF worker processes per rank, overlapped with the network (0: sequential)")
    parser.add_argument("--out", default=None, help="results directory (default: <run>/eval_<split>)")
    parser.add_argument("--config", default=None, help="preset, only if the checkpoint has no config.json")
    parser.add_argument("--threads", type=int, default=None, help="TensorFlow threads per rank")
    return parser.parse_args(argv)


def parse_scales(text: str | None, default) -> tuple:
    if text is None:
        return tuple(default)
    try:
        scales = tuple(float(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise ValueError(f"--scales {text!r}: expected numbers like 1,0.75,0.5") from None
    if not scales or scales[0] != 1.0 or min(scales) <= 0:
        raise ValueError(f"--scales {text!r}: the first scale must be 1 and all must be > 0")
    return scales


def default_out(checkpoint: str, split: str) -> str:
    """<run>/eval_<split> for a run or stage directory; beside the stage for a prefix."""
    from dcsp_dist import workdir as layout
    path = os.path.abspath(checkpoint)
    if os.path.isdir(path):
        run = os.path.dirname(path) if os.path.basename(path) in layout.SCHEDULE else path
    else:
        run = os.path.dirname(os.path.dirname(os.path.dirname(path)))
    return os.path.join(run, f"eval_{split}")


def confusion_png(matrix, class_names, path: str, cell: int = 18) -> None:
    """Row-normalised confusion matrix as a picture (rows: truth, columns: prediction)."""
    import numpy as np
    from PIL import Image, ImageDraw

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
    tmp = path + ".tmp.png"
    img.save(tmp)
    os.replace(tmp, path)


def evaluate(args, ctx) -> dict | None:
    import numpy as np
    import tensorflow as tf
    from tqdm import tqdm

    from dcsp_dist import data, distributed, metrics, records
    from dcsp_dist.crf import CRFParams
    from dcsp_dist.inference import load_for_inference, run_inference
    from dcsp_dist import workdir as layout

    # ---- checks before any work ---------------------------------------------------------
    manifest = records.read_manifest(args.data, args.split)
    if not manifest.get("has_mask"):
        raise records.DataError(f"{records.manifest_path(args.data, args.split)}: split {args.split} "
                                f"has no masks; evaluation needs ground truth (use dcsp_dist.predict)")
    model, cfg, prefix = load_for_inference(args.checkpoint, args.config)
    if cfg.num_classes != len(manifest["class_names"]):
        raise ValueError(f"--checkpoint {prefix} has {cfg.num_classes} classes, {args.split} records have "
                         f"{len(manifest['class_names'])}")
    scales = parse_scales(args.scales, cfg.eval_scales)
    files = records.files_for_rank(records.shard_files(args.data, manifest), ctx.rank, ctx.size,
                                   what=f"{args.data} split {args.split}")
    mine = sum(s["num_examples"] for s in manifest["shards"] if os.path.join(args.data, s["file"]) in files)
    crf = None if args.no_crf else CRFParams.from_config(cfg)

    # ---- per-rank inference, then one reduction -------------------------------------------
    dataset = data.make_inference_dataset(args.data, args.split, files=files, need_mask=True)
    matrix = np.zeros((cfg.num_classes, cfg.num_classes), np.int64)
    count, start = 0, time.time()
    bar = tqdm(total=mine, desc=f"eval {args.split} (rank 0)", unit="img", disable=not ctx.is_chief, mininterval=2)
    for ex, label in run_inference(model, dataset, scales, crf, workers=args.crf_workers):
        matrix += metrics.confusion_matrix(ex["mask"].numpy(), label, cfg.num_classes)
        count += 1
        bar.update(1)
    bar.close()
    seconds = time.time() - start
    matrix = distributed.allreduce_sum(matrix)
    images = int(distributed.allreduce_sum(np.array([count], np.int64))[0])
    if not ctx.is_chief:
        return None

    # ---- report on rank 0 -------------------------------------------------------------------
    result = metrics.scores(matrix)
    names = manifest["class_names"]
    title = (f"{args.split}: {images} images, {ctx.size} rank(s), CRF {'off' if crf is None else 'on'}, "
             f"scales {','.join(map(str, scales))}, checkpoint {prefix}")
    distributed.log(metrics.format_table(result, names, title))
    out = args.out or default_out(args.checkpoint, args.split)
    os.makedirs(out, exist_ok=True)
    summary = {"split": args.split, "checkpoint": prefix, "num_images": images, "ranks": ctx.size,
               "crf": crf is not None, "scales": list(scales), "miou": result["miou"],
               "pixel_accuracy": result["pixel_accuracy"],
               "iou": {n: (None if np.isnan(v) else float(v)) for n, v in zip(names, result["iou"])},
               "confusion_matrix": matrix.tolist(), "seconds": round(seconds, 2),
               "images_per_sec": round(images / max(seconds, 1e-9), 3)}
    layout.write_json(os.path.join(out, "results.json"), summary)
    confusion_png(matrix, names, os.path.join(out, "confusion.png"))
    writer = tf.summary.create_file_writer(os.path.join(out, "tb"))
    with writer.as_default(step=0):
        tf.summary.scalar(f"{args.split}/miou", result["miou"])
        tf.summary.scalar(f"{args.split}/pixel_accuracy", result["pixel_accuracy"])
        for n, v in zip(names, result["iou"]):
            if not np.isnan(v):
                tf.summary.scalar(f"{args.split}/iou/{n}", v)
    writer.flush()
    distributed.log(f"wrote {out}/results.json, confusion.png and TensorBoard scalars")
    return summary


def main(argv=None) -> int:
    args = parse_args(argv)
    from dcsp_dist import distributed, records
    ctx = distributed.init(intra_threads=args.threads)
    try:
        evaluate(args, ctx)
    except (records.DataError, ValueError, FileNotFoundError) as exc:
        distributed.error(str(exc))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
