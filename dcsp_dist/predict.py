"""Masks for a split of records: the PASCAL VOC evaluation server's tree, or one PNG per image.

    horovodrun -np 8 python -m dcsp_dist.predict --checkpoint runs/voc --data records/voc12 \
        --split test --out submission

Same inference as evaluation (multi-scale, softmax, dense CRF). Each rank writes its own
images as palette PNGs (index = class, the VOC colour map), optionally side-by-side colour
overlays in ``<out>/overlays/``. The layout (``--layout``):
- ``voc``: ``<out>/results/VOC2012/Segmentation/comp6_test_cls/<id>.png``, and rank 0 packs
  ``<out>/results.tar.gz`` ready to upload;
- ``plain``: ``<out>/<id>.png``;
- ``auto`` (default): ``voc`` for records built from VOC layout (and for records built before
  the manifest named its source), ``plain`` for every other source.
"""
from __future__ import annotations

import argparse
import os
import sys
import tarfile

from dcsp_dist.jobs import Job, add_job_arguments, main_for

SUBMISSION_DIR = os.path.join("results", "VOC2012", "Segmentation", "comp6_test_cls")
MARKER = "predict.json"   # what this run predicted; --out without it is not ours to replace


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m dcsp_dist.predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_job_arguments(parser, default_split="test")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--overlays", action="store_true", help="also write image | prediction overlays")
    parser.add_argument("--layout", choices=("auto", "voc", "plain"), default="auto",
                        help="voc: the evaluation server's tree + results.tar.gz; plain: <out>/<id>.png; "
                             "auto: voc for VOC-layout records, plain otherwise")
    parser.add_argument("--no-tar", action="store_true", help="skip results.tar.gz (voc layout)")
    return parser.parse_args(argv)


def save_palette_png(label, path: str) -> None:
    """Write a class-index map as a palette PNG with the VOC colour map (atomically)."""
    from PIL import Image

    from dcsp_dist.palette import palette
    image = Image.fromarray(label.astype("uint8"), mode="P")
    image.putpalette(palette())
    tmp = path + ".tmp.png"
    image.save(tmp)
    os.replace(tmp, path)


def save_overlay(image, label, path: str) -> None:
    import numpy as np
    from PIL import Image

    from dcsp_dist.palette import color_map
    colour = color_map()[label]
    blend = (0.5 * image + 0.5 * colour).astype(np.uint8)
    tmp = path + ".tmp.jpg"
    Image.fromarray(np.concatenate([image, blend, colour], axis=1)).save(tmp, quality=90)
    os.replace(tmp, path)


def predict(args, ctx) -> int:
    """Every rank writes its masks into one fresh directory beside ``--out`` (rank 0 names
    it); when all are done, rank 0 packs exactly those masks and renames the directory to
    ``--out``. A failed run leaves ``--out`` as it was and nothing half-written."""
    from dcsp_dist import distributed
    from dcsp_dist import workdir as layout

    job = Job(args, ctx, need_mask=False, out_dir=args.out, marker=MARKER)   # every check first
    if args.layout == "auto":
        args.layout = "voc" if job.manifest.get("source", "voc") == "voc" else "plain"
    staging = distributed.broadcast_object(layout.staging_dir(args.out) if ctx.is_chief else None)
    try:
        total = _write_masks(args, ctx, job, staging)
        if ctx.is_chief:
            _finish(args, staging, total)
    except BaseException:
        if ctx.is_chief:
            layout.discard_dir(staging)
        raise
    return total


def _masks_dir(args, out: str) -> str:
    return os.path.join(out, SUBMISSION_DIR) if args.layout == "voc" else out


def _finish(args, staging: str, total: int) -> None:
    from dcsp_dist import distributed
    from dcsp_dist import workdir as layout
    masks = _masks_dir(args, args.out)
    written = sum(name.endswith(".png") for name in os.listdir(_masks_dir(args, staging))) if total else 0
    if written != total:
        raise OSError(f"{staging}: {written} masks on disk, the ranks wrote {total} (is --out on storage every "
                      f"rank shares?)")
    tar = args.layout == "voc" and not args.no_tar
    if tar:
        archive = os.path.join(staging, "results.tar.gz")
        with tarfile.open(archive + ".tmp", "w:gz") as tar:
            tar.add(os.path.join(staging, "results"), arcname="results")
        layout.publish(archive + ".tmp", archive)
    layout.write_json(os.path.join(staging, MARKER), {"split": args.split, "checkpoint": args.checkpoint,
                                                        "num_images": total, "layout": args.layout})
    layout.publish_dir(staging, args.out)
    tar_note = f" and {os.path.join(args.out, 'results.tar.gz')}" if tar else ""
    distributed.log(f"wrote {total} masks under {masks}{tar_note}")


def _write_masks(args, ctx, job, out: str) -> int:
    """This rank's masks (and overlays) under ``out``; returns the count over all ranks."""
    from dcsp_dist.progress import progress
    masks_dir = _masks_dir(args, out)
    overlay_dir = os.path.join(out, "overlays")
    os.makedirs(masks_dir, exist_ok=True)
    if args.overlays:
        os.makedirs(overlay_dir, exist_ok=True)
    count = 0
    bar = progress(job.num_images, f"predict {args.split} (rank 0)", enabled=ctx.is_chief)
    for ex, label, _ in job.results():
        image_id = ex["id"].numpy().decode()
        save_palette_png(label, os.path.join(masks_dir, f"{image_id}.png"))
        if args.overlays:
            save_overlay(ex["image"].numpy(), label, os.path.join(overlay_dir, f"{image_id}.jpg"))
        count += 1
        bar.update(1)
    bar.close()
    return job.count_and_agree(count)   # also waits for every rank


def main(argv=None) -> int:
    return main_for(predict, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
