"""Reading one image's files from a VOC-layout root, with every problem named.

Runs in worker processes: NumPy and PIL only (no TensorFlow).
"""
from __future__ import annotations

import io
import os
import xml.etree.ElementTree as ET

import numpy as np
from PIL import Image

from dcsp_dist.voc import CLASS_NAMES

ROLES = ("train", "eval", "test")


def role_for_split(split: str) -> str:
    """train* -> train (tags + saliency required), test* -> test, else eval (mask required)."""
    if split.startswith("train"):
        return "train"
    if split.startswith("test"):
        return "test"
    return "eval"


def check_root_and_list(root: str, split_list: str) -> str | None:
    """One line naming the flag when --root or --split-list cannot be used, else None."""
    if not os.path.isdir(os.path.join(root, "JPEGImages")):
        return f"--root {root}: no JPEGImages/ directory there"
    if not os.path.isfile(split_list):
        return f"--split-list {split_list}: no such file"
    return None


def read_id_list(path: str) -> list[str]:
    """IDs from a list file: first token per non-empty line (VOC ImageSets or our lists)."""
    with open(path) as fh:
        return [line.split()[0] for line in fh if line.strip()]


def _png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode="L").save(buf, format="PNG", optimize=False, compress_level=1)
    return buf.getvalue()


def _read_tags(root: str, image_id: str, problems: list) -> list[int] | None:
    txt = os.path.join(root, "ClassCategories", image_id + ".txt")
    xml = os.path.join(root, "Annotations", image_id + ".xml")
    if os.path.isfile(txt):
        tags = set()
        with open(txt) as fh:
            for line in fh:
                if not line.strip():
                    continue
                try:
                    t = int(line.split()[0])
                except ValueError:
                    problems.append(f"{txt}: {line.strip()!r} is not a class id")
                    continue
                if not 1 <= t <= 20:
                    problems.append(f"{txt}: tag id {t} outside 1..20")
                else:
                    tags.add(t)
        return sorted(tags)
    if os.path.isfile(xml):
        try:
            tree = ET.parse(xml)
        except ET.ParseError as exc:
            problems.append(f"{xml}: not valid XML ({exc})")
            return None
        tags = set()
        for name in tree.getroot().iter("object"):
            label = (name.findtext("name") or "").strip()
            if label not in CLASS_NAMES[1:]:
                problems.append(f"{xml}: unknown class name {label!r}")
            else:
                tags.add(CLASS_NAMES.index(label))
        return sorted(tags)
    return None


def _read_saliency(stem: str, problems: list) -> np.ndarray | None:
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


def _read_mask(paths, problems: list, num_classes: int = len(CLASS_NAMES)) -> np.ndarray | None:
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


def load_item(root: str, image_id: str, role: str, saliency_dir: str | None = None) -> dict:
    """Everything the record of VOC-layout ``image_id`` needs, or ``problems`` saying what is wrong.

    Returns {"id", "jpeg", "height", "width", "tags", "saliency_png", "mask_png",
    "problems"}; absent optional parts are None.
    """
    problems: list[str] = []
    tags = _read_tags(root, image_id, problems)
    if tags is None and role == "train":
        problems.append(f"{root}/Annotations/{image_id}.xml (or ClassCategories/{image_id}.txt): missing tag file")
    masks = [os.path.join(root, sub, image_id + ".png") for sub in ("SegmentationClassAug", "SegmentationClass")]
    return load_files(image_id, os.path.join(root, "JPEGImages", image_id + ".jpg"), tags, problems, role,
                      os.path.join(saliency_dir or os.path.join(root, "Saliency"), image_id), masks, len(CLASS_NAMES))


def load_files(image_id: str, path: str, tags: list[int] | None, problems: list[str], role: str,
               saliency_stem: str | None, mask_paths: list[str], num_classes: int, mask=None) -> dict:
    """The record item of one image from its files, for any source (see ``load_item``)."""
    item = {"id": image_id, "problems": problems, "saliency_png": None, "mask_png": None}
    if not os.path.isfile(path):
        problems.append(f"{path}: no image for id {image_id}")
        return item
    with open(path, "rb") as fh:
        jpeg = fh.read()
    try:
        with Image.open(io.BytesIO(jpeg)) as im:
            if im.format != "JPEG":
                raise ValueError(f"a {im.format} file, not a JPEG")
            im.load()  # raises on truncated data
            width, height = im.size
    except (OSError, ValueError, SyntaxError) as exc:
        problems.append(f"{path}: not a readable JPEG ({exc})")
        return item
    item.update(jpeg=jpeg, height=height, width=width)
    if role == "train" and tags is not None and not tags and not problems:
        problems.append(f"{path}: image has no tags, which a training split needs")
    item["tags"] = tags or []

    saliency = _read_saliency(saliency_stem, problems) if saliency_stem else None
    if saliency is not None:
        if saliency.shape != (height, width):
            problems.append(f"{saliency_stem}: saliency is {saliency.shape[1]}x{saliency.shape[0]}, "
                            f"image is {width}x{height}")
        else:
            item["saliency_png"] = _png_bytes(saliency)
    elif role == "train":
        problems.append(f"{saliency_stem or path}.png (or .npz): missing saliency map")

    if mask is None:   # a source may hand over the mask itself (COCO paints it from polygons)
        mask = _read_mask(mask_paths, problems, num_classes)
    if mask is not None:
        if mask.shape != (height, width):
            problems.append(f"{mask_paths[0] if mask_paths else path}: mask is {mask.shape[1]}x{mask.shape[0]}, "
                            f"image is {width}x{height}")
        else:
            item["mask_png"] = _png_bytes(mask)
    elif role == "eval":
        problems.append(f"{' or '.join(mask_paths) or path + ': no mask given'}: missing mask")
    return item


# ----------------------------------------------------------------------------- tag list
def class_names_problem(names: list[str]) -> str | None:
    """None when ``names`` can be a class list (1..254 distinct object classes, background
    implicit as class 0 and 255 kept for "ignore"), else what is wrong."""
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if not names or duplicates or "background" in names or len(names) > 254:
        return (f"expected 1..254 distinct class names without 'background' (class 0, implicit)"
                f"{'; duplicates: ' + ', '.join(duplicates) if duplicates else ''}")
    return None


def read_class_list(path: str) -> list[str]:
    """``classes.txt``: one object class per line -> ["background", ...]. ValueError if bad."""
    if not os.path.isfile(path):
        raise ValueError(f"--classes {path}: no such file")
    with open(path) as fh:
        names = [line.strip() for line in fh if line.strip()]
    problem = class_names_problem(names)
    if problem:
        raise ValueError(f"--classes {path} (one class per line): {problem}")
    return ["background"] + names


def read_tag_list(path: str) -> list[list[str]]:
    """``tags.tsv`` lines as fields: image path, comma-separated names[, mask path[, saliency path]]."""
    if not os.path.isfile(path):
        raise ValueError(f"--tag-list {path}: no such file")
    with open(path) as fh:
        return [line.rstrip("\n").split("\t") for line in fh if line.strip() and not line.startswith("#")]


def load_tag_item(base: str, fields: list[str], class_names: list[str], role: str,
                  saliency_dir: str | None = None) -> dict:
    """The record item of one tag-list line (paths relative to ``base``, the list's folder)."""
    problems: list[str] = []
    image = os.path.join(base, fields[0])
    image_id = os.path.splitext(os.path.basename(fields[0]))[0]
    tags = set()
    for name in (n.strip() for n in (fields[1] if len(fields) > 1 else "").split(",")):
        if not name:
            continue
        if name not in class_names[1:]:
            problems.append(f"{image}: unknown class name {name!r} (not in the class list)")
        else:
            tags.add(class_names.index(name))
    masks = [os.path.join(base, fields[2])] if len(fields) > 2 and fields[2] else []
    if len(fields) > 3 and fields[3]:
        stem = os.path.splitext(os.path.join(base, fields[3]))[0]
    else:
        stem = os.path.join(saliency_dir, image_id) if saliency_dir else None
    return load_files(image_id, image, sorted(tags), problems, role, stem, masks, len(class_names))
