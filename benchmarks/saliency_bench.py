"""Saliency detectors side by side on real photos with masks: one pass against DCSP's two.

    python benchmarks/saliency_bench.py [--images DIR --masks DIR] [--model isnet ...] [--passes 1,2]

Default photos: the three in tests/data/real_voc. The development set, 40 VOC 2012 val
photos with VOC's void (255) left out of every score:
    python benchmarks/saliency_bench.py --images ../shared/data/real_voc_dev/images \\
        --masks ../shared/data/real_voc_dev/masks --model isnet

For each detector (the built-in ones, then each --model: a name from data_tools.saliency.fetch or
an .onnx file) and each number of passes: data_tools.saliency's map of every image, scored
by data_tools.saliency.evaluate (foreground IoU at 0.5, max F, MAE, S-measure; means over the
images), and the seconds per image (median, one process with every core).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _photos(images: str, masks: str) -> list:
    import numpy as np
    from PIL import Image

    from dcsp_dist.data.images import read_rgb
    photos = []
    for n in sorted(n for n in os.listdir(masks) if n.endswith(".png")):
        stem = os.path.splitext(n)[0]
        image = next(os.path.join(images, stem + s) for s in (".png", ".jpg", ".jpeg")
                     if os.path.isfile(os.path.join(images, stem + s)))
        photos.append((read_rgb(image), np.asarray(Image.open(os.path.join(masks, n)))))
    return photos


def _detectors(models: list):
    from data_tools.saliency import fetch as registry
    from data_tools.saliency import maps, onnx_runner
    yield from maps.DETECTORS.items()
    for spec in models:
        path, preset = registry.resolve(spec)
        yield spec, onnx_runner.OnnxDetector(path, onnx_runner.convention_from(preset or "generic"))


def main(argv=None) -> int:
    import numpy as np

    from data_tools.saliency import evaluate, maps
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", default=os.path.join(HERE, "tests", "data", "real_voc", "images"))
    parser.add_argument("--masks", default=os.path.join(HERE, "tests", "data", "real_voc", "masks"))
    parser.add_argument("--model", action="append", default=[], help="a model name or .onnx file (repeatable)")
    parser.add_argument("--passes", default="1,2", help="numbers of passes to compare")
    args = parser.parse_args(argv)
    photos = _photos(args.images, args.masks)
    sides = [side for rgb, _ in photos for side in rgb.shape[:2]]
    print(f"{len(photos)} images, void (255) left out; sides {min(sides)}..{max(sides)} px")
    print("| detector | passes | IoU@0.5 | max F | MAE | S | s/image |\n| --- | --- | --- | --- | --- | --- | --- |")
    for name, detector in _detectors(args.model):
        for passes in (int(p) for p in args.passes.split(",")):
            rows, seconds = [], []
            for rgb, mask in photos:
                start = time.perf_counter()
                sal = maps.hierarchical_saliency(rgb, detector, passes)
                seconds.append(time.perf_counter() - start)
                rows.append(evaluate.scores(sal, mask))
            mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
            print(f"| {name} | {passes} | {mean['iou']:.3f} | {mean['max_f']:.3f} | {mean['mae']:.3f} | "
                  f"{mean['s_measure']:.3f} | {statistics.median(seconds):.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
