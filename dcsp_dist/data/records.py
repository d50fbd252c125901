"""The TFRecord schema shared by data_tools (writer) and the input pipeline (reader).

One split = ``<split>-00000-of-000NN.tfrecord`` shards + ``<split>.manifest.json``.
Per example: id, the JPEG bytes as on disk, height, width, tags (ids + a multi-hot over the
manifest's object classes, ``num_tags(manifest)``),
saliency as a uint8 PNG and the class-index mask as a PNG (empty bytes when absent).
Cue shards written by training (``<split>-0000i-of-000NN.cues.tfrecord``) hold the same
ids in the same order, one cue shard per image shard.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Iterable

from dcsp_dist.core import atomic
from dcsp_dist.core.errors import UserError, first_line
from dcsp_dist.rundir import layout

SCHEMA_VERSION = 1
# In masks and cues, 255 marks pixels that no loss or metric counts (docs/method.md §1); class ids are 0..254.
IGNORE_LABEL = 255
# PASCAL VOC's classes; index = class id, 0 is background (docs/method.md §1).
VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")


def shard_name(split: str, index: int, count: int, suffix: str = "tfrecord") -> str:
    return f"{split}-{index:05d}-of-{count:05d}.{suffix}"


def id_problem(image_id: str) -> str | None:
    """Why ``image_id`` cannot name an output file (``<out>/<id>.png``), or None. An id is a
    plain file name: not empty, not ``.`` or ``..``, no ``/`` or ``\\``, no control characters."""
    if not image_id or image_id in (".", ".."):
        return "an id must be a plain file name (not empty, '.' or '..')"
    if "/" in image_id or "\\" in image_id:
        return "an id must be a plain file name, without '/' or '\\' (it names <out>/<id>.png)"
    if any(ord(c) < 32 for c in image_id):
        return "an id must not hold control characters"
    return None


def records_digest(manifest: dict) -> str:
    """16 hex digits over a split's shard sha256s: what a stage's outputs were made from."""
    return hashlib.sha256("\n".join(s["sha256"] for s in manifest["shards"]).encode()).hexdigest()[:16]


def manifest_path(directory: str, split: str) -> str:
    return os.path.join(directory, f"{split}.manifest.json")


def sha256_file(path: str) -> str:
    return atomic.file_digest(path)


def multi_hot(tag_ids: Iterable[int], num_tags: int) -> list[float]:
    """Class ids 1..num_tags -> a multi-hot vector of length num_tags (background excluded)."""
    vec = [0.0] * num_tags
    for t in tag_ids:
        vec[t - 1] = 1.0
    return vec


def make_example(image_id: str, jpeg: bytes, height: int, width: int, tags: list[int],
                 saliency_png: bytes = b"", mask_png: bytes = b"", *, num_tags: int):
    """A serialized tf.train.Example of schema SCHEMA_VERSION."""
    import tensorflow as tf

    def b(v):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))

    def i(v):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=list(v)))

    feature = {
        "id": b(image_id.encode()),
        "image/encoded": b(jpeg),
        "image/height": i([height]),
        "image/width": i([width]),
        "tags/ids": i(tags),
        "tags/multi_hot": tf.train.Feature(float_list=tf.train.FloatList(value=multi_hot(tags, num_tags))),
        "saliency/encoded": b(saliency_png),
        "mask/encoded": b(mask_png),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString(deterministic=True)


def feature_spec(num_tags: int):
    """The record schema; ``num_tags`` = the manifest's class count - 1 (background)."""
    import tensorflow as tf
    return {
        "id": tf.io.FixedLenFeature([], tf.string),
        "image/encoded": tf.io.FixedLenFeature([], tf.string),
        "image/height": tf.io.FixedLenFeature([], tf.int64),
        "image/width": tf.io.FixedLenFeature([], tf.int64),
        "tags/ids": tf.io.VarLenFeature(tf.int64),
        "tags/multi_hot": tf.io.FixedLenFeature([num_tags], tf.float32),
        "saliency/encoded": tf.io.FixedLenFeature([], tf.string, default_value=b""),
        "mask/encoded": tf.io.FixedLenFeature([], tf.string, default_value=b""),
    }


def make_cue_example(image_id: bytes, cue_png: bytes):
    import tensorflow as tf
    feature = {"id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image_id])),
               "cue/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[cue_png]))}
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString(deterministic=True)


def cue_feature_spec():
    import tensorflow as tf
    return {"id": tf.io.FixedLenFeature([], tf.string),
            "cue/encoded": tf.io.FixedLenFeature([], tf.string)}


class DataError(UserError):
    """Missing or inconsistent records; the message is one line naming the culprit."""


def read_manifest(directory: str, split: str, check_files: bool = True) -> dict:
    """The split's manifest, with a DataError when it or its shards are missing."""
    path = manifest_path(directory, split)
    if not os.path.isfile(path):
        have = sorted(f[: -len(".manifest.json")] for f in os.listdir(directory)
                      if f.endswith(".manifest.json")) if os.path.isdir(directory) else []
        raise DataError(f"{path} not found (splits in {directory}: {have or 'none'}); "
                        f"build records with: python -m data_tools.build")
    try:
        with open(path) as fh:
            manifest = json.load(fh)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path} is not valid JSON: {exc}") from None
    if not _well_formed(manifest):
        raise DataError(f"{path} is not a dcsp_dist manifest (expected schema_version, num_examples, "
                        f"class_names and shards of file/num_examples/sha256); rebuild the records")
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise DataError(f"{path}: schema version {manifest.get('schema_version')}, "
                        f"this dcsp_dist reads {SCHEMA_VERSION}; rebuild the records")
    if check_files:
        for shard in manifest["shards"]:
            f = os.path.join(directory, shard["file"])
            if not os.path.isfile(f):
                raise DataError(f"{f} listed in {path} is missing")
    return manifest


def _well_formed(manifest) -> bool:
    """The shape every reader relies on (valid JSON is not enough)."""
    if not isinstance(manifest, dict) or not isinstance(manifest.get("shards"), list):
        return False
    if not isinstance(manifest.get("num_examples"), int) or not isinstance(manifest.get("class_names"), list):
        return False
    return all(isinstance(s, dict) and isinstance(s.get("file"), str) and isinstance(s.get("num_examples"), int)
               and isinstance(s.get("sha256"), str) for s in manifest["shards"])


def num_tags(manifest: dict) -> int:
    """Tag vector length of a split: its classes minus background."""
    return len(manifest["class_names"]) - 1


def check_same_classes(directory: str, first: str, second: str) -> None:
    """DataError unless two splits' manifests list the same classes in the same order."""
    a, b = read_manifest(directory, first, check_files=False), read_manifest(directory, second, check_files=False)
    if a["class_names"] != b["class_names"]:
        raise DataError(f"{manifest_path(directory, first)} and {manifest_path(directory, second)} list different "
                        f"classes ({len(a['class_names'])}: {', '.join(a['class_names'][:4])}... vs "
                        f"{len(b['class_names'])}: {', '.join(b['class_names'][:4])}...); build both from one class list")


def shard_files(directory: str, manifest: dict) -> list[str]:
    return [os.path.join(directory, s["file"]) for s in manifest["shards"]]


def files_for_rank(files: list[str], rank: int, size: int, what: str = "records") -> list[str]:
    """This rank's whole files, ``files[rank::size]``; an error if some rank would get none."""
    if len(files) < size:
        raise DataError(f"{what}: {len(files)} shard files for {size} ranks; every rank needs at "
                        f"least one whole file (rebuild with --num-shards >= {size})")
    return files[rank::size]


UNEVEN_WARN = 1.10      # records per rank, fullest over emptiest, above which check_balance warns


def check_balance(directory: str, manifest: dict, size: int, log) -> None:
    """Before any step: an empty shard, or a rank whose shards hold no records (it would
    wait forever for a batch while the others wait for it), is an error; uneven records
    per rank (those ranks see their images more often) are reported with the
    ``--num-shards`` that would even them when the fullest rank holds over ``UNEVEN_WARN``
    times the records of the emptiest (a split of 45 records over 2 ranks, 22 and 23, is even
    enough: its images are seen 4.5 % more often, less than what shuffling varies)."""
    files = shard_files(directory, manifest)
    by_path = _shards_by_path(directory, manifest)
    empty = [f for f in files if not by_path[f]["num_examples"]]
    if empty:
        raise DataError(f"{', '.join(empty)}: empty shard(s) in {manifest_path(directory, manifest['split'])}; "
                        f"rebuild the split with fewer --num-shards")
    per_rank = [sum(by_path[f]["num_examples"] for f in files[r::size]) for r in range(size)]
    if size > 1 and max(per_rank) > UNEVEN_WARN * min(per_rank):
        even = size * max(1, round(len(files) / size))
        log(f"warning: uneven records per rank over {size} ranks: min {min(per_rank)}, max {max(per_rank)} "
            f"({len(files)} shards of {min(by_path[f]['num_examples'] for f in files)}-"
            f"{max(by_path[f]['num_examples'] for f in files)} records); a rank with fewer sees its images more "
            f"often. Rebuild with --num-shards {even} (a multiple of {size}) to even them")


def check_cue_shards(cue_dir: str, files: list[str], stage: str) -> None:
    """This rank's cue shards against the cue stage's record of them (``cues.json``):
    each exists with the size and count written. A damaged one is named as a cue shard."""
    summary_path = layout.cue_summary_path(cue_dir)
    try:
        with open(summary_path) as fh:
            recorded = {s["file"]: s for s in json.load(fh).get("shards", [])}
    except (OSError, ValueError):
        return   # checked by the stage's done-marker; a run without the record has none
    fix = f"rerun --stage {stage} (delete {os.path.join(cue_dir, layout.DONE)} first)"
    for path in files:
        name = layout.cue_shard_name(path)
        entry, cue_path = recorded.get(name), os.path.join(cue_dir, name)
        if entry is None:
            continue
        if not os.path.isfile(cue_path):
            raise DataError(f"cue shard {cue_path} is missing; {fix}")
        size = os.path.getsize(cue_path)
        if size != entry["bytes"]:
            raise DataError(f"cue shard {cue_path} is {size} bytes, the cue stage wrote {entry['bytes']} "
                            f"(truncated or replaced); {fix}")


def _shards_by_path(directory: str, manifest: dict) -> dict:
    """Shard path (as ``shard_files`` gives it) -> its manifest entry."""
    return dict(zip(shard_files(directory, manifest), manifest["shards"]))


def check_shards(directory: str, manifest: dict, files: list[str], deep: bool = False) -> None:
    """This rank's shard files against the manifest, before any work.

    Always: each file exists and has the size the manifest records (cheap: one stat).
    With ``deep`` (``--verify-data``): also its sha256 and its record count (reads every byte).
    Raises DataError naming the file and telling the user to run data_tools.verify.
    """
    import tensorflow as tf
    by_path = _shards_by_path(directory, manifest)
    fix = f"run python -m data_tools.verify {directory} and rebuild the split"
    for path in files:
        shard = by_path[path]
        if not os.path.isfile(path):
            raise DataError(f"{path} listed in the manifest is missing; {fix}")
        size = os.path.getsize(path)
        if "bytes" in shard and size != shard["bytes"]:
            raise DataError(f"{path} is {size} bytes, the manifest says {shard['bytes']} (truncated or "
                            f"replaced); {fix}")
        if deep:
            if sha256_file(path) != shard["sha256"]:
                raise DataError(f"{path}: sha256 differs from the manifest (damaged); {fix}")
            try:
                count = sum(1 for _ in tf.data.TFRecordDataset(path))
            except tf.errors.DataLossError as exc:
                raise DataError(f"{path} is damaged ({first_line(exc, 120)}); {fix}") from None
            if count != shard["num_examples"]:
                raise DataError(f"{path} holds {count} records, the manifest says {shard['num_examples']}; {fix}")


def damaged_shard_message(directory: str, manifest: dict, files: list[str], error, cue_dir: str | None = None) -> str:
    """One line for a DataLossError met while reading ``files`` (and their cue shards in
    ``cue_dir``): which of them no longer matches the manifest (by sha256), what
    TensorFlow said, and what to run."""
    by_path = _shards_by_path(directory, manifest)
    culprits = [f for f in files if os.path.isfile(f) and sha256_file(f) != by_path[f]["sha256"]]
    where = ", ".join(culprits) if culprits else f"one of {', '.join(files)}"
    first = (str(getattr(error, "message", error)).strip().splitlines() or ["data loss"])[0][:160]
    if culprits or not cue_dir:
        return (f"damaged records in {where} ({first}); run python -m data_tools.verify {directory} "
                f"and rebuild the split")
    cues = [layout.cue_shard_path(cue_dir, f) for f in files]
    return (f"damaged records in one of the cue shards {', '.join(cues)} ({first}): the image shards match "
            f"their manifest; rerun --stage {os.path.basename(os.path.normpath(cue_dir))}")
