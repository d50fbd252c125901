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

``--images DIR [--list FILE]`` takes any folder of photos (JPEG or PNG, any size) instead of
records: ``<out>/<file stem>.png`` each, the run's class list in the overlays' legend, the
files shared over the ranks; an image that does not decode is named on one line (and in
``predict.json``) and the rest are done.
"""
from __future__ import annotations

import argparse
import os
import sys
import tarfile

import numpy as np
from PIL import Image, ImageDraw

from dcsp_dist.core import atomic
from dcsp_dist.core.progress import progress
from dcsp_dist.data import records
from dcsp_dist.data.palette import color_map, palette
from dcsp_dist.inference.jobs import Job, PhotoSource, RecordSource, add_job_arguments, check_output, main_for
from dcsp_dist.inference.settings import InferenceSettings

SUBMISSION_DIR = os.path.join("results", "VOC2012", "Segmentation", "comp6_test_cls")
MARKER = "predict.json"   # what this run predicted; --out without it is not ours to replace


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m dcsp_dist.predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_job_arguments(parser, default_split="test", data_required=False)
    parser.add_argument("--images", help="a folder of photos instead of --data records (every .jpg/.jpeg/.png)")
    parser.add_argument("--list", help="with --images: the image paths to do, relative to --images, one per line")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--overlays", action="store_true", help="also write image | prediction overlays")
    parser.add_argument("--layout", choices=("auto", "voc", "plain"), default="auto",
                        help="voc: the evaluation server's tree + results.tar.gz; plain: <out>/<id>.png; "
                             "auto: voc for VOC-layout records, plain otherwise")
    parser.add_argument("--no-tar", action="store_true", help="skip results.tar.gz (voc layout)")
    args = parser.parse_args(argv)
    if bool(args.data) == bool(args.images):
        parser.error("give --data (records) or --images (a folder of photos)")
    if args.list and not args.images:
        parser.error("--list goes with --images")
    return args


def save_palette_png(label, path: str) -> None:
    """Write a class-index map as a palette PNG with the VOC colour map (atomically)."""

    image = Image.fromarray(label.astype("uint8"), mode="P")
    image.putpalette(palette())
    tmp = atomic.temp_name(path)
    image.save(tmp, format="PNG")
    atomic.publish(tmp, path)


def save_overlay(image, label, path: str, class_names=None) -> None:
    """image | blend | colour map, and below them a legend of the classes present."""

    cmap = color_map()
    colour = cmap[label]
    blend = (0.5 * image + 0.5 * colour).astype(np.uint8)
    strip = Image.fromarray(np.concatenate([image, blend, colour], axis=1))
    present = [int(c) for c in np.unique(label)]
    if class_names:
        canvas = Image.new("RGB", (strip.width, strip.height + 16 * len(present) + 4), "white")
        canvas.paste(strip, (0, 0))
        draw = ImageDraw.Draw(canvas)
        for row, c in enumerate(present):
            y = strip.height + 2 + 16 * row
            draw.rectangle([4, y, 16, y + 12], fill=tuple(int(v) for v in cmap[c]), outline="black")
            draw.text((22, y), class_names[c] if c < len(class_names) else f"class {c}", fill="black")
        strip = canvas
    tmp = atomic.temp_name(path)
    strip.save(tmp, format="JPEG", quality=90)
    atomic.publish(tmp, path)


def predict(args, ctx) -> int:
    """Every rank writes its masks into one fresh directory beside ``--out`` (rank 0 names
    it); when all are done, rank 0 packs exactly those masks and renames the directory to
    ``--out``. A failed run leaves ``--out`` as it was and nothing half-written."""
    from dcsp_dist import distributed

    check_output(args.out, MARKER)   # every check before any work
    settings = InferenceSettings.from_args(args)
    settings.check()
    source = (PhotoSource(args.images, args.list, ctx) if args.images
              else RecordSource(args.data, args.split, ctx, need_mask=False, verify=args.verify_data))
    job = Job(settings, source, ctx)
    layout = source.layout if args.layout == "auto" else args.layout
    if args.images:
        layout = "plain"
    staging = distributed.broadcast_object(atomic.staging_dir(args.out) if ctx.is_chief else None)
    try:
        total, unreadable = _write_masks(args, layout, ctx, job, staging)
        if ctx.is_chief:
            _finish(args, layout, staging, total, unreadable)
    except BaseException:
        if ctx.is_chief:
            atomic.discard_dir(staging)
        raise
    return total


def _masks_dir(layout: str, out: str) -> str:
    return os.path.join(out, SUBMISSION_DIR) if layout == "voc" else out


def _finish(args, layout: str, staging: str, total: int, unreadable: list) -> None:
    from dcsp_dist import distributed
    masks = _masks_dir(layout, args.out)
    written = sum(name.endswith(".png") for name in os.listdir(_masks_dir(layout, staging))) if total else 0
    if written != total:
        raise OSError(f"{staging}: {written} masks on disk, the ranks wrote {total} (is --out on storage every "
                      f"rank shares?)")
    tar = layout == "voc" and not args.no_tar
    if tar:
        archive = os.path.join(staging, "results.tar.gz")
        partial = atomic.temp_name(archive)
        with tarfile.open(partial, "w:gz") as tar:
            tar.add(os.path.join(staging, "results"), arcname="results")
        atomic.publish(partial, archive)
    what = {"images": args.images} if args.images else {"split": args.split}
    atomic.write_json(os.path.join(staging, MARKER), {**what, "checkpoint": args.checkpoint, "num_images": total,
                                                        "layout": layout, "unreadable": unreadable})
    atomic.publish_dir(staging, args.out)
    tar_note = f" and {os.path.join(args.out, 'results.tar.gz')}" if tar else ""
    for line in unreadable:
        distributed.log(f"unreadable image, skipped: {line}")
    distributed.log(f"wrote {total} masks under {masks}{tar_note}"
                    f"{f'; {len(unreadable)} unreadable image(s) named above' if unreadable else ''}")


def _write_masks(args, layout: str, ctx, job, out: str) -> tuple[int, list]:
    """This rank's masks (and overlays) under ``out``; returns the count over all ranks and
    every rank's unreadable images."""
    from dcsp_dist import distributed
    masks_dir = _masks_dir(layout, out)
    overlay_dir = os.path.join(out, "overlays")
    os.makedirs(masks_dir, exist_ok=True)
    if args.overlays:
        os.makedirs(overlay_dir, exist_ok=True)
    count = 0
    bar = progress(job.num_images, f"predict {args.images or args.split} (rank 0)", enabled=ctx.is_chief)
    for ex, label, _ in job.results():
        image_id = ex["id"].numpy().decode()
        why = records.id_problem(image_id)   # records built before build refused such ids
        if why:
            raise records.DataError(f"{args.data} split {args.split}: record id {image_id!r}: {why}; rebuild the "
                                    f"records with data_tools.build, which refuses such ids")
        save_palette_png(label, os.path.join(masks_dir, f"{image_id}.png"))
        if args.overlays:
            save_overlay(ex["image"].numpy(), label, os.path.join(overlay_dir, f"{image_id}.jpg"), job.class_names)
        count += 1
        bar.update(1)
    bar.close()
    total = job.count_and_agree(count)   # also waits for every rank
    return total, [line for lines in distributed.allgather_object(job.source.unreadable) for line in lines]


def main(argv=None) -> int:
    return main_for(predict, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
