"""Weight import and export: ImageNet (keras.applications) and the Caffe-converted dict.

The Caffe dict is what the original DeepLab/DCSP releases ship (caffe-tensorflow output):
``{"conv1": {"weights": HWIO}, "bn_conv1": {"mean", "variance", "scale", "offset"},
"res2a_branch1": ..., "fc1_voc12_c0": {"weights", "biases"}, ...}``, as a ``.npy`` holding
that dict or a ``.npz`` with flat ``"layer/param"`` keys. Caffe convs have no bias; Keras'
do, so export folds a conv bias into the next batch norm's mean (exact when the bias is 0,
as after any Caffe import) and import sets conv biases to zero.
"""
from __future__ import annotations

import argparse
import os
import zipfile

import keras
import numpy as np

from dcsp_dist.core.atomic import publish, temp_name
from dcsp_dist.core.console import say
from dcsp_dist.core.errors import UserError
from dcsp_dist.models.deeplab import ASPP_NAMES, ATTENTION_NAME, backbone, head_layers


# ----------------------------------------------------------------------------- names
def _block_letter(block: int, num_blocks: int) -> str:
    """MSRA naming: res2a, res2b, res2c; res4a, res4b1 ... res4b22 for long stages."""
    if block == 1:
        return "a"
    return f"b{block - 1}" if num_blocks > 3 else chr(ord("a") + block - 1)


_BRANCH = {"0": "branch1", "1": "branch2a", "2": "branch2b", "3": "branch2c"}


def caffe_names(model) -> dict[str, tuple[str, str]]:
    """Map each weighted Keras layer of the backbone to (caffe name, kind) kind in conv/bn."""
    net = backbone(model)
    if any(layer.name.endswith("_gn") for layer in net.layers):
        raise UserError("Caffe/ImageNet weights are for the frozen-batch-norm ResNet; this model uses "
                         "group norm (normalization=group_norm)")
    blocks_per_stage: dict[int, int] = {}
    for layer in net.layers:
        parts = layer.name.split("_")
        if parts[0].startswith("conv") and len(parts) > 1 and parts[1].startswith("block"):
            stage, block = int(parts[0][4:]), int(parts[1][5:])
            blocks_per_stage[stage] = max(blocks_per_stage.get(stage, 0), block)
    names = {}
    for layer in net.layers:
        if not layer.weights:
            continue
        parts = layer.name.split("_")
        if layer.name == "conv1_conv":
            names[layer.name] = ("conv1", "conv")
        elif layer.name == "conv1_bn":
            names[layer.name] = ("bn_conv1", "bn")
        else:
            stage, block = int(parts[0][4:]), int(parts[1][5:])
            unit = f"{stage}{_block_letter(block, blocks_per_stage[stage])}_{_BRANCH[parts[2]]}"
            kind = parts[3]
            names[layer.name] = (("res" if kind == "conv" else "bn") + unit, kind)
    return names


# ----------------------------------------------------------------------------- caffe I/O
def read_caffe_file(path: str) -> dict[str, dict[str, np.ndarray]]:
    """Read a Caffe-converted dict from ``.npz`` (flat keys), or from a ``.npy`` that holds
    plain arrays only. The authors' ``.npy`` is a pickled dict, and a pickle can run code
    when loaded: it is refused here, with the one-time conversion that unpickles it on the
    user's word (``python -m dcsp_dist.models.weights convert --trust-pickle IN.npy OUT.npz``)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"weights file {path} does not exist")
    # By content, not by name: np.load opens a zip (.npz) under any name, and an .npy too.
    try:
        obj = np.load(path, allow_pickle=False)
    except ValueError as exc:
        if "allow_pickle" not in str(exc):
            raise UserError(f"{path}: not a readable .npy or .npz ({str(exc)[:160]})") from None
        raise UserError(f"{path} is a pickled .npy (a dict of layers, as the authors' Caffe conversion saves it); "
                         f"loading a pickle can run code from the file, so it is not loaded. Convert it once, if you "
                         f"trust the file: python -m dcsp_dist.models.weights convert --trust-pickle {path} "
                         f"{os.path.splitext(path)[0]}.npz, then use the .npz") from None
    except (OSError, EOFError, zipfile.BadZipFile) as exc:     # a damaged zip, a truncated file
        raise UserError(f"{path}: not a readable .npy or .npz ({str(exc)[:160] or type(exc).__name__})") from None
    if isinstance(obj, np.lib.npyio.NpzFile):
        with obj:
            return _read_npz(obj, path)
    raise UserError(f"{path}: expected a dict of layers, got an array {obj.shape}; save the weights as .npz with "
                     f"'layer/param' keys")


def _read_npz(data, path: str) -> dict[str, dict[str, np.ndarray]]:
    nested: dict = {}
    for key in data.files:
        if "/" not in key:
            raise UserError(f"{path}: key {key!r} is not of the form 'layer/param'")
        layer, param = key.split("/", 1)
        try:
            nested.setdefault(layer, {})[param] = data[key]
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
            raise UserError(f"{path}: entry {key!r} is unreadable ({str(exc)[:160]})") from None
    return nested


def convert_pickled(source: str, target: str) -> int:
    """Unpickle the authors' ``.npy`` dict ``source`` (the caller has said it trusts it) and
    write it as ``.npz`` ``target``, which loads without pickle. Returns the layer count."""
    if not target.endswith(".npz"):
        raise UserError(f"{target}: the converted file must be a .npz")
    obj = np.load(source, allow_pickle=True, encoding="latin1")
    if obj.dtype != object or not isinstance(obj.item(), dict):
        raise UserError(f"{source}: expected a .npy holding a dict of layers, got an array {obj.shape}")
    weights = obj.item()
    write_caffe_file(weights, target)
    return len(weights)


def write_caffe_file(weights: dict, path: str) -> None:
    """Write ``weights`` as ``.npy`` (dict) or ``.npz`` (flat keys), atomically."""
    tmp = temp_name(path)
    if path.endswith(".npz"):
        flat = {f"{layer}/{param}": arr for layer, params in weights.items() for param, arr in params.items()}
        with open(tmp, "wb") as fh:
            np.savez(fh, **flat)
    else:
        with open(tmp, "wb") as fh:
            np.save(fh, np.array(weights, dtype=object), allow_pickle=True)
    publish(tmp, path)


def _expected(model) -> dict[str, dict[str, tuple]]:
    """Caffe layer -> param -> shape for this model; head layers included."""
    net = backbone(model)
    out: dict[str, dict[str, tuple]] = {}
    for keras_name, (caffe, kind) in caffe_names(model).items():
        layer = net.get_layer(keras_name)
        if kind == "conv":
            out[caffe] = {"weights": tuple(layer.kernel.shape)}
        else:
            c = tuple(layer.gamma.shape)
            out[caffe] = {"mean": c, "variance": c, "scale": c, "offset": c}
    for layer in head_layers(model):
        out[layer.name] = {"weights": tuple(layer.kernel.shape), "biases": tuple(layer.bias.shape)}
    return out


def export_caffe_dict(model) -> dict[str, dict[str, np.ndarray]]:
    """The model's weights as a Caffe-named dict (conv biases folded into BN means)."""
    net = backbone(model)
    names = caffe_names(model)
    out: dict[str, dict[str, np.ndarray]] = {}
    for keras_name, (caffe, kind) in names.items():
        layer = net.get_layer(keras_name)
        if kind == "conv":
            out[caffe] = {"weights": np.asarray(layer.kernel)}
        else:
            conv = net.get_layer(keras_name[: -len("bn")] + "conv")
            mean = np.asarray(layer.moving_mean) - np.asarray(conv.bias)
            out[caffe] = {"mean": mean, "variance": np.asarray(layer.moving_variance),
                          "scale": np.asarray(layer.gamma), "offset": np.asarray(layer.beta)}
    for layer in head_layers(model):
        out[layer.name] = {"weights": np.asarray(layer.kernel), "biases": np.asarray(layer.bias)}
    return out


def load_caffe_dict(model, weights, source: str = "weights dict") -> list[str]:
    """Load a Caffe-named dict (or a path to one) into ``model``, all or nothing.

    The backbone must be complete; the heads (``fc1_voc12_c0..c3``, ``fc1_voc12_d0``) are
    optional as a whole. Missing, unexpected and mis-shaped keys are reported together in
    one ValueError and nothing is assigned. Returns the Caffe layer names loaded.
    """
    if isinstance(weights, (str, os.PathLike)):
        source = str(weights)
        weights = read_caffe_file(source)
    expected = _expected(model)
    head_names = set(ASPP_NAMES) | {ATTENTION_NAME}
    have_heads = head_names & set(weights)
    problems = []
    for layer, params in expected.items():
        if layer in head_names and not have_heads:
            continue
        if layer not in weights:
            problems.append(f"missing layer {layer}")
            continue
        got = weights[layer]
        if not isinstance(got, dict):
            problems.append(f"layer {layer} is not a dict of parameters")
            continue
        for param, shape in params.items():
            if param not in got:
                problems.append(f"missing {layer}/{param}")
            elif tuple(np.shape(got[param])) != shape:
                problems.append(f"{layer}/{param} has shape {tuple(np.shape(got[param]))}, model needs {shape}")
        problems += [f"unexpected {layer}/{p}" for p in got if p not in params]
    problems += [f"unexpected layer {layer}" for layer in weights if layer not in expected]
    if problems:
        raise UserError(f"{source} does not fit the model ({len(problems)} problems): " + "; ".join(problems))

    net = backbone(model)
    for keras_name, (caffe, kind) in caffe_names(model).items():
        layer, params = net.get_layer(keras_name), weights[caffe]
        if kind == "conv":
            layer.kernel.assign(params["weights"])
            layer.bias.assign(np.zeros(layer.bias.shape, np.float32))
        else:
            layer.moving_mean.assign(params["mean"])
            layer.moving_variance.assign(params["variance"])
            layer.gamma.assign(params["scale"])
            layer.beta.assign(params["offset"])
    loaded = [caffe for caffe, _ in caffe_names(model).values()]
    if have_heads:
        for layer in head_layers(model):
            layer.kernel.assign(weights[layer.name]["weights"])
            layer.bias.assign(weights[layer.name]["biases"])
            loaded.append(layer.name)
    return loaded


# ----------------------------------------------------------------------------- imagenet
def load_imagenet_backbone(model, weights: str = "imagenet") -> None:
    """Copy ``keras.applications.ResNet101(weights=...)`` into the backbone, layer by name.

    ``weights`` is "imagenet" (downloaded by Keras, needs the network once) or the path of
    a local Keras weights file for ResNet101 without top. The backbone must be ResNet-101.
    """

    if weights != "imagenet" and not os.path.exists(weights):
        raise FileNotFoundError(f"ImageNet weights file {weights} does not exist")
    reference = keras.applications.ResNet101(include_top=False, weights=weights,
                                             input_shape=(None, None, 3))
    net = backbone(model)
    problems = []
    pairs = []
    for layer in net.layers:
        if not layer.weights:
            continue
        try:
            ref = reference.get_layer(layer.name)
        except ValueError:
            problems.append(f"no layer {layer.name} in ResNet101")
            continue
        ours, theirs = layer.get_weights(), ref.get_weights()
        if [w.shape for w in ours] != [w.shape for w in theirs]:
            problems.append(f"{layer.name}: shapes {[w.shape for w in theirs]} vs {[w.shape for w in ours]}")
        pairs.append((layer, theirs))
    if problems:
        raise UserError("ImageNet ResNet101 weights do not fit this backbone: " + "; ".join(problems[:5]))
    for layer, values in pairs:
        layer.set_weights(values)


def load_initial_weights(model, spec: str) -> str:
    """Initialise from ``spec``: "none", "imagenet", a Keras weights file or a Caffe dict."""
    if spec in ("", "none"):
        return "random initialisation"
    if spec.endswith((".npy", ".npz")):
        load_caffe_dict(model, spec)
        return f"Caffe dict {spec}"
    load_imagenet_backbone(model, spec)
    return f"ImageNet ResNet101 ({spec})"


def main(argv=None) -> int:
    """``convert --trust-pickle IN.npy OUT.npz``: the one-time conversion of a pickled dict."""
    parser = argparse.ArgumentParser(prog="python -m dcsp_dist.models.weights",
                                     description="Convert the authors' pickled .npy weights dict to .npz once.")
    sub = parser.add_subparsers(dest="command", required=True)
    convert = sub.add_parser("convert", help="unpickle IN.npy (only a file you trust: a pickle can run code) and "
                                             "write OUT.npz, which loads without pickle")
    convert.add_argument("--trust-pickle", action="store_true",
                         help="required: you trust IN.npy, whose loading runs any code a pickle holds")
    convert.add_argument("source")
    convert.add_argument("target")
    args = parser.parse_args(argv)
    if not args.trust_pickle:
        say(f"error: {args.source}: unpickling can run code from the file; pass --trust-pickle if you trust it", err=True)
        return 2
    try:
        count = convert_pickled(args.source, args.target)
    except (OSError, ValueError) as exc:
        say(f"error: {exc}", err=True)
        return 1
    say(f"wrote {args.target} ({count} layers); use it as init_weights: it loads without pickle")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
