"""What every data source shares: split roles, the record item, reading an image with its
saliency and mask with every problem named, and the ``Source`` interface that
``data_tools.build`` drives.

Runs in worker processes: NumPy and PIL only (no TensorFlow).
"""
from __future__ import annotations

import argparse
import io
import os

import numpy as np
from PIL import Image

from dcsp_dist.core.errors import UserError
from dcsp_dist.data.images import BadImage, record_jpeg

ROLES = ("train", "eval", "test")


class SourceError(UserError):
    """A source's flags or files cannot be used (one line naming the flag or file)."""


class Source:
    """A data source for ``data_tools.build``: its flags, its class list and its items.

    A reader subclasses this and sets:
    - ``NAME`` (recorded in the manifest as ``source``), ``FLAG`` (the option that selects it,
      e.g. ``--root``) and ``COMPANIONS`` (options that only go with it);
    - ``add_arguments(group)`` and ``from_args(args)`` (which raises SourceError);
    - ``root`` (recorded as ``source_root``), ``origin`` (the file the ids come from),
      ``class_names`` (background first), ``ids``,
      ``keys`` (one per id, what ``load`` takes; picklable), ``default_split`` (or None);
    - ``load(key, role)``: the item of one image (``load_files`` makes it), run in worker
      processes, so the source object itself is pickled: keep it small.
    """
    NAME = ""
    FLAG = ""
    COMPANIONS: tuple = ()
    TITLE = ""

    root: str
    origin: str = ""          # the file the ids come from (named when an id is refused)
    class_names: list
    ids: list
    keys: list
    default_split: str | None = None

    @classmethod
    def add_arguments(cls, group: argparse._ArgumentGroup) -> None:
        raise NotImplementedError

    @classmethod
    def given(cls, args) -> bool:
        return bool(getattr(args, _dest(cls.FLAG)))

    @classmethod
    def from_args(cls, args) -> Source:
        raise NotImplementedError

    def load(self, key, role: str) -> dict:
        raise NotImplementedError


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def role_for_split(split: str) -> str:
    """train* -> train (tags + saliency required), test* -> test, else eval (mask required)."""
    if split.startswith("train"):
        return "train"
    if split.startswith("test"):
        return "test"
    return "eval"


def _png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode="L").save(buf, format="PNG", optimize=False, compress_level=1)
    return buf.getvalue()


def _sized_png(array: np.ndarray, size: tuple, where: str, what: str, problems: list) -> bytes | None:
    """``array`` as PNG bytes when it has the image's (height, width), else a problem naming ``where``."""
    if array.shape != size:
        problems.append(f"{where}: {what} is {array.shape[1]}x{array.shape[0]}, image is {size[1]}x{size[0]}")
        return None
    return _png_bytes(array)


def read_saliency(stem: str, problems: list) -> np.ndarray | None:
    """``stem``.png (0..255) or ``stem``.npz (key actv, [0, 1]); None when neither exists."""
    png, npz = stem + ".png", stem + ".npz"
    if os.path.isfile(png):
        try:
            with Image.open(png) as im:
                return np.asarray(im.convert("L"))
        except (OSError, ValueError) as exc:
            problems.append(f"{png}: unreadable PNG ({exc})")
            return None
    if os.path.isfile(npz):
        try:
            with np.load(npz) as data:
                actv = np.asarray(data["actv"], np.float32)
        except (OSError, ValueError, KeyError) as exc:
            problems.append(f"{npz}: no readable 'actv' array ({exc})")
            return None
        actv = np.squeeze(actv)
        if actv.ndim != 2 or not np.isfinite(actv).all() or actv.min() < 0 or actv.max() > 1:
            problems.append(f"{npz}: 'actv' must be a 2-D map of values in [0, 1]")
            return None
        return np.round(actv * 255).astype(np.uint8)
    return None


def read_mask(paths, problems: list, num_classes: int) -> np.ndarray | None:
    for path in paths:
        if os.path.isfile(path):
            try:
                with Image.open(path) as im:
                    if im.mode not in ("P", "L"):
                        problems.append(f"{path}: mask must be a palette or single-channel PNG, not {im.mode}")
                        return None
                    mask = np.asarray(im)  # palette index = class id
            except (OSError, ValueError) as exc:
                problems.append(f"{path}: unreadable PNG ({exc})")
                return None
            bad = np.setdiff1d(np.unique(mask), list(range(num_classes)) + [255])
            if bad.size:
                problems.append(f"{path}: label values {bad.tolist()} are not class ids or 255")
                return None
            return mask
    return None


def load_files(image_id: str, path: str, tags: list[int] | None, problems: list[str], role: str,
               saliency_stem: str | None, mask_paths: list[str], num_classes: int, mask=None) -> dict:
    """The record item of one image from its files, for any source (see ``load_item``). The
    image goes through the shared reader (``dcsp_dist.data.images.record_jpeg``): a plain JPEG
    keeps its bytes, anything else is stored upright as RGB JPEG."""
    item = {"id": image_id, "problems": problems, "saliency_png": None, "mask_png": None}
    if not os.path.isfile(path):
        problems.append(f"{path}: no image for id {image_id}")
        return item
    try:
        jpeg, height, width = record_jpeg(path)
    except BadImage as exc:
        problems.append(str(exc))
        return item
    item.update(jpeg=jpeg, height=height, width=width)
    if role == "train" and tags is not None and not tags and not problems:
        problems.append(f"{path}: image has no tags, which a training split needs")
    item["tags"] = tags or []

    saliency = read_saliency(saliency_stem, problems) if saliency_stem else None
    if saliency is not None:
        item["saliency_png"] = _sized_png(saliency, (height, width), saliency_stem, "saliency", problems)
    elif role == "train":
        problems.append(f"{saliency_stem or path}.png (or .npz): missing saliency map")

    if mask is None:   # a source may hand over the mask itself (COCO paints it from polygons)
        mask = read_mask(mask_paths, problems, num_classes)
    if mask is not None:
        item["mask_png"] = _sized_png(mask, (height, width), mask_paths[0] if mask_paths else path, "mask", problems)
    elif role == "eval":
        problems.append(f"{' or '.join(mask_paths) or path + ': no mask given'}: missing mask")
    return item


# ----------------------------------------------------------------------------- class lists
def class_names_problem(names: list[str]) -> str | None:
    """None when ``names`` can be a class list (1..254 distinct object classes, background
    implicit as class 0 and 255 kept for "ignore"), else what is wrong."""
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if not names or duplicates or "background" in names or len(names) > 254:
        return (f"expected 1..254 distinct class names without 'background' (class 0, implicit)"
                f"{'; duplicates: ' + ', '.join(duplicates) if duplicates else ''}")
    return None
