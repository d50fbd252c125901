"""Deep salient-object networks exported to ONNX, run through onnxruntime, as saliency detectors.

    python -m data_tools.saliency --images photos/ --out-dir sal/ --model u2net.onnx --model-preset u2net

The runtime uses the CUDA provider when onnxruntime offers it, else the CPU. A preset names
a model family's published input convention and output; explicit flags override any part:

| preset | input (NCHW float32, RGB) | normalisation | output | map |
| --- | --- | --- | --- | --- |
| generic | the model's size, 320x320 when dynamic | RGB / 255 | first | as it is, clipped to 0..1 |
| u2net | 320x320 | RGB / image max, ImageNet mean and std | first (d1 of 7) | per-image min-max |
| isnet | 1024x1024 | RGB / image max, mean 0.5, std 1 | first | per-image min-max |
| basnet | 256x256 | RGB / image max, ImageNet mean and std | first (d1 of 8) | per-image min-max |
| birefnet | 1024x1024 | RGB / image max, ImageNet mean and std | first (logits) | sigmoid, then min-max |

(u2net, isnet and birefnet as ``rembg`` runs them; basnet as its authors' test script.)
The map is resized to the network's input size when the output is smaller or larger. The
hierarchical two passes of ``data_tools.saliency`` apply as for every detector.
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np

from dcsp_dist.core.errors import UserError

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
DYNAMIC_SIZE = (320, 320)


@dataclasses.dataclass(frozen=True)
class Convention:
    """How to feed one ONNX saliency network and read its map."""
    size: tuple | None = None             # (height, width); None: the model's own, DYNAMIC_SIZE if dynamic
    scale: str = "255"                    # divide RGB by 255 ("255") or by the image's maximum ("max")
    mean: tuple = (0.0, 0.0, 0.0)
    std: tuple = (1.0, 1.0, 1.0)
    output: int = 0                       # which output holds the map
    sigmoid: bool = False                 # the output is logits
    minmax: bool = False                  # stretch each map to 0..1


PRESETS = {
    "generic": Convention(),
    "u2net": Convention(size=(320, 320), scale="max", mean=IMAGENET_MEAN, std=IMAGENET_STD, minmax=True),
    "isnet": Convention(size=(1024, 1024), scale="max", mean=(0.5, 0.5, 0.5), minmax=True),
    "basnet": Convention(size=(256, 256), scale="max", mean=IMAGENET_MEAN, std=IMAGENET_STD, minmax=True),
    "birefnet": Convention(size=(1024, 1024), scale="max", mean=IMAGENET_MEAN, std=IMAGENET_STD, sigmoid=True,
                           minmax=True),
}


class OnnxError(UserError):
    """An ONNX file that cannot be used; one line naming it and what was expected."""


def _runtime():
    try:
        import onnxruntime
    except ImportError:
        raise OnnxError("ONNX models need onnxruntime: .venv/bin/pip install onnxruntime "
                        "(make setup installs it)") from None
    onnxruntime.set_default_logger_severity(4)     # our one line says what failed; not its C++ log
    return onnxruntime


class OnnxDetector:
    """A saliency network from an .onnx file; ``__call__(rgb at input_size) -> [h, w] in 0..1``.

    Its input and output shapes are checked once, here, before any image: one input
    [1, 3, H, W] (a fixed batch must be 1), an output of one map ([1, 1, H, W], [1, H, W] or
    [H, W]). A model with a fixed H x W runs at that size: a preset's other size is set aside
    with a warning, an explicit ``--input-size`` that differs is an error."""

    def __init__(self, path: str, convention: Convention = PRESETS["generic"], threads: int | None = None,
                 device: int = 0, explicit_size: bool = False, warn=print):
        ort = _runtime()
        if not os.path.isfile(path):
            raise OnnxError(f"--model {path}: no such file")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        providers = [("CUDAExecutionProvider", {"device_id": device})] \
            if "CUDAExecutionProvider" in ort.get_available_providers() else []
        try:
            self.session = ort.InferenceSession(path, options, providers=providers + ["CPUExecutionProvider"])
        except Exception as exc:   # onnxruntime raises its own classes (InvalidGraph, Fail, ...)
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
            raise OnnxError(f"--model {path}: not a usable ONNX model ({first})") from None
        self.path, self.convention = path, convention
        self.input_name, self.input_size = self._check_input(path, convention, explicit_size, warn)
        self.output_name = self._check_output(path, convention)

    def _check_input(self, path: str, convention: Convention, explicit_size: bool, warn) -> tuple[str, tuple]:
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise OnnxError(f"--model {path}: expected one input [1, 3, H, W], the model has {len(inputs)}")
        name, shape = inputs[0].name, list(inputs[0].shape)
        if len(shape) != 4 or shape[1] != 3:
            raise OnnxError(f"--model {path}: expected input [1, 3, H, W] (NCHW, RGB), the model's input "
                            f"'{name}' is {shape}")
        if isinstance(shape[0], int) and shape[0] != 1:
            raise OnnxError(f"--model {path}: its input '{name}' has a fixed batch of {shape[0]}; saliency runs one "
                            f"image at a time: export the model with batch 1 or a dynamic batch")
        fixed = tuple(shape[2:]) if all(isinstance(d, int) and d > 0 for d in shape[2:]) else None
        size = convention.size or fixed or DYNAMIC_SIZE
        if fixed and size != fixed:
            given = f"--input-size {size[0]}x{size[1]}"
            if explicit_size:
                raise OnnxError(f"--model {path}: {given}, but the model's input '{name}' is fixed at "
                                f"{fixed[0]}x{fixed[1]}")
            warn(f"note: --model {path} takes {fixed[0]}x{fixed[1]} (fixed in the model), not its preset's "
                 f"{size[0]}x{size[1]}: running it at {fixed[0]}x{fixed[1]}")
            size = fixed
        return name, size

    def _check_output(self, path: str, convention: Convention) -> str:
        outputs = self.session.get_outputs()
        if not 0 <= convention.output < len(outputs):
            raise OnnxError(f"--model {path}: output {convention.output} asked for, the model has {len(outputs)}")
        out = outputs[convention.output]
        shape = list(out.shape)
        single = [d for d in shape[:-2] if isinstance(d, int)]
        if len(shape) not in (2, 3, 4) or any(d != 1 for d in single):
            raise OnnxError(f"--model {path}: output '{out.name}' is {shape}, expected one map [1, 1, H, W] or "
                            f"[1, H, W] (--output-index chooses another output)")
        return out.name

    def preprocess(self, rgb: np.ndarray) -> np.ndarray:
        c = self.convention
        x = rgb.astype(np.float32)
        x = x / max(float(x.max()), 1e-6) if c.scale == "max" else x / 255.0
        x = (x - np.asarray(c.mean, np.float32)) / np.asarray(c.std, np.float32)
        return np.ascontiguousarray(x.transpose(2, 0, 1)[None])            # HWC RGB -> NCHW

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        from PIL import Image
        out = self.session.run([self.output_name], {self.input_name: self.preprocess(rgb)})[0]
        sal = np.asarray(out, np.float32)
        sal = sal.reshape(sal.shape[-2:]) if sal.ndim >= 2 and sal.size == sal.shape[-2] * sal.shape[-1] else None
        if sal is None:
            raise OnnxError(f"--model {self.path}: output '{self.output_name}' came out {list(out.shape)}, expected "
                            f"[1, 1, H, W] or [1, H, W]")
        if self.convention.sigmoid:
            sal = 1.0 / (1.0 + np.exp(-sal))
        if self.convention.minmax:
            sal = (sal - sal.min()) / max(float(sal.max() - sal.min()), 1e-8)
        h, w = rgb.shape[:2]
        if sal.shape != (h, w):
            sal = np.asarray(Image.fromarray(sal, mode="F").resize((w, h), Image.BILINEAR))
        return np.clip(sal, 0.0, 1.0)


def convention_from(preset: str, size: str | None = None, mean: str | None = None, std: str | None = None,
                    input_range: str | None = None, output: int | None = None, sigmoid: bool | None = None,
                    minmax: bool | None = None) -> Convention:
    """A preset with the explicit flags laid over it; ValueError naming the flag when bad."""
    if preset not in PRESETS:
        raise UserError(f"--model-preset {preset}: choose one of {', '.join(PRESETS)}")
    changes: dict = {}
    if size:
        try:
            h, w = (int(v) for v in size.lower().split("x"))
            assert h > 0 and w > 0
        except (ValueError, AssertionError):
            raise UserError(f"--input-size {size}: expected HxW, e.g. 320x320") from None
        changes["size"] = (h, w)
    for flag, name, value in (("--mean", "mean", mean), ("--std", "std", std)):
        if value:
            try:
                triple = tuple(float(v) for v in value.split(","))
                assert len(triple) == 3
            except (ValueError, AssertionError):
                raise UserError(f"{flag} {value}: expected three numbers, R,G,B") from None
            changes[name] = triple
    if input_range:
        changes["scale"] = input_range
    if output is not None:
        changes["output"] = output
    if sigmoid is not None:
        changes["sigmoid"] = sigmoid
    if minmax is not None:
        changes["minmax"] = minmax
    return dataclasses.replace(PRESETS[preset], **changes)
