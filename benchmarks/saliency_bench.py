"""The built-in saliency detectors side by side on real photos with masks.

    python benchmarks/saliency_bench.py [--images tests/data/real_voc/images --masks tests/data/real_voc/masks]

For each detector: the full hierarchical two-pass saliency (data_tools.saliency) on every
image, scored by data_tools.saliency_eval (foreground IoU at 0.5, max F, MAE, S-measure),
and the seconds per image (median over the images, one process), with the image sizes.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv=None) -> int:
    import numpy as np
    from PIL import Image

    from data_tools import saliency, saliency_eval
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", default=os.path.join(HERE, "tests", "data", "real_voc", "images"))
    parser.add_argument("--masks", default=os.path.join(HERE, "tests", "data", "real_voc", "masks"))
    args = parser.parse_args(argv)
    names = sorted(n for n in os.listdir(args.masks) if n.endswith(".png"))
    photos = []
    for n in names:
        stem = os.path.splitext(n)[0]
        image = next(os.path.join(args.images, stem + s) for s in (".png", ".jpg", ".jpeg")
                     if os.path.isfile(os.path.join(args.images, stem + s)))
        photos.append((np.asarray(Image.open(image).convert("RGB")), np.asarray(Image.open(os.path.join(args.masks, n)))))
    print(f"{len(photos)} images, sizes {sorted({p[0].shape[1::-1] for p in photos})}")
    print(f"{'detector':18s} {'IoU@0.5':>8s} {'max F':>7s} {'MAE':>7s} {'S':>7s} {'s/image':>8s}")
    for name, detector in saliency.DETECTORS.items():
        rows, seconds = [], []
        for rgb, mask in photos:
            start = time.perf_counter()
            sal = saliency.hierarchical_saliency(rgb, detector)
            seconds.append(time.perf_counter() - start)
            rows.append(saliency_eval.scores(sal, mask))
        mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
        print(f"{name:18s} {mean['iou']:8.3f} {mean['max_f']:7.3f} {mean['mae']:7.3f} {mean['s_measure']:7.3f} "
              f"{statistics.median(seconds):8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
