"""Build sharded TFRecords from a data source.

    python -m data_tools.build --root VOCdevkit/VOC2012 --split-list lists/train_aug.txt \
        --split train --out records/voc12

The sources are plugins (data_tools/sources/): VOC layout (--root with --split-list), a tag
list of your own classes (--tag-list with --classes), MS COCO (--coco-annotations with
--images; the rule is in data_tools/sources/coco.py). Writes
``<out>/<split>-00000-of-000NN.tfrecord`` and ``<out>/<split>.manifest.json``, in three steps:
plan (ids, shards), write the shards under temporary names, publish (rename, then the
manifest).

The split's role (from its name unless --role is given) decides what is required:
train needs tags and saliency, eval needs masks, test needs neither. Default shard count:
64 (so a 64-rank job still gets whole files), or one per example for smaller splits; splits
of 32,768 images or more get 256 per started 65,536 (COCO train2014: 512, val2014: 256).
Every bad item is reported (one line each) and nothing is written, unless --skip-bad.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import multiprocessing
import os
import re
import sys
from concurrent.futures import ProcessPoolExecutor

from data_tools.sources import ROLES, SOURCES, Source, SourceError, role_for_split
from dcsp_dist.core.atomic import check_writable_dir, publish, temp_name
from dcsp_dist.core.console import say
from dcsp_dist.core.progress import progress as progress_of
from dcsp_dist.data import records

DEFAULT_SHARDS = 64
LARGE_SPLIT = 32768


def default_shards(num_images: int) -> int:
    """64 files (whole files for up to 64 ranks) for splits under 32,768 images, or one per
    image when smaller; larger splits get 256 files per started 65,536 images (COCO 2014:
    train 82,783 -> 512 files, val 40,504 -> 256), so 256 ranks still read whole files."""
    if num_images < LARGE_SPLIT:
        return min(DEFAULT_SHARDS, num_images)
    return 256 * -(-num_images // 65536)


class BuildError(Exception):
    def __init__(self, problems: list[str]):
        super().__init__(f"{len(problems)} problem(s)")
        self.problems = problems


@dataclasses.dataclass
class Plan:
    """What a build will write: the split's unique ids with their source keys, its role and
    its shards."""
    split: str
    role: str
    ids: list
    keys: list
    num_shards: int
    problems: list

    def shard_of(self, position: int) -> int:
        return position * self.num_shards // len(self.ids)


@dataclasses.dataclass
class Written:
    """The shards one build wrote under temporary names, and what went into them."""
    tmp: list
    counts: list
    skipped: list
    have_saliency: int = 0
    have_mask: int = 0

    @property
    def total(self) -> int:
        return sum(self.counts)

    def kept(self, split: str) -> list:
        """``(temporary file, final name)`` of the shards that hold examples, numbered anew:
        items skipped after planning (unreadable, or left out by the source's rule) can
        empty a planned shard, and an empty shard is never published."""
        full = [t for t, n in zip(self.tmp, self.counts) if n]
        return [(t, records.shard_name(split, i, len(full))) for i, t in enumerate(full)]


def plan(ids: list, split: str, role: str | None, num_shards: int | None, keys: list | None = None,
         origin: str = "the id list") -> Plan:
    """Duplicate ids are problems (the first keeps its key), and so are ids that are not plain
    file names (they name ``<out>/<id>.png`` in predict; ``origin`` is the file they came
    from); the shard count must fit."""
    role = role or role_for_split(split)
    problems, seen, refused = [], set(), set()
    for image_id in ids:
        if image_id in seen:
            problems.append(f"{image_id}: duplicate id in the split list")
        why = records.id_problem(image_id)
        if why and image_id not in refused:
            problems.append(f"{origin}: id {image_id!r}: {why}")
            refused.add(image_id)
        seen.add(image_id)
    unique_ids = [i for i in dict.fromkeys(ids) if i not in refused]
    if not ids:
        raise BuildError([f"split {split}: the id list is empty"])
    first = {image_id: i for i, image_id in reversed(list(enumerate(ids)))}
    unique_keys = [(keys or ids)[first[image_id]] for image_id in unique_ids]
    if not unique_ids:
        raise BuildError(problems + [f"split {split}: no usable ids"])
    num_shards = num_shards or default_shards(len(unique_ids))
    if not 1 <= num_shards <= len(unique_ids):
        raise BuildError([f"--num-shards {num_shards}: must be between 1 and the number of ids ({len(unique_ids)})"])
    return Plan(split, role, unique_ids, unique_keys, num_shards, problems)


def write_shards(the_plan: Plan, source: Source, out: str, skip_bad: bool, workers: int | None,
                 progress: bool) -> Written:
    """Read every item in worker processes and write the shards under temporary names. Every
    bad item is collected; with any (and not ``skip_bad``) nothing more is written and
    BuildError lists them all. On any failure the temporary files are removed."""
    import tensorflow as tf  # only the parent writes records

    planned = [os.path.join(out, records.shard_name(the_plan.split, i, the_plan.num_shards))
               for i in range(the_plan.num_shards)]
    done = Written([temp_name(f) for f in planned], [0] * the_plan.num_shards, [])
    writers = [None] * the_plan.num_shards
    problems = the_plan.problems
    num_tags = len(source.class_names) - 1
    ctx = multiprocessing.get_context("spawn")  # no fork of a process that holds TensorFlow
    try:
        with ProcessPoolExecutor(max_workers=workers or os.cpu_count(), mp_context=ctx) as pool:
            results = pool.map(functools.partial(source.load, role=the_plan.role), the_plan.keys, chunksize=8)
            bar = progress_of(len(the_plan.ids), f"build {the_plan.split}", enabled=progress)
            for position, item in enumerate(results):
                bar.update()
                if item.get("skip"):   # left out by the source's rule (e.g. COCO, no annotations)
                    done.skipped.append({"id": item["id"], "reasons": [item["skip"]]})
                    continue
                if item["problems"]:
                    problems.extend(item["problems"])
                    done.skipped.append({"id": item["id"], "reasons": item["problems"]})
                    continue
                if problems and not skip_bad:
                    continue  # keep scanning to report everything, but write nothing more
                shard = the_plan.shard_of(position)
                if writers[shard] is None:
                    writers[shard] = tf.io.TFRecordWriter(done.tmp[shard])
                writers[shard].write(records.make_example(
                    item["id"], item["jpeg"], item["height"], item["width"], item["tags"],
                    item["saliency_png"] or b"", item["mask_png"] or b"", num_tags=num_tags))
                done.counts[shard] += 1
                done.have_saliency += item["saliency_png"] is not None
                done.have_mask += item["mask_png"] is not None
            bar.close()
        _close(writers)
        if problems and not skip_bad:
            raise BuildError(problems)
        if done.total == 0:
            raise BuildError(problems + [f"split {the_plan.split}: no usable examples"])
        if problems:
            say("\n".join(f"bad: {p} (skipped)" for p in problems), err=True)
    except BaseException:
        _close(writers)
        for t in done.tmp:
            if os.path.exists(t):
                os.remove(t)
        raise
    return done


def _close(writers) -> None:
    for w in writers:
        if w is not None:
            w.close()


def publish_split(the_plan: Plan, done: Written, out: str, source: Source) -> dict:
    """Rename the shards that hold examples into place (fsync'ed, numbered anew), then write
    the manifest, then remove the shards of an earlier build of the split that this one does
    not overwrite (only names of this split's shard pattern, inside ``out``)."""
    kept = done.kept(the_plan.split)
    shards = [{"file": name, "num_examples": n, "bytes": os.path.getsize(t), "sha256": records.sha256_file(t)}
              for (t, name), n in zip(kept, [n for n in done.counts if n])]
    manifest = {
        "schema_version": records.SCHEMA_VERSION, "split": the_plan.split, "role": the_plan.role,
        "num_examples": done.total, "num_shards": len(kept), "shards": shards,
        "class_names": list(source.class_names), "source": source.NAME,
        "has_saliency": done.have_saliency == done.total, "has_mask": done.have_mask == done.total,
        "source_root": os.path.abspath(source.root), "skipped": len(done.skipped),
    }
    stale = _earlier_shards(out, the_plan.split)
    # Everything that takes space is written first, under temporary names (the manifest too):
    # a full disk then fails before any shard of the split is replaced. Then only renames.
    staged = [(t, os.path.join(out, name)) for t, name in kept]
    try:
        if done.skipped:
            staged.append(_stage_json(os.path.join(out, f"{the_plan.split}.skipped.json"),
                                      {"split": the_plan.split, "skipped": done.skipped}))
        staged.append(_stage_json(records.manifest_path(out, the_plan.split), manifest))
    except OSError:
        _remove(done.tmp + [t for t, _ in staged])
        raise
    replaced = 0
    try:
        for tmp, path in staged:
            publish(tmp, path)                        # fsync, rename, fsync the directory
            replaced += tmp in done.tmp
    except OSError as exc:
        _remove(done.tmp + [t for t, _ in staged])
        if not replaced:
            raise
        raise PartialPublish(f"publishing split {the_plan.split} in {out} failed after {replaced} of {len(kept)} "
                             f"shards were replaced ({exc}); the split is incomplete: build it again") from None
    _remove(done.tmp)                                 # the planned shards that stayed empty
    for name in stale - {name for _, name in kept}:
        path = os.path.join(out, name)
        if os.path.exists(path):
            os.remove(path)
    return manifest


class PartialPublish(OSError):
    """Some shards of a split were replaced before publishing failed: the split must be rebuilt."""


def _stage_json(path: str, obj) -> tuple[str, str]:
    """``obj`` written in full to a temporary name beside ``path``; (temporary, path)."""
    tmp = temp_name(path)
    try:
        with open(tmp, "w") as fh:
            json.dump(obj, fh, indent=2)
    except OSError:
        _remove([tmp])
        raise
    return tmp, path


def _remove(paths) -> None:
    for path in paths:
        if os.path.exists(path):
            os.remove(path)


def _earlier_shards(out: str, split: str) -> set:
    """The shard names an earlier manifest of ``split`` lists that this build may remove:
    only plain names of this split's pattern (``<split>-NNNNN-of-NNNNN.tfrecord``), so a
    hand-edited or received manifest naming ``../x`` or ``/etc/x`` removes nothing outside."""
    pattern = re.compile(re.escape(split) + r"-\d{5}-of-\d{5}\.tfrecord")
    try:
        with open(records.manifest_path(out, split)) as fh:
            names = [s["file"] for s in json.load(fh)["shards"]]
    except (OSError, ValueError, KeyError, TypeError):
        return set()
    return {n for n in names if isinstance(n, str) and pattern.fullmatch(n)}


def build(source: Source, split: str, out: str, *, role: str | None = None, num_shards: int | None = None,
          skip_bad: bool = False, workers: int | None = None, progress: bool = True) -> dict:
    """Build one split of ``source`` (e.g. ``VocSource(root, ids)``) into ``out``: plan, write
    the shards, publish; returns the manifest. Raises BuildError listing every bad item."""
    the_plan = plan(source.ids, split, role, num_shards, source.keys, source.origin or "the id list")
    check_writable_dir(out, "--out")
    created = not os.path.isdir(out)
    os.makedirs(out, exist_ok=True)
    try:
        done = write_shards(the_plan, source, out, skip_bad, workers, progress)
    except BaseException:
        if created and not os.listdir(out):   # nothing of a failed build is left behind
            os.rmdir(out)
        raise
    return publish_split(the_plan, done, out, source)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m data_tools.build", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    for source in SOURCES:
        source.add_arguments(parser.add_argument_group(f"source: {source.TITLE}"))
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
    chosen = [s for s in SOURCES if s.given(args)]
    if len(chosen) != 1:
        parser.error("give one source: " + ", or ".join(s.TITLE.split(": ", 1)[1] for s in SOURCES))
    for source in SOURCES:
        for flag in source.COMPANIONS:
            if getattr(args, flag.lstrip("-").replace("-", "_")) and not source.given(args):
                parser.error(f"{flag} goes with {source.FLAG}, which was not given")
    return args, chosen[0]


def main(argv=None) -> int:
    args, kind = parse_args(argv)
    try:
        if args.saliency_dir and not os.path.isdir(args.saliency_dir):
            raise SourceError(f"--saliency-dir {args.saliency_dir}: no such directory")
        source = kind.from_args(args)
    except SourceError as exc:
        say(f"error: {exc}", err=True)
        return 2
    split = args.split or source.default_split
    try:
        manifest = build(source, split, args.out, role=args.role, num_shards=args.num_shards,
                         skip_bad=args.skip_bad, workers=args.workers, progress=not args.quiet)
    except BuildError as exc:
        for line in exc.problems:
            say(f"bad: {line}", err=True)
        say(f"error: {len(exc.problems)} problem(s) in split {split}; nothing written "
              f"(use --skip-bad to write the good items)", err=True)
        return 1
    except ValueError as exc:   # an --out that cannot be written
        say(f"error: {exc}", err=True)
        return 2
    except PartialPublish as exc:
        say(f"error: {exc}", err=True)
        return 1
    except OSError as exc:      # e.g. a full disk while writing: the earlier records stay as they were
        say(f"error: writing split {split} to {args.out} failed: {exc}; nothing was replaced", err=True)
        return 1
    say(f"wrote {manifest['num_examples']} examples of split {split} in {manifest['num_shards']} shards "
          f"to {args.out} (saliency: {manifest['has_saliency']}, masks: {manifest['has_mask']}, "
          f"skipped: {manifest['skipped']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
