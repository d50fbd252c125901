"""Hierarchical saliency (docs/method.md §6) with a pluggable detector; writes Saliency/<id>.png.

    python -m data_tools.saliency --root VOC2012 --split-list lists/train_aug.txt
    python -m data_tools.saliency --root VOC2012 --split-list ... --model dhsnet.keras
    python -m data_tools.saliency --images photos/ [--list photos.txt] --out-dir saliency/

The second form takes any folder of images (every .jpg/.jpeg/.png in it, or the paths in
--list, relative to --images) and writes <out-dir>/<image file stem>.png, which
``data_tools.build --saliency-dir`` reads for any source.

As the authors' gen_saliency_voc.py computes it: pass 1 runs the detector on the image
resized to the detector's input size (DHSNet's and the default: 224x224, aspect ratio not
kept) and resizes its map back to the image bicubically, giving s1. Pixels with s1 >= 0.7
are painted with the fixed dataset mean colour RGB (122.68, 116.67, 104.01), and pass 2 on
that painted image gives s2 (the most salient object hidden, the detector finds the next
ones). The result is max(s1, s2), s2 as it is. The same two passes apply to every detector.

Detectors: ``--model PATH`` (a Keras model file or a TensorFlow SavedModel directory taking
[1, H, W, 3] float32 RGB in 0..255, or 0..1 with ``--model-input unit``, returning a
[1, H, W(, 1)] map in [0, 1]; H x W is read from a Keras model's input shape, else
224x224), or a built-in one, which needs no model (``--detector``):
- ``mb-plus`` (default): minimum barrier distance with MB+'s backgroundness, smoothing,
  centre weight and contrast (Zhang et al., ICCV 2015; data_tools/saliency/mbplus.py);
- ``frequency-tuned``: R. Achanta, S. Hemami, F. Estrada, S. Suesstrunk, "Frequency-tuned
  Salient Region Detection", CVPR 2009 -- per pixel, the Lab distance between the
  Gaussian-blurred image and the image's mean Lab colour.
On real VOC photos MB+ finds about 1.5x the foreground of frequency-tuned (docs/benchmarks.md).
"""
from __future__ import annotations

import argparse
import functools
import json
import multiprocessing
import os
import socket
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from PIL import Image, ImageFilter

from dcsp_dist.core.errors import UserError
from dcsp_dist.core.placement import cores_per_rank

SIZE = (224, 224)                  # DHSNet's input (height, width); the default
FIRST_THRESHOLD = 0.7              # pass 1: s1 >= 0.7 is painted over
DATASET_MEAN_RGB = (122.68, 116.67, 104.01)   # the fixed VOC mean colour (Caffe mean, RGB)


# ----------------------------------------------------------------------------- detectors
def _rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB uint8/float [..., 3] -> CIE Lab (D65)."""
    c = rgb.astype(np.float64) / 255.0
    c = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    xyz = c @ np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]).T
    xyz /= np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16 / 116)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


def frequency_tuned(rgb: np.ndarray) -> np.ndarray:
    """Achanta et al. 2009: ||mean Lab - blurred Lab|| per pixel, scaled to [0, 1]."""
    blurred = np.asarray(Image.fromarray(rgb.astype(np.uint8)).filter(ImageFilter.GaussianBlur(1.5)))
    lab = _rgb_to_lab(blurred)
    sal = np.linalg.norm(lab - _rgb_to_lab(rgb).reshape(-1, 3).mean(0), axis=-1)
    return (sal - sal.min()) / (sal.max() - sal.min() + 1e-12)


def _mb_plus(rgb: np.ndarray) -> np.ndarray:
    from data_tools.saliency.mbplus import mb_plus
    return mb_plus(rgb)


DETECTORS = {"mb-plus": _mb_plus, "frequency-tuned": frequency_tuned}
DEFAULT_DETECTOR = "mb-plus"
# One pass or DCSP's two, per detector family: the higher foreground IoU on real VOC photos
# (benchmarks/saliency_bench.py over 40 VOC val photos; docs/data-sources.md).
DEFAULT_PASSES = {"mb-plus": 1, "frequency-tuned": 2, "model": 2}


class ModelDetector:
    """A saliency network from a Keras model file or a SavedModel directory."""

    def __init__(self, path: str, input_range: str = "255"):
        import tensorflow as tf
        if not os.path.exists(path):
            raise FileNotFoundError(f"--model {path}: no such file or directory")
        if os.path.isdir(path):
            loaded = tf.saved_model.load(path)
            self._fn = loaded.signatures["serving_default"] if hasattr(loaded, "signatures") and \
                loaded.signatures else loaded
        else:
            import keras
            self._fn = keras.models.load_model(path, compile=False)
        self._scale = 1.0 / 255.0 if input_range == "unit" else 1.0
        self.input_size = SIZE
        shape = getattr(self._fn, "input_shape", None)          # Keras: (None, H, W, 3)
        if isinstance(shape, tuple) and len(shape) == 4 and shape[1] and shape[2]:
            self.input_size = (int(shape[1]), int(shape[2]))

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        x = rgb.astype(np.float32)[None] * self._scale
        out = self._fn(x)
        if isinstance(out, dict):
            out = next(iter(out.values()))
        sal = np.asarray(out).astype(np.float32).reshape(rgb.shape[:2])
        return np.clip(sal, 0.0, 1.0)


# ----------------------------------------------------------------------------- algorithm
def _at_input_size(detector, rgb: np.ndarray) -> np.ndarray:
    """Run ``detector`` on the image resized to its input size (aspect ratio not kept) and
    resize its map back to the image bicubically -> [H, W] in [0, 1]."""
    h, w = rgb.shape[:2]
    size_h, size_w = getattr(detector, "input_size", SIZE)
    small = np.asarray(Image.fromarray(rgb).resize((size_w, size_h), Image.BILINEAR))
    sal = np.asarray(detector(small), np.float32).reshape(size_h, size_w)
    back = Image.fromarray(sal, mode="F").resize((w, h), Image.BICUBIC)
    return np.clip(np.asarray(back), 0.0, 1.0)


def hierarchical_saliency(rgb: np.ndarray, detector=_mb_plus, passes: int = 2) -> np.ndarray:
    """Pass 1: s1. With ``passes=2`` (DCSP's hierarchy), paint s1 >= 0.7 with the dataset mean
    colour, s2 on that, and max(s1, s2)."""
    first = _at_input_size(detector, rgb)
    if passes == 1:
        return first
    painted = rgb.copy()
    painted[first >= FIRST_THRESHOLD] = np.round(DATASET_MEAN_RGB).astype(np.uint8)
    second = _at_input_size(detector, painted)
    return np.maximum(first, second)


def _write_png(sal: np.ndarray, path: str) -> None:
    """The map as a PNG, whole or not at all (the project's atomic writer: a temporary name
    unique to this process, fsync, rename)."""
    from dcsp_dist.core.atomic import publish, temp_name
    tmp = temp_name(path)
    try:
        Image.fromarray(np.round(sal * 255).astype(np.uint8)).save(tmp, format="PNG")
        publish(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def is_done(src: str, dst: str, not_before: float | None = None) -> bool:
    """A map counts as done only when it is whole and current: it is not older than its image
    (a replaced photo is redone) nor than an ``--overwrite`` of the folder (``not_before``:
    the stamp's time), it opens as a PNG to its last byte, and it has its image's size."""
    from dcsp_dist.data.images import BadImage, upright_size
    try:
        made = os.path.getmtime(dst)
        if made < os.path.getmtime(src) or (not_before is not None and made < not_before):
            return False
        with Image.open(dst) as im:
            if im.format != "PNG":
                return False
            im.load()                       # raises on a truncated file
            size = im.size
        return size == upright_size(src)
    except (OSError, ValueError, SyntaxError, EOFError, BadImage):
        return False


def _process(overwrite: bool, passes: int, job: tuple, detector=_mb_plus,
             not_before: float | None = None) -> tuple[str, str | None]:
    """Compute and write one map for job = (image path, map path); ("wrote" | "kept" | "bad",
    the problem line). A detector that fails (a model whose output does not fit) raises,
    naming the image: that ends the run, it is not the image's fault."""
    from dcsp_dist.data.images import BadImage, read_rgb
    src, dst = job
    if not overwrite and is_done(src, dst, not_before):
        return "kept", None
    try:
        rgb = read_rgb(src)
    except BadImage as exc:
        return "bad", str(exc)
    try:
        sal = hierarchical_saliency(rgb, detector, passes)
    except ValueError as exc:
        raise UserError(f"{src}: {exc}") from None
    _write_png(sal, dst)
    return "wrote", None


def image_jobs(images: str, list_file: str | None, out_dir: str) -> list[tuple[str, str]]:
    """(image, map) pairs for a folder of images; ValueError naming the flag if unusable."""
    from dcsp_dist.data.images import list_images
    return [(path, os.path.join(out_dir, stem + ".png")) for stem, path in list_images(images, list_file)]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m data_tools.saliency", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", help="VOC-layout directory with JPEGImages/ (with --split-list)")
    parser.add_argument("--split-list", help="with --root: ids to process")
    parser.add_argument("--images", help="any folder of images (instead of --root)")
    parser.add_argument("--list", help="with --images: image paths relative to --images, one per line "
                                       "(default: every .jpg/.jpeg/.png in the folder)")
    parser.add_argument("--out-dir", help="default: <root>/Saliency (required with --images)")
    parser.add_argument("--detector", choices=sorted(DETECTORS), default=DEFAULT_DETECTOR,
                        help=f"built-in detector, when no --model is given (default: {DEFAULT_DETECTOR})")
    parser.add_argument("--model", help="a model name (python -m data_tools.saliency.fetch list; fetched on first use), an "
                                        ".onnx file (onnxruntime), a Keras model file or a SavedModel directory "
                                        "(instead of --detector)")
    parser.add_argument("--passes", type=int, choices=(1, 2), default=None,
                        help="1: the detector's map; 2: DCSP's hierarchy (hide what pass 1 found, run again, "
                             "keep the max). Default: each family's better one on real photos "
                             f"({', '.join(f'{k} {v}' for k, v in DEFAULT_PASSES.items())})")
    parser.add_argument("--model-input", choices=("255", "unit"), default="255",
                        help="Keras/SavedModel: pixel range the model expects, 0..255 (default) or 0..1")
    onnx = parser.add_argument_group("ONNX models (--model X.onnx or a name): a preset, and flags that override it")
    onnx.add_argument("--model-preset", default=None,
                      help="generic, u2net, isnet, basnet or birefnet: input size, normalisation and output as the "
                           "family publishes them (data_tools/saliency/onnx_runner.py); default: a named model's own, "
                           "else generic")
    onnx.add_argument("--input-size", help="HxW the network takes (default: the preset's, else the model's)")
    onnx.add_argument("--mean", help="R,G,B subtracted after scaling")
    onnx.add_argument("--std", help="R,G,B divided by after the mean")
    onnx.add_argument("--input-range", choices=("255", "max"), help="scale RGB by 1/255 or by 1/the image's max")
    onnx.add_argument("--output-index", type=int, help="which output holds the map (default 0)")
    onnx.add_argument("--sigmoid", action=argparse.BooleanOptionalAction, default=None, help="the output is logits")
    onnx.add_argument("--minmax", action=argparse.BooleanOptionalAction, default=None,
                      help="stretch each map to 0..1")
    parser.add_argument("--overwrite", action="store_true", help="recompute maps that exist")
    parser.add_argument("--workers", type=int, default=None,
                        help="processes for the built-in detector (default: this rank's share of the node's cores)")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for a model (default: this rank's share of the node's cores)")
    args = parser.parse_args(argv)
    if bool(args.root) == bool(args.images):
        parser.error("give --root with --split-list (VOC layout) or --images DIR")
    if args.images and not args.out_dir:
        parser.error("--images needs --out-dir")
    if args.root and not args.split_list:
        parser.error("--root needs --split-list")
    return args


def _jobs(args) -> tuple[list, str]:
    """(image, map) pairs and the output folder; ValueError naming the flag when unusable."""
    from data_tools.sources import check_root_and_list, read_id_list
    if args.images:
        return image_jobs(args.images, args.list, args.out_dir), args.out_dir
    from dcsp_dist.data.records import id_problem
    problem = check_root_and_list(args.root, args.split_list)
    if problem:
        raise UserError(problem)
    out_dir = args.out_dir or os.path.join(args.root, "Saliency")
    ids = read_id_list(args.split_list)
    for n, image_id in enumerate(ids, 1):
        why = id_problem(image_id)
        if why:
            raise UserError(f"--split-list {args.split_list}: id {n} {image_id!r}: {why}")
    return [(os.path.join(args.root, "JPEGImages", i + ".jpg"), os.path.join(out_dir, i + ".png"))
            for i in ids], out_dir


def _model_detector(args, place):
    """The --model detector and what names it in the folder's stamp: ONNX through
    onnxruntime (a registry name is fetched first), else Keras/SavedModel."""
    from data_tools.saliency import fetch
    path, preset = fetch.resolve(args.model, progress=place.rank == 0)
    if path.lower().endswith(".onnx"):
        from data_tools.saliency import onnx_runner
        convention = onnx_runner.convention_from(
            args.model_preset or preset or "generic", args.input_size, args.mean, args.std, args.input_range,
            args.output_index, args.sigmoid, args.minmax)
        detector = onnx_runner.OnnxDetector(path, convention, threads=args.threads or cores_per_rank(place.local_size),
                                              device=place.local_rank, explicit_size=bool(args.input_size))
        return detector, f"onnx {fetch.file_hash(path)[:16]} {convention}"
    return ModelDetector(path, args.model_input), f"keras {os.path.abspath(path)} input {args.model_input}"


STAMP = ".saliency.json"   # what made the folder's maps (hidden: the folder holds maps only)


def check_stamp(out_dir: str, made_by: str, overwrite: bool, place) -> float | None:
    """The folder's maps were made by ``made_by``, or none exist yet: rank 0 records it. Maps
    made by another detector are refused (ValueError) unless --overwrite.

    The stamp never claims maps that are not remade yet: an ``--overwrite`` stamps the folder
    anew (``remade_from``), and every map older than that stamp is redone by any later run,
    with or without --overwrite, until it is remade. Returns that time (the stamp's own
    mtime, on the file server's clock as the maps' are), or None."""
    from dcsp_dist.core.atomic import write_json
    path = os.path.join(out_dir, STAMP)
    stamp = None
    if os.path.isfile(path):
        try:
            with open(path) as fh:
                stamp = json.load(fh)
        except (OSError, ValueError):
            stamp = None            # unreadable: rewritten below, every map judged by itself
    if stamp and not overwrite and stamp.get("made_by") != made_by:
        raise UserError(f"--out-dir {out_dir}: its maps were made by {stamp.get('made_by')}, not by {made_by}; "
                         f"pass --overwrite to remake them, or give another --out-dir")
    if place.rank == 0 and (overwrite or not stamp):
        write_json(path, {"made_by": made_by, "remade_from": bool(overwrite)})
    elif place.rank != 0 and overwrite:
        return None                 # every map is redone anyway
    if overwrite or (stamp or {}).get("remade_from"):
        return os.path.getmtime(path) if os.path.isfile(path) else None
    return None


def main(argv=None) -> int:
    from dcsp_dist.core.console import say
    from dcsp_dist.core.placement import place as launch_place
    from dcsp_dist.core.progress import progress
    args = parse_args(argv)
    try:
        place = launch_place()
        jobs, out_dir = _jobs(args)
        if args.model:
            detector, made_by = _model_detector(args, place)
            family = "model"
        else:
            detector, made_by, family = None, args.detector, args.detector
        passes = args.passes or DEFAULT_PASSES[family]
        os.makedirs(out_dir, exist_ok=True)
        not_before = check_stamp(out_dir, f"{made_by}, {passes} pass{'es' if passes > 1 else ''}", args.overwrite,
                                 place)
    except (FileNotFoundError, OSError, ValueError) as exc:
        message = str(exc)
        say(f"error: {message if message.startswith('-') else f'--model {args.model}: {message}'}", err=True)
        return 2
    mine = place.share(jobs)
    tag = f"rank {place.rank} of {place.size} on {socket.gethostname()}: " if place.size > 1 else ""
    start = time.perf_counter()
    # Progress through dcsp_dist.core.progress: a bar on a terminal, whole lines under a launcher
    # (horovodrun, mpirun and srun tag each line; a bar's carriage returns would pile up).
    bar = progress(len(mine), f"saliency {tag}".strip().rstrip(":"), enabled=place.rank == 0)
    results = []
    try:
        if detector is not None:
            for job in mine:
                results.append(_process(args.overwrite, passes, job, detector, not_before))
                bar.update()
        else:
            work = functools.partial(_process, args.overwrite, passes, detector=DETECTORS[args.detector],
                                     not_before=not_before)
            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(args.workers or cores_per_rank(place.local_size), mp_context=ctx) as pool:
                for result in pool.map(work, mine, chunksize=8):
                    results.append(result)
                    bar.update()
        bar.close()
    except ValueError as exc:    # the detector failed on an image: the model does not fit
        say(f"error: {exc}", err=True)
        return 2
    counts = {k: sum(1 for r, _ in results if r == k) for k in ("wrote", "kept", "bad")}
    bad = [p for r, p in results if r == "bad"]
    if bad:
        say("\n".join(f"bad: {p}" for p in bad), err=True)
    say(f"[saliency] {tag}wrote {counts['wrote']}, kept {counts['kept']} already done, {counts['bad']} bad, of "
        f"{len(mine)} images ({len(jobs)} in all) in {out_dir}, {time.perf_counter() - start:.1f} s")
    return 1 if counts["bad"] else 0


if __name__ == "__main__":
    sys.exit(main())
