"""Shared by the benchmarks: synthetic images at PASCAL VOC's typical size."""
import os

import numpy as np
from PIL import Image

VOC_SIZE = (500, 375)  # width, height of most VOC images


def synth_voc_sized(root: str, num: int, split: str, seed: int) -> list:
    """Synthetic VOC-layout images resized to 500x375 (image/saliency bilinear, mask nearest)."""
    from data_tools import synth
    splits = synth.generate(root, num if split == "train" else 0, num if split == "val" else 0, seed=seed)
    ids = splits[split]
    for i in ids:
        jpg = os.path.join(root, "JPEGImages", i + ".jpg")
        Image.open(jpg).resize(VOC_SIZE, Image.BILINEAR).save(jpg, quality=92)
        sal = os.path.join(root, "Saliency", i + ".png")
        Image.open(sal).resize(VOC_SIZE, Image.BILINEAR).save(sal)
        png = os.path.join(root, "SegmentationClass", i + ".png")
        mask = Image.open(png)
        big = Image.fromarray(np.asarray(mask)).resize(VOC_SIZE, Image.NEAREST)
        big.putpalette(mask.getpalette())
        big.save(png)
    return ids
