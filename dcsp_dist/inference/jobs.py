"""The command line shared by ``dcsp_dist.evaluate`` and ``dcsp_dist.predict``: their
arguments, the per-rank job checked before any work, and the entry point.

TensorFlow is imported inside the functions: evaluate/predict import this module at the
top, and their CRF worker processes (spawned) must start without loading TensorFlow.
"""
from __future__ import annotations

import os

import numpy as np

from dcsp_dist import config as config_lib
from dcsp_dist.core import preemption
from dcsp_dist.core.errors import UserError, first_line
from dcsp_dist.data import records
from dcsp_dist.data.images import BadImage, list_images, read_rgb
from dcsp_dist.inference import crf_pool


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


class Job:
    """What one rank needs to run inference over its shards, checked before any work."""

    def __init__(self, args, ctx, need_mask: bool, out_dir: str | None = None, marker: str = "results.json"):

        from dcsp_dist import distributed
        from dcsp_dist.data import pipeline

        self.check_arguments(args, out_dir, marker)
        self.data_dir = args.data
        self.manifest = records.read_manifest(args.data, args.split)
        self.files = records.files_for_rank(records.shard_files(args.data, self.manifest), ctx.rank, ctx.size,
                                            what=f"{args.data} split {args.split}")
        distributed.check_on_every_rank(
            lambda: records.check_shards(args.data, self.manifest, self.files, deep=args.verify_data),
            records.DataError)
        # Built first (lazily, no I/O yet) so that a split without masks fails before the model loads.
        self.dataset = pipeline.make_inference_dataset(args.data, args.split, files=self.files, need_mask=need_mask)
        self._load_model(args, ctx)
        if self.cfg.model.num_classes != len(self.manifest["class_names"]):
            raise UserError(f"--checkpoint {self.checkpoint} has {self.cfg.model.num_classes} classes, {args.split} "
                             f"records have {len(self.manifest['class_names'])}")
        self.num_images = sum(s["num_examples"] for s in self.manifest["shards"]
                              if os.path.join(args.data, s["file"]) in self.files)
        self.class_names = self.manifest["class_names"]

    @staticmethod
    def check_arguments(args, out_dir: str | None, marker: str) -> None:
        """What can be refused before any reading: the output directory and --crf-workers."""
        if out_dir is not None:   # before hours of inference, not after
            from dcsp_dist.core.atomic import check_replaceable, check_writable_dir
            check_writable_dir(out_dir, "--out")
            check_replaceable(out_dir, marker)
        if args.crf_workers is not None and args.crf_workers < 0:
            raise UserError(f"--crf-workers {args.crf_workers}: expected 0 (sequential) or more")

    def _load_model(self, args, ctx) -> None:
        """The trained model and the inference settings: the run's, or the flags'."""
        from dcsp_dist.inference.predictor import load_for_inference
        self.model, self.cfg, self.checkpoint = load_for_inference(args.checkpoint, args.config)
        self.scales = config_lib.parse_scales(args.scales, self.cfg.inference.eval_scales)
        if args.window is not None:
            self.cfg = self.cfg.replace(inference_window=args.window)
        self.crf = None if args.no_crf else self.cfg.crf
        self.stopped, self.unreadable = False, []
        self.workers = crf_pool.default_crf_workers(ctx.local_size) if args.crf_workers is None else args.crf_workers

    def results(self):
        """(example, label, network argmax) for this rank's images, with the network/CRF
        overlap. Damaged records end as one DataError naming the shard."""
        import tensorflow as tf

        from dcsp_dist.inference.predictor import probability_fn_for
        probabilities = probability_fn_for(self.model, self.cfg, self.scales)
        try:
            for item in crf_pool.run_inference(probabilities, self.dataset, self.crf, workers=self.workers):
                if preemption.requested():   # a signal: stop between images (``count_and_agree``)
                    self.stopped = True
                    return
                yield item
        except tf.errors.DataLossError as exc:
            raise self._damaged(exc) from None

    def _damaged(self, exc):
        """The one-line error for damaged input met during ``results``."""
        return records.DataError(records.damaged_shard_message(self.data_dir, self.manifest, self.files, exc))

    def count_and_agree(self, count: int) -> int:
        """The images done over all ranks; raises Preempted on every rank when any rank
        was signalled (nothing of the job is written then)."""

        from dcsp_dist import distributed
        total, stopped = distributed.allreduce_sum(np.array([count, int(self.stopped)], np.int64))
        if stopped:
            where = f"after {total} of {self.manifest['num_examples']} images"
            if distributed.context().is_chief:
                preemption.record(None, f"{where}; nothing written")   # $DCSP_PREEMPT_MARKER, when a batch script set it
            distributed.barrier()
            raise preemption.Preempted(f"preempted ({preemption.signal_name() or 'another rank was signalled'}) "
                                       f"{where}; nothing written; relaunch the same command to redo all of it")
        return int(total)


class ImageJob(Job):
    """``predict --images``: a folder of photos instead of records, shared over the ranks by
    file; the same model, scales, window and CRF as a record job. An image that does not
    decode is named (``unreadable``) and the rest are done."""

    def __init__(self, args, ctx, out_dir: str, marker: str):
        from dcsp_dist.inference.predictor import class_names_for
        self.check_arguments(args, out_dir, marker)
        self.images = args.images
        images = list_images(args.images, args.list)
        self.mine = images[ctx.rank::ctx.size]
        self.num_images = len(self.mine)
        self.manifest = {"num_examples": len(images)}
        self._load_model(args, ctx)
        self.class_names = class_names_for(self.checkpoint, self.cfg)

    def _damaged(self, exc):
        return records.DataError(f"--images {self.images}: reading the photos failed ({first_line(exc)})")

    @property
    def dataset(self):
        """This rank's images as examples ({"id", "image"}); unreadable ones are recorded."""
        import tensorflow as tf

        for stem, path in self.mine:
            try:
                rgb = read_rgb(path)
            except BadImage as exc:
                self.unreadable.append(str(exc))
                continue
            yield {"id": tf.constant(stem), "image": tf.constant(rgb, tf.uint8)}


def main_for(job_fn, args) -> int:
    """Init Horovod, run ``job_fn(args, ctx)``; bad input ends as one clear line, exit 1."""
    from dcsp_dist import distributed
    preemption.install()
    ctx = distributed.init(intra_threads=args.threads, timeline=args.horovod_timeline)
    return distributed.run_or_report(lambda: job_fn(args, ctx))
