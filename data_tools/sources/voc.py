"""PASCAL VOC layout as a data_tools.build source (``--root`` with ``--split-list``).

Reads JPEGImages/<id>.jpg (bytes kept as they are), tags from ClassCategories/<id>.txt (class
ids 1..20) or Annotations/<id>.xml (class names), saliency from Saliency/<id>.png or .npz
(key ``actv``), masks from SegmentationClassAug/<id>.png or SegmentationClass/<id>.png.
VOC's class names live here (and in the synthetic generator, which draws VOC-named classes).
"""
from __future__ import annotations

import os
import xml.etree.ElementTree as ET

from data_tools.sources.base import Source, SourceError, load_files
from dcsp_dist.data.records import VOC_CLASSES

# Index = class id; 0 is background, 255 is "ignore" in ground-truth masks (docs/method.md §1).
CLASS_NAMES = VOC_CLASSES


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
                if not 1 <= t < len(CLASS_NAMES):
                    problems.append(f"{txt}: tag id {t} outside 1..{len(CLASS_NAMES) - 1}")
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


class VocSource(Source):
    """A VOC-layout root and the ids of one split."""
    NAME, FLAG, COMPANIONS = "voc", "--root", ("--split-list",)
    TITLE = "VOC layout: --root with --split-list"

    def __init__(self, root: str, ids: list, saliency_dir: str | None = None, default_split: str | None = None):
        self.root, self.ids, self.keys = root, list(ids), list(ids)
        self.class_names, self.saliency_dir, self.default_split = list(CLASS_NAMES), saliency_dir, default_split

    @classmethod
    def add_arguments(cls, group) -> None:
        group.add_argument("--root", help="VOC-layout directory (JPEGImages/ ...)")
        group.add_argument("--split-list", help="with --root: file with one image id per line")

    @classmethod
    def from_args(cls, args) -> VocSource:
        problem = check_root_and_list(args.root, args.split_list or "")
        if problem:
            raise SourceError(problem)
        source = cls(args.root, read_id_list(args.split_list), args.saliency_dir,
                     os.path.splitext(os.path.basename(args.split_list))[0])
        source.origin = args.split_list
        return source

    def load(self, key, role: str) -> dict:
        return load_item(self.root, key, role=role, saliency_dir=self.saliency_dir)


