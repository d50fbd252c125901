"""Build sharded TFRecords from a VOC-layout directory.

    python -m data_tools.build --root VOCdevkit/VOC2012 --split-list lists/train_aug.txt \
        --split train --out records/voc12

Reads JPEGImages/<id>.jpg (bytes kept as they are), tags from ClassCategories/<id>.txt or
Annotations/<id>.xml, saliency from Saliency/<id>.png or .npz (key ``actv``), masks from
SegmentationClassAug/<id>.png or SegmentationClass/<id>.png. Writes
``<out>/<split>-00000-of-000NN.tfrecord`` and ``<out>/<split>.manifest.json``.

The split's role (from its name unless --role is given) decides what is required:
train needs tags and saliency, eval needs masks, test needs neither. Default shard count:
64 (so a 64-rank job still gets whole files), or one per example for smaller splits.
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

from data_tools.sources import ROLES, check_root_and_list, load_item, read_id_list, role_for_split
from dcsp_dist import records
from dcsp_dist.voc import CLASS_NAMES
from dcsp_dist.workdir import check_writable_dir

DEFAULT_SHARDS = 64


def _shard_of(position: int, total: int, num_shards: int) -> int:
    return position * num_shards // total


def build(root: str, ids: list[str], split: str, out: str, role: str | None = None,
          num_shards: int | None = None, skip_bad: bool = False, workers: int | None = None,
          progress: bool = True) -> dict:
    """Build one split; returns the manifest. Raises BuildError listing every bad item."""
    role = role or role_for_split(split)
    problems: list[str] = []
    seen = set()
    for image_id in ids:
        if image_id in seen:
            problems.append(f"{image_id}: duplicate id in the split list")
        seen.add(image_id)
    unique_ids = list(dict.fromkeys(ids))
    if not unique_ids:
        raise BuildError([f"split {split}: the id list is empty"])
    num_shards = num_shards or min(DEFAULT_SHARDS, len(unique_ids))
    if not 1 <= num_shards <= len(unique_ids):
        raise BuildError([f"--num-shards {num_shards}: must be between 1 and the number of ids ({len(unique_ids)})"])

    check_writable_dir(out, "--out")
    created = not os.path.isdir(out)
    os.makedirs(out, exist_ok=True)
    final = [os.path.join(out, records.shard_name(split, i, num_shards)) for i in range(num_shards)]
    tmp = [f + f".tmp-{os.getpid()}" for f in final]
    import tensorflow as tf  # only the parent writes records

    writers = [None] * num_shards
    counts = [0] * num_shards
    skipped, have_sal, have_mask, written = [], 0, 0, 0
    load = functools.partial(load_item, root, role=role)
    ctx = multiprocessing.get_context("spawn")  # no fork of a process that holds TensorFlow
    try:
        with ProcessPoolExecutor(max_workers=workers or os.cpu_count(), mp_context=ctx) as pool:
            results = pool.map(load, unique_ids, chunksize=8)
            for position, item in enumerate(tqdm(results, total=len(unique_ids), disable=not progress,
                                                 desc=f"build {split}", unit="img")):
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
                    item["saliency_png"] or b"", item["mask_png"] or b""))
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
        "class_names": list(CLASS_NAMES),
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
        os.replace(t, f)
    if skipped:
        _write_json(os.path.join(out, f"{split}.skipped.json"), {"split": split, "skipped": skipped})
    _write_json(records.manifest_path(out, split), manifest)
    for name in set(stale) - {os.path.basename(f) for f in final}:
        path = os.path.join(out, name)
        if os.path.exists(path):
            os.remove(path)
    return manifest


def _write_json(path: str, obj) -> None:
    with open(path + ".tmp", "w") as fh:
        json.dump(obj, fh, indent=2)
    os.replace(path + ".tmp", path)


class BuildError(Exception):
    def __init__(self, problems: list[str]):
        super().__init__(f"{len(problems)} problem(s)")
        self.problems = problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_tools.build", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, help="VOC-layout directory (JPEGImages/ ...)")
    parser.add_argument("--split-list", required=True, help="file with one image id per line")
    parser.add_argument("--split", help="split name for the output files (default: list file's stem)")
    parser.add_argument("--out", required=True, help="output directory for shards + manifest")
    parser.add_argument("--role", choices=ROLES, help="what the split needs (default from its name)")
    parser.add_argument("--num-shards", type=int, default=None,
                        help=f"shard files (default: min({DEFAULT_SHARDS}, number of images))")
    parser.add_argument("--skip-bad", action="store_true",
                        help="write the good items and <split>.skipped.json instead of failing")
    parser.add_argument("--workers", type=int, default=None, help="parallel readers (default: cores)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    problem = check_root_and_list(args.root, args.split_list)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    split = args.split or os.path.splitext(os.path.basename(args.split_list))[0]
    try:
        manifest = build(args.root, read_id_list(args.split_list), split, args.out, args.role,
                         args.num_shards, args.skip_bad, args.workers, progress=not args.quiet)
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
