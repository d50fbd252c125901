"""MS COCO (2014 or any file in its instances format) as a data_tools.build source.

    python -m data_tools.build --coco-annotations annotations/instances_train2014.json \
        --images train2014/ --split train --out records/coco [--saliency-dir DIR]

The rule (there is no single official one for weakly supervised segmentation on COCO):
- classes: background (0), then the file's categories in the file's order (1..K; COCO's
  own ids are not contiguous and are only used to look categories up);
- tags: every category with at least one annotation in the image, crowd annotations included;
- masks (evaluation splits): the non-crowd instances, polygons or RLE, painted with their
  class in order of decreasing area, so smaller instances lie on top; crowd regions are 255
  (ignored) where no instance covers them; an image with no annotation is all background;
- training splits leave images without annotations out (no tags to learn from) and list
  them in ``<split>.skipped.json``; evaluation splits keep them.
The annotations are read with pycocotools; the masks are decoded with its RLE code.
"""
from __future__ import annotations

import os

import numpy as np

from data_tools.sources.base import Source, SourceError, class_names_problem, load_files


class CocoError(SourceError):
    """The annotation file cannot be used (one line naming the file and what is wrong)."""


def read_coco(annotations: str):
    """(class_names, [per-image key]) from an instances file, in the file's image order.

    Each key is a plain dict (picklable for the reader processes): file name, size and the
    image's annotations reduced to what the rule needs.
    """
    from pycocotools.coco import COCO

    if not os.path.isfile(annotations):
        raise CocoError(f"--coco-annotations {annotations}: no such file")
    try:
        import contextlib
        import io
        with contextlib.redirect_stdout(io.StringIO()):   # COCO() prints progress lines
            coco = COCO(annotations)
    except (ValueError, KeyError, TypeError, AssertionError) as exc:
        raise CocoError(f"--coco-annotations {annotations}: not a COCO instances file ({exc!r})") from None
    categories = coco.dataset.get("categories") or []
    if not categories:
        raise CocoError(f"--coco-annotations {annotations}: no categories")
    names = [str(c["name"]) for c in categories]
    problem = class_names_problem(names)
    if problem:
        raise CocoError(f"--coco-annotations {annotations}, its categories: {problem}")
    index = {int(c["id"]): i + 1 for i, c in enumerate(categories)}
    keys = []
    for image in coco.dataset.get("images", []):
        anns, problems = [], []
        for ann in coco.imgToAnns.get(image["id"], []):
            if int(ann["category_id"]) not in index:
                problems.append(f"{annotations}: annotation {ann.get('id')} of image {image['file_name']} has "
                                f"category_id {ann['category_id']}, which is not among the categories")
                continue
            anns.append({"segmentation": ann.get("segmentation"), "iscrowd": int(ann.get("iscrowd", 0)),
                         "area": float(ann.get("area", 0.0)), "label": index[int(ann["category_id"])]})
        keys.append({"file_name": image["file_name"], "height": int(image["height"]),
                     "width": int(image["width"]), "anns": anns, "problems": problems})
    return ["background"] + names, keys


def _decode(segmentation, height: int, width: int) -> np.ndarray:
    """Polygons, uncompressed or compressed RLE -> bool [H, W] (pycocotools.mask)."""
    from pycocotools import mask as mask_utils
    if isinstance(segmentation, list):            # polygons
        rles = mask_utils.frPyObjects(segmentation, height, width)
        rle = mask_utils.merge(rles)
    elif isinstance(segmentation.get("counts"), list):   # uncompressed RLE (crowd regions)
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = segmentation
    return mask_utils.decode(rle).astype(bool)


def paint_mask(anns: list[dict], height: int, width: int) -> np.ndarray:
    """The evaluation mask of one image by the rule above (uint8, 255 = crowd, ignored)."""
    mask = np.zeros((height, width), np.uint8)
    covered = np.zeros((height, width), bool)
    instances = sorted((a for a in anns if not a["iscrowd"]), key=lambda a: -a["area"])
    for ann in instances:   # largest first, so smaller instances end on top
        region = _decode(ann["segmentation"], height, width)
        mask[region] = ann["label"]
        covered |= region
    for ann in anns:
        if ann["iscrowd"]:
            mask[_decode(ann["segmentation"], height, width) & ~covered] = 255
    return mask


def load_coco_item(images: str, key: dict, role: str, saliency_dir: str | None = None,
                   num_classes: int = 0) -> dict:
    """The record item of one COCO image (runs in a reader process)."""
    image_id = os.path.splitext(key["file_name"])[0]
    problems = list(key["problems"])
    if role == "train" and not key["anns"] and not problems:   # left out by the rule, not an error
        return {"id": image_id, "problems": [], "skip": "no annotations, so no tags (training splits leave it out)"}
    tags = sorted({a["label"] for a in key["anns"]})
    mask = None
    if role == "eval" and not problems:
        try:
            mask = paint_mask(key["anns"], key["height"], key["width"])
        except (ValueError, TypeError, KeyError) as exc:
            problems.append(f"{key['file_name']}: unreadable segmentation ({exc!r})")
    stem = os.path.join(saliency_dir, image_id) if saliency_dir else None
    item = load_files(image_id, os.path.join(images, key["file_name"]), tags, problems, role, stem, [],
                      num_classes, mask=mask)
    if "height" in item and (item["height"], item["width"]) != (key["height"], key["width"]):
        problems.append(f"{key['file_name']}: the image is {item['width']}x{item['height']}, the annotations "
                        f"say {key['width']}x{key['height']}")
    return item


class CocoSource(Source):
    """An instances file and the folder of its images."""
    NAME, FLAG, COMPANIONS = "coco", "--coco-annotations", ("--images",)
    TITLE = "MS COCO: --coco-annotations with --images (and --split)"

    def __init__(self, annotations: str, images: str, saliency_dir: str | None = None):
        if not images or not os.path.isdir(images):
            why = f"; {images} is not a directory" if images else ""
            raise SourceError(f"--coco-annotations needs --images DIR (the folder of its images){why}")
        self.class_names, self.keys = read_coco(annotations)
        self.ids = [os.path.splitext(k["file_name"])[0] for k in self.keys]
        self.root, self.saliency_dir, self.origin = os.path.abspath(images), saliency_dir, annotations

    @classmethod
    def add_arguments(cls, group) -> None:
        group.add_argument("--coco-annotations", help="COCO instances JSON (e.g. annotations/instances_train2014.json)")
        group.add_argument("--images", help="with --coco-annotations: the folder of the file's images")

    @classmethod
    def from_args(cls, args) -> CocoSource:
        if not args.split:
            raise SourceError("--coco-annotations needs --split (e.g. train or val)")
        return cls(args.coco_annotations, args.images, args.saliency_dir)

    def load(self, key, role: str) -> dict:
        return load_coco_item(self.root, key, role=role, saliency_dir=self.saliency_dir,
                              num_classes=len(self.class_names))
