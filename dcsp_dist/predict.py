"""Test-set masks for the PASCAL VOC evaluation server.

    horovodrun -np 8 python -m dcsp_dist.predict --checkpoint runs/voc --data records/voc12 \
        --split test --out submission

Same inference as evaluation (multi-scale, softmax, dense CRF). Each rank writes its own
images as palette PNGs with the VOC colour map, ``<out>/results/VOC2012/Segmentation/
comp6_test_cls/<id>.png`` (index = class), optionally side-by-side colour overlays in
``<out>/overlays/``; rank 0 then packs ``<out>/results.tar.gz`` ready to upload.
"""
from __future__ import annotations

import argparse
import os
import sys
import tarfile

SUBMISSION_DIR = os.path.join("results", "VOC2012", "Segmentation", "comp6_test_cls")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m dcsp_dist.predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="run directory, stage directory or checkpoint prefix")
    parser.add_argument("--data", required=True, help="TFRecords directory")
    parser.add_argument("--split", default="test")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--no-crf", action="store_true")
    parser.add_argument("--scales", default=None, help="comma-separated, first is 1 (default: the run's eval_scales)")
    parser.add_argument("--crf-workers", type=int, default=1, help="CRF worker processes per rank (0: sequential)")
    parser.add_argument("--overlays", action="store_true", help="also write image | prediction overlays")
    parser.add_argument("--no-tar", action="store_true", help="skip results.tar.gz")
    parser.add_argument("--config", default=None, help="preset, only if the checkpoint has no config.json")
    parser.add_argument("--threads", type=int, default=None)
    return parser.parse_args(argv)


def save_palette_png(label, path: str) -> None:
    """Write a class-index map as a palette PNG with the VOC colour map (atomically)."""
    from PIL import Image
    from dcsp_dist.voc import palette
    image = Image.fromarray(label.astype("uint8"), mode="P")
    image.putpalette(palette())
    tmp = path + ".tmp.png"
    image.save(tmp)
    os.replace(tmp, path)


def save_overlay(image, label, path: str) -> None:
    import numpy as np
    from PIL import Image
    from dcsp_dist.voc import color_map
    colour = color_map()[label]
    blend = (0.5 * image + 0.5 * colour).astype(np.uint8)
    tmp = path + ".tmp.jpg"
    Image.fromarray(np.concatenate([image, blend, colour], axis=1)).save(tmp, quality=90)
    os.replace(tmp, path)


def predict(args, ctx) -> int:
    from tqdm import tqdm

    from dcsp_dist import data, distributed, records
    from dcsp_dist.crf import CRFParams
    from dcsp_dist.evaluate import parse_scales
    from dcsp_dist.inference import load_for_inference, run_inference

    manifest = records.read_manifest(args.data, args.split)
    model, cfg, prefix = load_for_inference(args.checkpoint, args.config)
    if cfg.num_classes != len(manifest["class_names"]):
        raise ValueError(f"--checkpoint {prefix} has {cfg.num_classes} classes, {args.split} records have "
                         f"{len(manifest['class_names'])}")
    scales = parse_scales(args.scales, cfg.eval_scales)
    files = records.files_for_rank(records.shard_files(args.data, manifest), ctx.rank, ctx.size,
                                   what=f"{args.data} split {args.split}")
    masks_dir = os.path.join(args.out, SUBMISSION_DIR)
    overlay_dir = os.path.join(args.out, "overlays")
    os.makedirs(masks_dir, exist_ok=True)
    if args.overlays:
        os.makedirs(overlay_dir, exist_ok=True)
    crf = None if args.no_crf else CRFParams.from_config(cfg)
    dataset = data.make_inference_dataset(args.data, args.split, files=files)
    count = 0
    mine = sum(s["num_examples"] for s in manifest["shards"] if os.path.join(args.data, s["file"]) in files)
    bar = tqdm(total=mine, desc=f"predict {args.split} (rank 0)", unit="img", disable=not ctx.is_chief, mininterval=2)
    for ex, label in run_inference(model, dataset, scales, crf, workers=args.crf_workers):
        image_id = ex["id"].numpy().decode()
        save_palette_png(label, os.path.join(masks_dir, f"{image_id}.png"))
        if args.overlays:
            save_overlay(ex["image"].numpy(), label, os.path.join(overlay_dir, f"{image_id}.jpg"))
        count += 1
        bar.update(1)
    bar.close()
    import numpy as np
    total = int(distributed.allreduce_sum(np.array([count], np.int64))[0])  # also waits for every rank
    if ctx.is_chief:
        if not args.no_tar:
            archive = os.path.join(args.out, "results.tar.gz")
            with tarfile.open(archive + ".tmp", "w:gz") as tar:
                tar.add(os.path.join(args.out, "results"), arcname="results")
            os.replace(archive + ".tmp", archive)
            distributed.log(f"wrote {total} masks under {masks_dir} and {archive}")
        else:
            distributed.log(f"wrote {total} masks under {masks_dir}")
    return total


def main(argv=None) -> int:
    args = parse_args(argv)
    from dcsp_dist import distributed, records
    ctx = distributed.init(intra_threads=args.threads)
    try:
        predict(args, ctx)
    except (records.DataError, ValueError, FileNotFoundError) as exc:
        distributed.error(str(exc))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
