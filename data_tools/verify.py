"""Check a records directory against its manifests.

    python -m data_tools.verify records/voc12 [--split train]

Reads every shard, checks example counts and sha256 against the manifest, decodes every
image, saliency map and mask and checks that their sizes agree with the recorded
height/width. Exits non-zero with one line per problem.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from dcsp_dist.core.console import say


def verify_split(directory: str, split: str) -> tuple[int, list[str]]:
    """(examples checked, problems) for one split."""
    from dcsp_dist.data import records

    try:
        manifest = records.read_manifest(directory, split, check_files=False)
    except records.DataError as exc:
        return 0, [str(exc)]
    problems: list[str] = []
    total = sum(_verify_shard(directory, shard, manifest, problems) for shard in manifest["shards"])
    if total != manifest["num_examples"]:
        problems.append(f"split {split}: {total} examples, manifest says {manifest['num_examples']}")
    return total, problems


def _verify_shard(directory: str, shard: dict, manifest: dict, problems: list) -> int:
    """Check one shard file against its manifest entry; returns the examples read."""
    import tensorflow as tf

    from dcsp_dist.data import records
    path = os.path.join(directory, shard["file"])
    if not os.path.isfile(path):
        problems.append(f"{path}: missing")
        return 0
    if records.sha256_file(path) != shard["sha256"]:
        problems.append(f"{path}: sha256 differs from the manifest")
    spec, count = records.feature_spec(records.num_tags(manifest)), 0
    try:
        for serialized in tf.data.TFRecordDataset(path):
            count += 1
            problems.extend(f"{path}: {line}" for line in _example_problems(tf.io.parse_single_example(serialized, spec),
                                                                             manifest))
    except tf.errors.DataLossError as exc:
        problems.append(f"{path}: corrupt TFRecord ({exc.message})")
    if count != shard["num_examples"]:
        problems.append(f"{path}: {count} examples, manifest says {shard['num_examples']}")
    return count


def _example_problems(ex, manifest: dict) -> list[str]:
    """What is wrong with one parsed example: image, tags, saliency and mask against the
    recorded size and the manifest's class count."""
    import tensorflow as tf

    from dcsp_dist.data import records
    image_id = ex["id"].numpy().decode()
    h, w = int(ex["image/height"]), int(ex["image/width"])
    try:
        image = tf.io.decode_jpeg(ex["image/encoded"], channels=3)
    except tf.errors.InvalidArgumentError as exc:
        return [f"{image_id}: image does not decode ({exc.message})"]
    out = []
    if tuple(image.shape[:2]) != (h, w):
        out.append(f"{image_id}: image is {image.shape[1]}x{image.shape[0]}, record says {w}x{h}")
    tags, num_tags = ex["tags/ids"].values.numpy(), records.num_tags(manifest)
    if tags.size and (tags.min() < 1 or tags.max() > num_tags):
        out.append(f"{image_id}: tag ids {tags.tolist()} outside 1..{num_tags}")
    if sorted(np.flatnonzero(ex["tags/multi_hot"].numpy()) + 1) != sorted(tags.tolist()):
        out.append(f"{image_id}: multi-hot tags disagree with tag ids")
    for key, present in (("saliency", manifest["has_saliency"]), ("mask", manifest["has_mask"])):
        data = ex[f"{key}/encoded"].numpy()
        if not present:
            continue
        if not data:
            out.append(f"{image_id}: no {key}, the manifest says the split has them")
            continue
        try:
            m = tf.io.decode_png(data)
        except tf.errors.InvalidArgumentError as exc:
            out.append(f"{image_id}: {key} does not decode ({exc.message})")
            continue
        if tuple(m.shape[:2]) != (h, w):
            out.append(f"{image_id}: {key} is {m.shape[1]}x{m.shape[0]}, image is {w}x{h}")
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_tools.verify", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("directory")
    parser.add_argument("--split", action="append", help="split(s) to check (default: every manifest)")
    args = parser.parse_args(argv)
    if not os.path.isdir(args.directory):
        say(f"error: {args.directory}: no such directory", err=True)
        return 2
    splits = args.split or sorted(f[: -len(".manifest.json")] for f in os.listdir(args.directory)
                                  if f.endswith(".manifest.json"))
    if not splits:
        say(f"error: {args.directory}: no <split>.manifest.json found", err=True)
        return 1
    failed = False
    for split in splits:
        count, problems = verify_split(args.directory, split)
        for p in problems:
            say(f"problem: {p}", err=True)
        status = "OK" if not problems else f"{len(problems)} problem(s)"
        say(f"{split}: {count} examples checked, {status}")
        failed |= bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
