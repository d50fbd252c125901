"""Multi-scale inference shared by the cues stage, evaluation and prediction (spec 4.2, 5)."""
from __future__ import annotations

# TensorFlow is imported inside the functions: evaluate/predict import this module at the
# top, and their CRF worker processes (spawned) must start without loading TensorFlow.


def windowed_outputs(model, x, key: str, window: int, stride: int = 8):
    """The network's ``key`` output [ceil(H/s), ceil(W/s), K] float32 for a preprocessed
    image ``x`` [H, W, 3], computed in ``window`` x ``window`` tiles, as training saw it.

    A network trained on crops has only ever seen inputs of the crop's size; on a larger
    image every output's receptive field holds context (and no padding) it never saw in
    training. Here the image is cut into windows of the crop's size, overlapping by about a
    third, each starting on a multiple of the stride (so a window's output j is the whole
    image's output origin/s + j, spec 7), the last one padded with 0 (the mean, as training
    pads) up to the window; the outputs of overlapping windows are averaged. An image
    smaller than the window is one window, padded as a training crop would be.
    """
    import tensorflow as tf

    cells = -(-window // stride)                                    # outputs per window side
    step = max(stride, (2 * window // 3) // stride * stride)
    size = tf.shape(x)[:2]

    def origins(n):
        last = tf.maximum((n - window + stride - 1) // stride * stride, 0)
        return tf.concat([tf.range(0, last, step), [last]], 0)

    rows, cols = origins(size[0]), origins(size[1])
    padded = tf.pad(x, [[0, rows[-1] + window - size[0]], [0, cols[-1] + window - size[1]], [0, 0]])
    corners = tf.reshape(tf.stack(tf.meshgrid(rows, cols, indexing="ij"), -1), [-1, 2])   # [N, 2]
    outputs = tf.map_fn(
        lambda o: tf.cast(model(tf.slice(padded, [o[0], o[1], 0], [window, window, 3])[None],
                                training=False)[key][0], tf.float32),
        corners, fn_output_signature=tf.float32, parallel_iterations=1)                   # [N, c, c, K]
    offsets = tf.stack(tf.meshgrid(tf.range(cells), tf.range(cells), indexing="ij"), -1)  # [c, c, 2]
    index = corners[:, None, None, :] // stride + offsets[None]                          # [N, c, c, 2]
    grid = tf.stack([rows[-1] // stride + cells, cols[-1] // stride + cells, tf.shape(outputs)[-1]])
    total = tf.scatter_nd(index, outputs, grid)
    count = tf.scatter_nd(index, tf.ones_like(outputs[..., :1]), tf.concat([grid[:2], [1]], 0))
    out_size = (size + stride - 1) // stride
    return (total / count)[:out_size[0], :out_size[1]]


def make_multiscale_fn(model, scales, key: str, stride: int = 8, space: str = "logits", window: int = 0):
    """A compiled fn: uint8 RGB image [H, W, 3] -> fused ``key`` output [H, W, K] float32.

    The network runs at each scale (the image resized with pixel-centre bilinear
    resizing); each smaller scale's output is brought onto the scale-1 output grid, the
    maps are fused by element-wise max, and the fused map is upsampled to the image size,
    all keeping output i on the pixel it is computed around (spec 7, ``geometry``).
    ``key`` is "attention" or "segmentation"; ``stride`` the network's output stride.
    ``space="probabilities"`` (segmentation only) returns the softmax of the fused map,
    taken on the output grid before the upsampling (``Config.upsample_space``).
    ``window > 0`` runs the network on windows of that size at every scale
    (``windowed_outputs``, ``Config.inference_window``); 0 on the whole image.
    """
    import tensorflow as tf

    from dcsp_dist import geometry
    from dcsp_dist.data import preprocess_image

    scales = tuple(float(s) for s in scales)

    @tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)], reduce_retracing=True)
    def fused(image):
        size = tf.shape(image)[:2]
        x = preprocess_image(image)
        reference, outputs = None, []
        for scale in scales:
            if scale == 1.0:
                scaled, ratio = x, None
            else:
                new = tf.cast(tf.math.ceil(tf.cast(size, tf.float32) * scale), tf.int32)
                scaled = tf.image.resize(x, new, method="bilinear")
                ratio = tf.cast(new, tf.float32) / tf.cast(size, tf.float32)        # exact, per axis
            if window:
                out = windowed_outputs(model, scaled, key, window, stride)          # [h_s, w_s, K]
            else:
                out = tf.cast(model(scaled[None], training=False)[key][0], tf.float32)
            if reference is None:
                reference = tf.shape(out)[:2]
            else:
                out = geometry.to_reference_grid(out, reference, ratio, stride)     # [h, w, K]
            outputs.append(out)
        maps = tf.reduce_max(tf.stack(outputs), axis=0)                              # [h, w, K]
        if space == "probabilities":
            maps = tf.nn.softmax(maps, axis=-1)
        return geometry.upsample(maps, size, stride)                                 # [H, W, K]

    return fused


def make_probability_fn(model, scales, stride: int = 8, space: str = "logits", window: int = 0):
    """A compiled fn: uint8 RGB image [H, W, 3] -> class probabilities [H, W, C] (spec 5):
    the fused segmentation logits upsampled then softmax (``space="logits"``, the authors'),
    or softmax on the output grid then upsampled (``space="probabilities"``); ``window``
    as ``make_multiscale_fn``."""
    import tensorflow as tf

    fused = make_multiscale_fn(model, scales, "segmentation", stride, space, window)
    if space == "probabilities":
        return fused

    @tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)], reduce_retracing=True)
    def probabilities(image):
        return tf.nn.softmax(fused(image), axis=-1)                 # [H, W, C]

    return probabilities


def load_for_inference(checkpoint: str, preset: str | None = None):
    """(model, cfg) from ``--checkpoint`` (run dir, stage dir or checkpoint prefix).

    The architecture comes from the config.json saved beside the checkpoint (else from
    ``preset``). Raises FileNotFoundError/ValueError with one clear line.
    """
    import os

    import tensorflow as tf

    from dcsp_dist import checkpoints
    from dcsp_dist import config as config_lib
    from dcsp_dist import workdir as layout
    from dcsp_dist.models import build_model

    prefix, config_path = layout.final_checkpoint(checkpoint)
    if os.path.isfile(config_path):
        cfg = config_lib.load_saved(config_path)
    elif preset:
        cfg = config_lib.make_config(preset)
    else:
        raise FileNotFoundError(f"--checkpoint {checkpoint}: no config.json beside {prefix}; pass --config PRESET")
    checkpoints.check(prefix)
    model = build_model(cfg)
    try:
        tf.train.Checkpoint(model=model).read(prefix).expect_partial().assert_existing_objects_matched()
    except (ValueError, AssertionError, tf.errors.OpError) as exc:
        raise ValueError(f"--checkpoint {prefix} does not fit a {cfg.num_classes}-class "
                         f"{cfg.name} model: {str(exc).splitlines()[0][:300]}") from None
    return model, cfg, prefix


def probability_fn_for(model, cfg, scales=None):
    """``make_probability_fn`` with a run's settings: its eval_scales (or ``scales``), output
    stride, ``upsample_space`` and ``inference_window``."""
    return make_probability_fn(model, cfg.eval_scales if scales is None else scales, cfg.output_stride,
                               cfg.upsample_space, cfg.inference_window_size)


def run_inference(probabilities, dataset, crf_params, workers: int = 1):
    """Yield (example, [H, W] uint8 label map, [H, W] uint8 network argmax) for every
    example of ``dataset`` (the label map is the CRF's, or the argmax without CRF).

    ``probabilities``: the compiled image -> [H, W, C] fn (``probability_fn_for``). The
    network runs here; the CPU-bound dense CRF of an image runs in a pool of
    ``workers`` processes while the network computes the next images (``workers=0``:
    inline, sequential). Labels come back in dataset order.
    """
    import collections
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from dcsp_dist.crf import crf_on_labels, dense_crf, select_labels

    if workers <= 0 or crf_params is None:
        for ex in dataset:
            probs = probabilities(ex["image"]).numpy()
            argmax = probs.argmax(-1).astype("uint8")
            yield ex, argmax if crf_params is None else dense_crf(ex["image"].numpy(), probs, crf_params), argmax
        return
    pending = collections.deque()
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        for ex in dataset:
            probs = probabilities(ex["image"]).numpy()
            # Only the labels that can matter travel to the worker, as [k, H, W] float32.
            labels, sub = select_labels(probs, crf_params.label_margin)
            future = pool.submit(crf_on_labels, ex["image"].numpy(), sub, labels, crf_params)
            pending.append((ex, future, probs.argmax(-1).astype("uint8")))
            while len(pending) > 2 * workers:   # bounded look-ahead keeps memory flat
                done_ex, future, argmax = pending.popleft()
                yield done_ex, future.result(), argmax
        while pending:
            done_ex, future, argmax = pending.popleft()
            yield done_ex, future.result(), argmax
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# ----------------------------------------------------------------------------- entry points
def add_job_arguments(parser, default_split: str) -> None:
    """Arguments shared by ``dcsp_dist.evaluate`` and ``dcsp_dist.predict``."""
    parser.add_argument("--checkpoint", required=True, help="run directory, stage directory or checkpoint prefix")
    parser.add_argument("--data", required=True, help="TFRecords directory")
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


def default_crf_workers(local_size: int) -> int:
    """CRF processes per rank: the rank's share of this node's cores.

    The CRF (~1 s of CPU per VOC image) outweighs the network's CPU work (small on a GPU,
    and on a CPU the network waits for the CRF anyway), so every core gets a CRF process.
    """
    from dcsp_dist.distributed import cores_per_rank
    return cores_per_rank(local_size)


def parse_scales(text: str | None, default) -> tuple:
    if text is None:
        return tuple(default)
    try:
        scales = tuple(float(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise ValueError(f"--scales {text!r}: expected numbers like 1,0.75,0.5") from None
    if not scales or scales[0] != 1.0 or min(scales) <= 0:
        raise ValueError(f"--scales {text!r}: the first scale must be 1 and all must be > 0")
    return scales


class Job:
    """What one rank needs to run inference over its shards, checked before any work."""

    def __init__(self, args, ctx, need_mask: bool, out_dir: str | None = None):
        import dataclasses
        import os

        from dcsp_dist import data, distributed, records
        from dcsp_dist.crf import CRFParams

        if out_dir is not None:   # before hours of inference, not after
            from dcsp_dist.workdir import check_writable_dir
            check_writable_dir(out_dir, "--out")
        if args.crf_workers is not None and args.crf_workers < 0:
            raise ValueError(f"--crf-workers {args.crf_workers}: expected 0 (sequential) or more")
        self.data_dir = args.data
        self.manifest = records.read_manifest(args.data, args.split)
        self.files = records.files_for_rank(records.shard_files(args.data, self.manifest), ctx.rank, ctx.size,
                                            what=f"{args.data} split {args.split}")
        distributed.check_on_every_rank(
            lambda: records.check_shards(args.data, self.manifest, self.files, deep=args.verify_data),
            records.DataError)
        # Built first (lazily, no I/O yet) so that a split without masks fails before the model loads.
        self.dataset = data.make_inference_dataset(args.data, args.split, files=self.files, need_mask=need_mask)
        self.model, self.cfg, self.checkpoint = load_for_inference(args.checkpoint, args.config)
        if self.cfg.num_classes != len(self.manifest["class_names"]):
            raise ValueError(f"--checkpoint {self.checkpoint} has {self.cfg.num_classes} classes, {args.split} "
                             f"records have {len(self.manifest['class_names'])}")
        self.scales = parse_scales(args.scales, self.cfg.eval_scales)
        if args.window is not None:
            self.cfg = dataclasses.replace(self.cfg, inference_window=args.window)
        self.num_images = sum(s["num_examples"] for s in self.manifest["shards"]
                              if os.path.join(args.data, s["file"]) in self.files)
        self.crf = None if args.no_crf else CRFParams.from_config(self.cfg)
        self.workers = default_crf_workers(ctx.local_size) if args.crf_workers is None else args.crf_workers

    def results(self):
        """(example, label, network argmax) for this rank's images, with the network/CRF
        overlap. Damaged records end as one DataError naming the shard."""
        import tensorflow as tf

        from dcsp_dist import records
        try:
            yield from run_inference(probability_fn_for(self.model, self.cfg, self.scales), self.dataset, self.crf,
                                     workers=self.workers)
        except tf.errors.DataLossError as exc:
            raise records.DataError(records.damaged_shard_message(self.data_dir, self.manifest, self.files, exc)) from None


def main_for(job_fn, args) -> int:
    """Init Horovod, run ``job_fn(args, ctx)``; bad input ends as one clear line, exit 1."""
    from dcsp_dist import distributed, records
    ctx = distributed.init(intra_threads=args.threads, timeline=args.horovod_timeline)
    return distributed.run_or_report(lambda: job_fn(args, ctx), (records.DataError, ValueError, OSError))
