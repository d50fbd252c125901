"""A COCO-format instances file written from the synthetic VOC set, for the COCO tests.

Categories have non-contiguous ids in unsorted order; instances are RLE (compressed) or
polygons; one crowd region is uncompressed RLE; some images have no annotation at all.
"""
import json

import numpy as np
from PIL import Image

# Categories in the file's order (ids deliberately non-contiguous and unsorted).
CATEGORIES = [{"id": 44, "name": "bottle"}, {"id": 3, "name": "car"}, {"id": 18, "name": "dog"}]
# Synthetic VOC class -> COCO category id: triangle -> car, rectangle/square -> bottle, rest -> dog.
VOC_TO_CAT = {1: 3, 6: 44, 20: 44, 8: 18, 15: 18}
NAMES = ["background", "bottle", "car", "dog"]          # the expected class list
CAT_TO_LABEL = {44: 1, 3: 2, 18: 3}


def write_coco(synth_voc, split, path, empty=(0,), polygon_image=1, crowd_image=2, bad_category=False):
    """Write ``path``; returns the file's dict. ``empty``: indices of images left unannotated."""
    from pycocotools import mask as mask_utils
    ids = (synth_voc / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()
    images, anns = [], []
    for n, image_id in enumerate(ids):
        mask = np.asarray(Image.open(synth_voc / "SegmentationClass" / f"{image_id}.png"))
        h, w = mask.shape
        images.append({"id": 1000 + n, "file_name": f"{image_id}.jpg", "height": h, "width": w})
        if n in empty:
            continue
        for voc_class in sorted(set(np.unique(mask).tolist()) - {0, 255}):
            region = np.asfortranarray((mask == voc_class).astype(np.uint8))
            rle = mask_utils.encode(region)
            rle["counts"] = rle["counts"].decode("ascii")
            anns.append({"id": len(anns) + 1, "image_id": 1000 + n, "category_id": VOC_TO_CAT[voc_class],
                         "segmentation": rle, "area": float(region.sum()), "iscrowd": 0,
                         "bbox": [0, 0, w, h]})
        if n == polygon_image:   # a small polygon instance (a "car") in the top-left corner
            poly = [2.0, 2.0, 30.0, 2.0, 30.0, 24.0, 2.0, 24.0]
            anns.append({"id": len(anns) + 1, "image_id": 1000 + n, "category_id": 3, "segmentation": [poly],
                         "area": 28.0 * 22.0, "iscrowd": 0, "bbox": [2, 2, 28, 22]})
        if n == crowd_image:     # an uncompressed-RLE crowd region over the bottom rows ("bottle")
            crowd = np.zeros((h, w), np.uint8, order="F")
            crowd[h - 12:, :] = 1
            counts, flat, run, value = [], crowd.flatten(order="F"), 0, 0
            for v in flat:
                if v != value:
                    counts.append(run)
                    run, value = 0, v
                run += 1
            counts.append(run)
            anns.append({"id": len(anns) + 1, "image_id": 1000 + n, "category_id": 44,
                         "segmentation": {"size": [h, w], "counts": counts}, "area": float(crowd.sum()),
                         "iscrowd": 1, "bbox": [0, h - 12, w, 12]})
    if bad_category:
        anns.append({"id": len(anns) + 1, "image_id": 1000 + 3, "category_id": 99, "segmentation": [[1, 1, 5, 1, 5, 5]],
                     "area": 8.0, "iscrowd": 0, "bbox": [1, 1, 4, 4]})
    data = {"images": images, "annotations": anns, "categories": CATEGORIES}
    path.write_text(json.dumps(data))
    return data
