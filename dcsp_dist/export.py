"""A trained run as a TensorFlow SavedModel to serve (TF Serving, or ``tf.saved_model.load``).

    python -m dcsp_dist.export --checkpoint runs/voc --out exported/dcsp
    saved_model_cli show --dir exported/dcsp --all

Signatures:
- ``serving_default``: ``image`` uint8 [H, W, 3] RGB of any size -> ``classes`` int32 [H, W]
  (the class map) and ``probabilities`` float32 [H, W, C];
- ``class_names``: -> ``class_names`` string [C], the run's class list (also in
  ``<out>/assets.extra/class_names.json``).
Inside the graph: the model's preprocessing (Caffe BGR mean), the run's multi-scale fusion
(``eval_scales``), the stride-8 geometry, ``upsample_space`` and ``inference_window``: the
same numbers ``predict --no-crf`` computes. The dense CRF is not in it (it is CPU code).
The SavedModel is written under a temporary name and renamed when complete.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from dcsp_dist.core import atomic
from dcsp_dist.core.console import say
from dcsp_dist.core.errors import UserError
from dcsp_dist.inference.settings import InferenceSettings


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m dcsp_dist.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="run directory, stage directory or checkpoint prefix")
    parser.add_argument("--out", required=True, help="the SavedModel directory to write (must not exist)")
    parser.add_argument("--config", default=None, help="preset, only if the checkpoint has no config.json")
    parser.add_argument("--scales", default=None, help="comma-separated, first is 1 (default: the run's eval_scales)")
    parser.add_argument("--window", choices=("image", "crop"), default=None,
                        help="whole image or crop-size windows (default: the run's inference_window)")
    return parser.parse_args(argv)


def export(args) -> dict:
    """Write the SavedModel; returns what it holds (for the console line)."""
    import tensorflow as tf

    from dcsp_dist.inference.predictor import class_names_for, probability_fn_for

    if os.path.exists(args.out):
        raise UserError(f"--out {args.out}: already exists; give a new directory (nothing was replaced)")
    atomic.check_writable_dir(os.path.dirname(os.path.abspath(args.out)), "--out's parent")
    settings = InferenceSettings.from_args(args)
    settings.check()
    loaded = settings.load()
    model, cfg, prefix, scales = loaded.model, loaded.cfg, loaded.checkpoint, loaded.scales
    names = class_names_for(prefix, cfg)
    module = tf.Module()
    module.model = model
    module.class_list = tf.Variable(names, dtype=tf.string, trainable=False, name="class_names")
    probabilities = probability_fn_for(model, cfg, scales)

    @tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.uint8, name="image")])
    def serve(image):
        probs = probabilities(image)
        return {"classes": tf.argmax(probs, axis=-1, output_type=tf.int32), "probabilities": probs}

    @tf.function(input_signature=[])
    def class_names():
        return {"class_names": tf.identity(module.class_list)}

    module.serve, module.class_names = serve, class_names
    staging = atomic.temp_name(os.path.abspath(args.out))
    try:
        tf.saved_model.save(module, staging, signatures={"serving_default": serve, "class_names": class_names})
        extra = os.path.join(staging, "assets.extra")
        os.makedirs(extra, exist_ok=True)
        info = {"class_names": names, "checkpoint": prefix, "config": cfg.name, "scales": list(scales),
                "inference_window": cfg.inference.inference_window, "upsample_space": cfg.inference.upsample_space}
        with open(os.path.join(extra, "class_names.json"), "w") as fh:
            json.dump(info, fh, indent=2)
        os.replace(staging, args.out)
    except BaseException:
        atomic.discard_dir(staging)
        raise
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(args.out) for f in files)
    return {**info, "bytes": size}


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        info = export(args)
    except (ValueError, OSError) as exc:
        say(f"error: {exc}", err=True)
        return 1
    say(f"exported {info['checkpoint']} ({len(info['class_names'])} classes, scales {info['scales']}, "
          f"window {info['inference_window']}) to {args.out}: {info['bytes'] / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
