"""What ``dcsp_dist.evaluate`` and ``dcsp_dist.predict`` share: their arguments, the two
sources of images (record shards, a folder of photos) behind one small interface
(``examples``, ``num_images``, ``total``, ``class_names``, ``damaged``, ``unreadable``), the
per-rank job checked before any work, and the entry point.

TensorFlow is imported inside the functions: evaluate/predict import this module at the
top, and their CRF worker processes (spawned) must start without loading TensorFlow.
"""
from __future__ import annotations

import os

import numpy as np

from dcsp_dist.core import preemption
from dcsp_dist.core.atomic import check_replaceable, check_writable_dir
from dcsp_dist.core.errors import UserError, first_line
from dcsp_dist.data import records
from dcsp_dist.data.images import BadImage, list_images, read_rgb
from dcsp_dist.inference import crf_pool
from dcsp_dist.inference.settings import InferenceSettings


def add_job_arguments(parser, default_split: str, data_required: bool = True, many_checkpoints: bool = False) -> None:
    """Arguments shared by ``dcsp_dist.evaluate`` and ``dcsp_dist.predict``."""
    if many_checkpoints:
        parser.add_argument("--checkpoint", required=True, action="append",
                            help="run directory, stage directory or checkpoint prefix; repeat it to evaluate "
                                 "several models in one launch, one after the other")
    else:
        parser.add_argument("--checkpoint", required=True, help="run directory, stage directory or checkpoint prefix")
    parser.add_argument("--data", required=data_required, help="TFRecords directory")
    parser.add_argument("--split", default=default_split)
    parser.add_argument("--no-crf", action="store_true", help="argmax of the network's probabilities")
    parser.add_argument("--scales", default=None, help="comma-separated, first is 1 (default: the run's eval_scales)")
    parser.add_argument("--window", choices=("image", "crop"), default=None,
                        help="run the network on the whole image or on crop-size windows "
                             "(default: the run's inference_window)")
    parser.add_argument("--crf-workers", type=int, default=None,
                        help="CRF worker processes per rank, overlapped with the network (0: sequential; "
                             "default: this rank's share of the node's cores, at least 1)")
    parser.add_argument("--config", default=None, help="preset, only if the checkpoint has no config.json")
    parser.add_argument("--threads", type=int, default=None, help="TensorFlow threads per rank")
    parser.add_argument("--horovod-timeline", metavar="FILE", help="write Horovod's timeline (a Chrome trace of every "
                        "collective) to FILE; open it in chrome://tracing or ui.perfetto.dev")
    parser.add_argument("--verify-data", action="store_true",
                        help="check every shard's sha256 and record count first (default: existence and size)")


def check_output(out_dir: str | None, marker: str) -> None:
    """Refused before hours of inference, not after: an output directory that cannot be written
    or replaced."""
    if out_dir is not None:
        check_writable_dir(out_dir, "--out")
        check_replaceable(out_dir, marker)


class RecordSource:
    """This rank's shards of a split of records, checked (on every rank) before any work."""

    def __init__(self, data_dir: str, split: str, ctx, need_mask: bool, verify: bool = False):
        from dcsp_dist import distributed
        from dcsp_dist.data import pipeline
        self.data_dir, self.split = data_dir, split
        self.manifest = records.read_manifest(data_dir, split)
        self.files = records.files_for_rank(records.shard_files(data_dir, self.manifest), ctx.rank, ctx.size,
                                            what=f"{data_dir} split {split}")
        distributed.check_on_every_rank(
            lambda: records.check_shards(data_dir, self.manifest, self.files, deep=verify), records.DataError)
        # Built first (lazily, no I/O yet) so that a split without masks fails before the model loads.
        self.examples = pipeline.make_inference_dataset(data_dir, split, files=self.files, need_mask=need_mask)
        self.total = self.manifest["num_examples"]
        self.num_images = sum(s["num_examples"] for s in self.manifest["shards"]
                              if os.path.join(data_dir, s["file"]) in self.files)
        self.unreadable: list[str] = []
        self.layout = "voc" if self.manifest.get("source", "voc") == "voc" else "plain"

    def class_names(self, loaded) -> list[str]:
        """The records' classes, which must be as many as the model's."""
        names = self.manifest["class_names"]
        if loaded.cfg.model.num_classes != len(names):
            raise UserError(f"--checkpoint {loaded.checkpoint} has {loaded.cfg.model.num_classes} classes, "
                            f"{self.split} records have {len(names)}")
        return names

    def damaged(self, exc) -> records.DataError:
        """The one-line error for damaged records met while reading them."""
        return records.DataError(records.damaged_shard_message(self.data_dir, self.manifest, self.files, exc))


class PhotoSource:
    """``predict --images``: a folder of photos, shared over the ranks by file. A photo that
    does not decode is named (``unreadable``) and the rest are done."""

    def __init__(self, folder: str, list_file: str | None, ctx):
        self.folder = folder
        images = list_images(folder, list_file)
        self.mine = images[ctx.rank::ctx.size]
        self.total, self.num_images = len(images), len(self.mine)
        self.unreadable: list[str] = []
        self.layout = "plain"

    def class_names(self, loaded) -> list[str]:
        from dcsp_dist.inference.predictor import class_names_for
        return class_names_for(loaded.checkpoint, loaded.cfg)

    def damaged(self, exc) -> records.DataError:
        return records.DataError(f"--images {self.folder}: reading the photos failed ({first_line(exc)})")

    @property
    def examples(self):
        """This rank's photos as examples ({"id", "image"}); unreadable ones are recorded."""
        import tensorflow as tf

        for stem, path in self.mine:
            try:
                rgb = read_rgb(path)
            except BadImage as exc:
                self.unreadable.append(str(exc))
                continue
            yield {"id": tf.constant(stem), "image": tf.constant(rgb, tf.uint8)}


class Job:
    """A trained model over this rank's share of a source (records or photos), with the
    network/CRF overlap; everything is checked before any work."""

    def __init__(self, settings: InferenceSettings, source, ctx):
        self.settings, self.source = settings, source
        self.loaded = settings.load()
        self.cfg, self.crf = self.loaded.cfg, self.loaded.crf
        self.class_names = source.class_names(self.loaded)
        self.workers = (crf_pool.default_crf_workers(ctx.local_size) if settings.crf_workers is None
                        else settings.crf_workers)
        self.stopped = False

    @property
    def num_images(self) -> int:
        return self.source.num_images

    def results(self):
        """(example, label, network argmax) for this rank's images. Damaged input ends as one
        DataError naming the shard or folder."""
        import tensorflow as tf

        from dcsp_dist.inference.predictor import probability_fn_for
        probabilities = probability_fn_for(self.loaded.model, self.cfg, self.loaded.scales)
        try:
            for item in crf_pool.run_inference(probabilities, self.source.examples, self.crf, workers=self.workers):
                if preemption.requested():   # a signal: stop between images (``count_and_agree``)
                    self.stopped = True
                    return
                yield item
        except tf.errors.DataLossError as exc:
            raise self.source.damaged(exc) from None

    def count_and_agree(self, count: int) -> int:
        """The images done over all ranks; raises Preempted on every rank when any rank
        was signalled (nothing of the job is written then)."""
        from dcsp_dist import distributed
        total, stopped = distributed.allreduce_sum(np.array([count, int(self.stopped)], np.int64))
        if stopped:
            where = f"after {total} of {self.source.total} images"
            if distributed.context().is_chief:
                preemption.record(None, f"{where}; nothing written")   # $DCSP_PREEMPT_MARKER, when a batch script set it
            distributed.barrier()
            raise preemption.Preempted(f"preempted ({preemption.signal_name() or 'another rank was signalled'}) "
                                       f"{where}; nothing written; relaunch the same command to redo all of it")
        return int(total)


def main_for(job_fn, args) -> int:
    """Init Horovod, run ``job_fn(args, ctx)``; bad input ends as one clear line, exit 1."""
    from dcsp_dist import distributed
    preemption.install()
    ctx = distributed.init(intra_threads=args.threads, timeline=args.horovod_timeline)
    return distributed.run_or_report(lambda: job_fn(args, ctx))
