"""Build sharded TFRecords from a VOC-layout directory.

    python -m data_tools.build --root VOCdevkit/VOC2012 --split-list lists/train_aug.txt \
        --split train --out records/voc12

Reads JPEGImages/<id>.jpg (bytes kept as they are), tags from ClassCategories/<id>.txt or
Annotations/<id>.xml, saliency from Saliency/<id>.png or .npz (key ``actv``), masks from
SegmentationClassAug/<id>.png or SegmentationClass/<id>.png. Writes
``<out>/<split>-00000-of-000NN.tfrecord`` and ``<out>/<split>.manifest.json``.

The split's role (from its name unless --role is given) decides what is required:
train needs tags and saliency, eval needs masks, test needs neither. Default shard count:
64 (so a 64-rank job still gets whole files), or one per example for smaller splits; splits
of 32,768 images or more get 256 per started 65,536 (COCO train2014: 512, val2014: 256).
Other sources: --tag-list with --classes (any classes), --coco-annotations with --images
(MS COCO instances files; the rule is in data_tools/coco.py).
Every bad item is reported (one line each) and nothing is written, unless --skip-bad.
"""
from __future__ import annotations

import argparse
import functools
import json
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor

from tqdm import tqdm

from data_tools.sources import (
    ROLES,
    check_root_and_list,
    load_item,
    load_tag_item,
    read_class_list,
    read_id_list,
    read_tag_list,
    role_for_split,
)
from dcsp_dist import records
from dcsp_dist.voc import CLASS_NAMES
from dcsp_dist.workdir import check_writable_dir, publish, temp_name, write_json

DEFAULT_SHARDS = 64
LARGE_SPLIT = 32768


def default_shards(num_images: int) -> int:
    """64 files (whole files for up to 64 ranks) for splits under 32,768 images, or one per
    image when smaller; larger splits get 256 files per started 65,536 images (COCO 2014:
    train 82,783 -> 512 files, val 40,504 -> 256), so 256 ranks still read whole files."""
    if num_images < LARGE_SPLIT:
        return min(DEFAULT_SHARDS, num_images)
    return 256 * -(-num_images // 65536)


def _shard_of(position: int, total: int, num_shards: int) -> int:
    return position * num_shards // total


def build(root: str, ids: list[str], split: str, out: str, role: str | None = None,
          num_shards: int | None = None, skip_bad: bool = False, workers: int | None = None,
          progress: bool = True, class_names=CLASS_NAMES, load=None, keys: list | None = None) -> dict:
    """Build one split; returns the manifest. Raises BuildError listing every bad item.

    The source is VOC layout under ``root`` by default; another source passes ``load``
    (key, role=... -> item, see data_tools.sources.load_files), the ``keys`` it takes (one
    per id) and its ``class_names`` (background first), which the manifest records.
    """
    role = role or role_for_split(split)
    problems: list[str] = []
    seen = set()
    for image_id in ids:
        if image_id in seen:
            problems.append(f"{image_id}: duplicate id in the split list")
        seen.add(image_id)
    unique_ids = list(dict.fromkeys(ids))
    first = {image_id: i for i, image_id in reversed(list(enumerate(ids)))}
    unique_keys = [(keys or ids)[first[image_id]] for image_id in unique_ids]
    if not unique_ids:
        raise BuildError([f"split {split}: the id list is empty"])
    num_shards = num_shards or default_shards(len(unique_ids))
    if not 1 <= num_shards <= len(unique_ids):
        raise BuildError([f"--num-shards {num_shards}: must be between 1 and the number of ids ({len(unique_ids)})"])

    check_writable_dir(out, "--out")
    created = not os.path.isdir(out)
    os.makedirs(out, exist_ok=True)
    final = [os.path.join(out, records.shard_name(split, i, num_shards)) for i in range(num_shards)]
    tmp = [temp_name(f) for f in final]
    import tensorflow as tf  # only the parent writes records

    writers = [None] * num_shards
    counts = [0] * num_shards
    skipped, have_sal, have_mask, written = [], 0, 0, 0
    load = functools.partial(load or functools.partial(load_item, root), role=role)
    ctx = multiprocessing.get_context("spawn")  # no fork of a process that holds TensorFlow
    try:
        with ProcessPoolExecutor(max_workers=workers or os.cpu_count(), mp_context=ctx) as pool:
            results = pool.map(load, unique_keys, chunksize=8)
            for position, item in enumerate(tqdm(results, total=len(unique_ids), disable=not progress,
                                                 desc=f"build {split}", unit="img")):
                if item.get("skip"):   # left out by the source's rule (e.g. COCO, no annotations)
                    skipped.append({"id": item["id"], "reasons": [item["skip"]]})
                    continue
                if item["problems"]:
                    problems.extend(item["problems"])
                    skipped.append({"id": item["id"], "reasons": item["problems"]})
                    continue
                if problems and not skip_bad:
                    continue  # keep scanning to report everything, but write nothing more
                shard = _shard_of(position, len(unique_ids), num_shards)
                if writers[shard] is None:
                    writers[shard] = tf.io.TFRecordWriter(tmp[shard])
                writers[shard].write(records.make_example(
                    item["id"], item["jpeg"], item["height"], item["width"], item["tags"],
                    item["saliency_png"] or b"", item["mask_png"] or b"", num_tags=len(class_names) - 1))
                counts[shard] += 1
                written += 1
                have_sal += item["saliency_png"] is not None
                have_mask += item["mask_png"] is not None
        for w in writers:
            if w is not None:
                w.close()
        if problems and not skip_bad:
            raise BuildError(problems)
        if written == 0:
            raise BuildError(problems + [f"split {split}: no usable examples"])
        for i, w in enumerate(writers):
            if w is None:  # every item of this shard was skipped: still write the file
                tf.io.TFRecordWriter(tmp[i]).close()
        shards = [{"file": os.path.basename(f), "num_examples": counts[i], "bytes": os.path.getsize(tmp[i]),
                   "sha256": records.sha256_file(tmp[i])}
                  for i, f in enumerate(final)]
    except BaseException:
        for w in writers:
            if w is not None:
                w.close()
        for t in tmp:
            if os.path.exists(t):
                os.remove(t)
        if created and not os.listdir(out):   # nothing of a failed build is left behind
            os.rmdir(out)
        raise

    manifest = {
        "schema_version": records.SCHEMA_VERSION, "split": split, "role": role,
        "num_examples": written, "num_shards": num_shards, "shards": shards,
        "class_names": list(class_names),
        "has_saliency": written > 0 and have_sal == written,
        "has_mask": written > 0 and have_mask == written,
        "source_root": os.path.abspath(root), "skipped": len(skipped),
    }
    old = records.manifest_path(out, split)
    stale = []
    if os.path.isfile(old):
        try:
            stale = [s["file"] for s in json.load(open(old))["shards"]]
        except (ValueError, KeyError):
            stale = []
    for t, f in zip(tmp, final):
        publish(t, f)          # fsync, rename, fsync the directory
    if skipped:
        write_json(os.path.join(out, f"{split}.skipped.json"), {"split": split, "skipped": skipped})
    write_json(records.manifest_path(out, split), manifest)
    for name in set(stale) - {os.path.basename(f) for f in final}:
        path = os.path.join(out, name)
        if os.path.exists(path):
            os.remove(path)
    return manifest


class BuildError(Exception):
    def __init__(self, problems: list[str]):
        super().__init__(f"{len(problems)} problem(s)")
        self.problems = problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_tools.build", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_argument_group("source: a VOC-layout root with an id list, or a tag list with its classes")
    source.add_argument("--root", help="VOC-layout directory (JPEGImages/ ...)")
    source.add_argument("--split-list", help="with --root: file with one image id per line")
    source.add_argument("--tag-list", help="tags.tsv: image path<TAB>class,class[<TAB>mask path[<TAB>saliency path]] "
                                           "per line, paths relative to the file's folder")
    source.add_argument("--classes", help="with --tag-list: classes.txt, one object class per line (background is 0)")
    source.add_argument("--coco-annotations", help="COCO instances JSON (e.g. annotations/instances_train2014.json)")
    source.add_argument("--images", help="with --coco-annotations: the folder of the file's images")
    parser.add_argument("--saliency-dir", help="<image file stem>.png or .npz saliency maps, for any source "
                                               "(VOC layout default: <root>/Saliency)")
    parser.add_argument("--split", help="split name for the output files (default: list file's stem)")
    parser.add_argument("--out", required=True, help="output directory for shards + manifest")
    parser.add_argument("--role", choices=ROLES, help="what the split needs (default from its name)")
    parser.add_argument("--num-shards", type=int, default=None,
                        help=f"shard files (default: min({DEFAULT_SHARDS}, number of images); 256 per started "
                             f"65,536 images for splits of {LARGE_SPLIT} or more)")
    parser.add_argument("--skip-bad", action="store_true",
                        help="write the good items and <split>.skipped.json instead of failing")
    parser.add_argument("--workers", type=int, default=None, help="parallel readers (default: cores)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if sum(map(bool, (args.tag_list, args.root, args.coco_annotations))) != 1:
        parser.error("give one source: --root with --split-list (VOC layout), --tag-list with --classes, "
                     "or --coco-annotations with --images")
    for flag, value, owner, given in (("--split-list", args.split_list, "--root", args.root),
                                      ("--classes", args.classes, "--tag-list", args.tag_list),
                                      ("--images", args.images, "--coco-annotations", args.coco_annotations)):
        if value and not given:
            parser.error(f"{flag} goes with {owner}, which was not given")
    if args.saliency_dir and not os.path.isdir(args.saliency_dir):
        print(f"error: --saliency-dir {args.saliency_dir}: no such directory", file=sys.stderr)
        return 2
    if args.coco_annotations:
        from data_tools.coco import CocoError, load_coco_item, read_coco
        if not args.split:
            parser.error("--coco-annotations needs --split (e.g. train or val)")
        if not args.images or not os.path.isdir(args.images):
            why = f"; {args.images} is not a directory" if args.images else ""
            parser.error(f"--coco-annotations needs --images DIR (the folder of its images){why}")
        try:
            class_names, keys = read_coco(args.coco_annotations)
        except CocoError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        ids = [os.path.splitext(k["file_name"])[0] for k in keys]
        source = dict(class_names=class_names, keys=keys,
                      load=functools.partial(load_coco_item, os.path.abspath(args.images),
                                             saliency_dir=args.saliency_dir, num_classes=len(class_names)))
        list_file = args.coco_annotations
    elif args.tag_list:
        if not args.classes:
            parser.error("--tag-list needs --classes")
        try:
            class_names = read_class_list(args.classes)
            lines = read_tag_list(args.tag_list)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        base = os.path.dirname(os.path.abspath(args.tag_list))
        ids = [os.path.splitext(os.path.basename(fields[0]))[0] for fields in lines]
        source = dict(class_names=class_names, keys=lines,
                      load=functools.partial(load_tag_item, base, class_names=class_names,
                                             saliency_dir=args.saliency_dir))
        list_file = args.tag_list
    else:
        problem = check_root_and_list(args.root, args.split_list or "")
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            return 2
        ids, list_file = read_id_list(args.split_list), args.split_list
        source = {"load": functools.partial(load_item, args.root, saliency_dir=args.saliency_dir)} \
            if args.saliency_dir else {}
    split = args.split or os.path.splitext(os.path.basename(list_file))[0]
    try:
        manifest = build(args.root or args.images or os.path.dirname(os.path.abspath(list_file)), ids, split, args.out, args.role,
                         args.num_shards, args.skip_bad, args.workers, progress=not args.quiet, **source)
    except BuildError as exc:
        for line in exc.problems:
            print(f"bad: {line}", file=sys.stderr)
        print(f"error: {len(exc.problems)} problem(s) in split {split}; nothing written "
              f"(use --skip-bad to write the good items)", file=sys.stderr)
        return 1
    except ValueError as exc:   # an --out that cannot be written
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:      # e.g. a full disk while writing: the earlier records stay as they were
        print(f"error: writing split {split} to {args.out} failed: {exc}; nothing was replaced", file=sys.stderr)
        return 1
    print(f"wrote {manifest['num_examples']} examples of split {split} in {manifest['num_shards']} shards "
          f"to {args.out} (saliency: {manifest['has_saliency']}, masks: {manifest['has_mask']}, "
          f"skipped: {manifest['skipped']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
