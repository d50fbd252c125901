"""A deterministic synthetic dataset in the VOC layout: the built-in default for demo/tests.

    python -m data_tools.synth --out data/synth --num-train 400 --num-val 60 --seed 0
    python -m data_tools.synth --out data/other --num-train 40 --num-val 20 --seed 7 \
        --image-size 200,260 --object-scale 1.3 --style other

Five VOC classes, each a distinct shape with its own colour and texture, 1-3 objects per
image on a cluttered background. Saliency maps are imperfect the way real detectors are:
blurred, noisy, sometimes missing an object, sometimes covering background clutter.
Writes JPEGImages/, Annotations/ (XML), Saliency/ (PNG), SegmentationClass/ (palette PNG)
and ImageSets/Segmentation/{train,val}.txt.
"""
from __future__ import annotations

import argparse
import os
import sys
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from data_tools.sources.voc import CLASS_NAMES
from dcsp_dist.core.console import say
from dcsp_dist.data.palette import palette

# class id -> (shape, base RGB colour, texture)
CLASSES = {
    1: ("triangle", (220, 40, 40), "plain"),        # aeroplane
    6: ("rectangle", (235, 200, 30), "hstripes"),   # bus
    8: ("ellipse", (240, 130, 20), "dots"),         # cat
    15: ("capsule", (40, 70, 220), "vstripes"),     # person
    20: ("square", (30, 190, 80), "checker"),       # tvmonitor
}
# --style other: the same classes with other shapes, colours and textures (a set the demo's
# recipe was not tuned on).
OTHER_CLASSES = {
    1: ("ellipse", (60, 200, 220), "checker"),
    6: ("capsule", (200, 60, 200), "plain"),
    8: ("square", (150, 220, 60), "vstripes"),
    15: ("triangle", (240, 240, 240), "hstripes"),
    20: ("rectangle", (120, 60, 20), "dots"),
}
STYLES = {"default": CLASSES, "other": OTHER_CLASSES}


def _texture(kind: str, h: int, w: int, rng) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    period = rng.integers(5, 9)
    if kind == "hstripes":
        t = (yy // period) % 2
    elif kind == "vstripes":
        t = (xx // period) % 2
    elif kind == "checker":
        t = ((yy // period) + (xx // period)) % 2
    elif kind == "dots":
        t = (((yy % period) - period / 2) ** 2 + ((xx % period) - period / 2) ** 2 < (period / 3) ** 2)
    else:
        t = np.zeros((h, w))
    return 1.0 - 0.35 * t.astype(np.float32)


def _shape_mask(shape: str, h: int, w: int, box) -> np.ndarray:
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    x0, y0, x1, y1 = box
    if shape == "triangle":
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=255)
    elif shape == "rectangle":
        draw.rectangle([x0, y0 + (y1 - y0) * 0.25, x1, y1], fill=255)
    elif shape == "ellipse":
        draw.ellipse([x0, y0, x1, y1], fill=255)
    elif shape == "capsule":
        cx, wid = (x0 + x1) / 2, (x1 - x0) * 0.3
        draw.rounded_rectangle([cx - wid, y0, cx + wid, y1], radius=wid, fill=255)
        draw.ellipse([cx - wid * 1.4, y0 - wid * 0.2, cx + wid * 1.4, y0 + wid * 2.4], fill=255)
    else:  # square with a dark frame
        s = min(x1 - x0, y1 - y0)
        draw.rectangle([x0, y0, x0 + s, y0 + s], fill=255)
    return np.asarray(canvas) > 127


def make_example(index: int, seed: int, image_size=(128, 176), object_scale: float = 1.0, style: str = "default"):
    """One image: (rgb uint8 [H,W,3], mask uint8 [H,W], saliency uint8 [H,W], class ids).

    ``image_size``: (smallest, largest) side in pixels; ``object_scale`` multiplies the
    objects' box sizes (0.35-0.65 of the image side by default, at most 0.95)."""
    classes = STYLES[style]
    rng = np.random.default_rng([seed, index])
    h, w = int(rng.integers(image_size[0], image_size[1] + 1)), int(rng.integers(image_size[0], image_size[1] + 1))
    # Cluttered background: smooth colour gradient, noise and grey-ish blobs.
    base = rng.uniform(60, 160, size=3)
    grad = np.linspace(-30, 30, w)[None, :, None] * rng.uniform(-1, 1, size=3)
    img = np.clip(base + grad + rng.normal(0, 12, (h, w, 3)), 0, 255)
    clutter = Image.fromarray(img.astype(np.uint8))
    draw = ImageDraw.Draw(clutter)
    for _ in range(int(rng.integers(4, 10))):
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(4, 14)
        grey = rng.uniform(70, 190)
        col = tuple(int(np.clip(grey + rng.normal(0, 20), 0, 255)) for _ in range(3))
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=col)
    img = np.asarray(clutter).astype(np.float32)

    mask = np.zeros((h, w), np.uint8)
    ids = list(classes)
    chosen = [int(c) for c in rng.choice(ids, size=int(rng.integers(1, 4)), replace=True)]
    saliency = np.zeros((h, w), np.float32)
    present = []
    for cls in chosen:
        shape, colour, texture = classes[cls]
        bw = min(rng.uniform(0.35, 0.6) * object_scale, 0.95) * w
        bh = min(rng.uniform(0.35, 0.65) * object_scale, 0.95) * h
        x0, y0 = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
        region = _shape_mask(shape, h, w, (x0, y0, x0 + bw, y0 + bh))
        if region.sum() < 80:
            continue
        shade = np.asarray(colour, np.float32) * rng.uniform(0.8, 1.15)
        tex = _texture(texture, h, w, rng)[..., None]
        obj = np.clip(shade[None, None] * tex + rng.normal(0, 8, (h, w, 3)), 0, 255)
        img[region] = obj[region]
        mask[region] = cls
        if rng.uniform() > 0.12:           # a detector misses some objects
            saliency[region] = rng.uniform(0.75, 1.0)
        present.append(cls)
    visible = sorted({int(c) for c in np.unique(mask) if c})
    if not visible:                        # keep at least one object
        return make_example(index + 100_003, seed, image_size, object_scale, style)
    if rng.uniform() < 0.35:               # ... and fires on some background clutter
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(8, 22)
        yy, xx = np.mgrid[0:h, 0:w]
        saliency = np.maximum(saliency, ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r) * rng.uniform(0.4, 0.9))
    sal_img = Image.fromarray((saliency * 255).astype(np.uint8)).filter(
        ImageFilter.GaussianBlur(radius=float(rng.uniform(1.5, 4.0))))
    sal = np.asarray(sal_img).astype(np.float32) + rng.normal(0, 10, (h, w))
    sal = np.clip(sal, 0, 255).astype(np.uint8)
    return np.clip(img, 0, 255).astype(np.uint8), mask, sal, visible


def _annotation_xml(image_id: str, h: int, w: int, classes: list[int]) -> str:
    objects = "".join(f"  <object><name>{CLASS_NAMES[c]}</name></object>\n" for c in classes)
    return (f"<annotation>\n  <filename>{image_id}.jpg</filename>\n"
            f"  <size><width>{w}</width><height>{h}</height><depth>3</depth></size>\n{objects}</annotation>\n")


def _write(args):
    out, image_id, index, seed, options = args
    rgb, mask, sal, classes = make_example(index, seed, **options)
    h, w = mask.shape
    Image.fromarray(rgb).save(os.path.join(out, "JPEGImages", image_id + ".jpg"), quality=92)
    with open(os.path.join(out, "Annotations", image_id + ".xml"), "w") as fh:
        fh.write(_annotation_xml(image_id, h, w, classes))
    Image.fromarray(sal).save(os.path.join(out, "Saliency", image_id + ".png"))
    pal = Image.fromarray(mask, mode="P")
    pal.putpalette(palette())
    pal.save(os.path.join(out, "SegmentationClass", image_id + ".png"))
    return image_id


def generate(out: str, num_train: int, num_val: int, seed: int = 0, workers: int | None = None,
             image_size=(128, 176), object_scale: float = 1.0, style: str = "default") -> dict:
    """Write the dataset under ``out`` and return {split: [ids]}. Deterministic in ``seed``
    (and the options, see ``make_example``)."""
    options = {"image_size": tuple(image_size), "object_scale": float(object_scale), "style": style}
    for sub in ("JPEGImages", "Annotations", "Saliency", "SegmentationClass", "ImageSets/Segmentation"):
        os.makedirs(os.path.join(out, sub), exist_ok=True)
    splits = {"train": [f"synth_train_{i:05d}" for i in range(num_train)],
              "val": [f"synth_val_{i:05d}" for i in range(num_val)]}
    jobs = [(out, image_id, (0 if split == "train" else 1_000_000) + i, seed, options)
            for split, ids in splits.items() for i, image_id in enumerate(ids)]
    with ProcessPoolExecutor(max_workers=workers or os.cpu_count()) as pool:
        list(pool.map(_write, jobs, chunksize=16))
    for split, ids in splits.items():
        path = os.path.join(out, "ImageSets", "Segmentation", f"{split}.txt")
        with open(path + ".tmp", "w") as fh:
            fh.write("".join(i + "\n" for i in ids))
        os.replace(path + ".tmp", path)
    return splits


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_tools.synth", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output VOC-layout directory")
    parser.add_argument("--num-train", type=int, default=400)
    parser.add_argument("--num-val", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--image-size", default="128,176", metavar="MIN,MAX",
                        help="smallest and largest image side in pixels (default 128,176)")
    parser.add_argument("--object-scale", type=float, default=1.0,
                        help="multiplies the objects' sizes (default 1: 0.35-0.65 of the image side)")
    parser.add_argument("--style", choices=sorted(STYLES), default="default",
                        help="'other': the classes drawn with other shapes, colours and textures")
    args = parser.parse_args(argv)
    if args.num_train < 0 or args.num_val < 0:
        parser.error("--num-train and --num-val must be >= 0")
    try:
        size = tuple(int(v) for v in args.image_size.split(","))
    except ValueError:
        size = ()
    if len(size) != 2 or not 32 <= size[0] <= size[1]:
        parser.error(f"--image-size {args.image_size!r}: expected MIN,MAX with 32 <= MIN <= MAX")
    if not 0.1 <= args.object_scale <= 2.5:
        parser.error(f"--object-scale {args.object_scale}: expected a value in [0.1, 2.5]")
    splits = generate(args.out, args.num_train, args.num_val, args.seed, args.workers, size, args.object_scale,
                      args.style)
    say(f"wrote {len(splits['train'])} train and {len(splits['val'])} val images to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
