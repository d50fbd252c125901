"""How good are saliency maps? Scores against masks, per image and on average.

    python -m data_tools.saliency.evaluate --saliency saliency/ --masks masks/ [--json scores.json]

Pairs ``<saliency>/<stem>.png`` (0..255) with ``<masks>/<stem>.png`` (class-index PNG:
foreground = any class but 0; 255, VOC's "void" band around object borders, is left out of
every score, as segmentation evaluation leaves it out) and prints, per image and on average:
- foreground IoU with the map thresholded at 0.5;
- max F-measure (beta^2 = 0.3, the salient-object benchmarks' choice) over 255 thresholds;
- MAE, the mean absolute difference between the map (0..1) and the binary foreground;
- S-measure (Fan et al., ICCV 2017, alpha = 0.5): structural similarity of objects and regions
  (it needs the whole image: there, void pixels take the mask's value, so they neither add
  nor cost).
Judge a detector (``data_tools.saliency --detector/--model``) on a labelled handful before
building records. The formulas are written here (NumPy): pysodmetrics has them too, but it
pins opencv below 5 and brings SciPy, scikit-image and scikit-learn for four formulas.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np
from PIL import Image

from dcsp_dist.core.console import say
from dcsp_dist.core.errors import UserError

EPS = np.finfo(np.float64).eps


VOID = 255


def foreground(mask: np.ndarray) -> np.ndarray:
    return (mask > 0) & (mask != VOID)


def iou_at_half(sal: np.ndarray, fg: np.ndarray) -> float:
    pred = sal >= 0.5
    union = (pred | fg).sum()
    return float((pred & fg).sum() / union) if union else 1.0


def max_f(sal: np.ndarray, fg: np.ndarray, beta2: float = 0.3) -> float:
    """Max over thresholds 1/255..1 of (1 + b2) P R / (b2 P + R)."""
    levels = np.round(sal * 255).astype(np.int64)
    fg_hist = np.bincount(levels[fg], minlength=256)[::-1].cumsum()      # >= threshold, high to low
    all_hist = np.bincount(levels.ravel(), minlength=256)[::-1].cumsum()
    tp, predicted = fg_hist[:-1].astype(np.float64), all_hist[:-1].astype(np.float64)  # thresholds 255..1
    precision, recall = tp / np.maximum(predicted, EPS), tp / max(fg.sum(), EPS)
    f = (1 + beta2) * precision * recall / np.maximum(beta2 * precision + recall, EPS)
    return float(f.max())


def mae(sal: np.ndarray, fg: np.ndarray) -> float:
    return float(np.abs(sal - fg).mean())


def s_measure(sal: np.ndarray, fg: np.ndarray, alpha: float = 0.5) -> float:
    """Fan et al. 2017: alpha * object score + (1 - alpha) * region score."""
    y = fg.mean()
    if y == 0:
        return float(1 - sal.mean())
    if y == 1:
        return float(sal.mean())
    gt = fg.astype(np.float64)
    obj = y * _object(sal * gt, fg) + (1 - y) * _object((1 - sal) * (1 - gt), ~fg)
    return float(max(alpha * obj + (1 - alpha) * _region(sal.astype(np.float64), gt), 0.0))


def _object(x: np.ndarray, where: np.ndarray) -> float:
    values = x[where]
    mean = values.mean()
    return 2 * mean / (mean ** 2 + 1 + values.std(ddof=1) + EPS)


def _region(sal: np.ndarray, gt: np.ndarray) -> float:
    h, w = gt.shape
    cy, cx = np.argwhere(gt > 0.5).mean(axis=0).round().astype(int) + 1
    total, score = h * w, 0.0
    for rows, cols in ((slice(0, cy), slice(0, cx)), (slice(0, cy), slice(cx, w)),
                       (slice(cy, h), slice(0, cx)), (slice(cy, h), slice(cx, w))):
        part_s, part_g = sal[rows, cols], gt[rows, cols]
        if part_g.size:
            score += part_g.size / total * _ssim(part_s, part_g)
    return score


def _ssim(x: np.ndarray, y: np.ndarray) -> float:
    n = x.size
    mx, my = x.mean(), y.mean()
    if n < 2:
        return 1.0 if mx == my else 0.0
    sx, sy = ((x - mx) ** 2).sum() / (n - 1), ((y - my) ** 2).sum() / (n - 1)
    sxy = ((x - mx) * (y - my)).sum() / (n - 1)
    a, b = 4 * mx * my * sxy, (mx ** 2 + my ** 2) * (sx + sy)
    if a != 0:
        return a / (b + EPS)
    return 1.0 if b == 0 else 0.0


def scores(sal: np.ndarray, mask: np.ndarray) -> dict:
    """All four scores of one map (float 0..1, [H, W]) against one class-index mask, void
    (255) left out."""
    fg, valid = foreground(mask), mask != VOID
    whole = np.where(valid, sal, fg.astype(sal.dtype))
    return {"iou": iou_at_half(sal[valid], fg[valid]), "max_f": max_f(sal[valid], fg[valid]),
            "mae": mae(sal[valid], fg[valid]), "s_measure": s_measure(whole, fg)}


def evaluate(saliency_dir: str, masks_dir: str) -> dict:
    """{stem: scores} for every mask with a map, plus "mean"; ValueError naming what is missing."""
    for flag, path in (("--saliency", saliency_dir), ("--masks", masks_dir)):
        if not os.path.isdir(path):
            raise UserError(f"{flag} {path}: no such directory")
    stems = sorted(os.path.splitext(n)[0] for n in os.listdir(masks_dir) if n.lower().endswith(".png"))
    if not stems:
        raise UserError(f"--masks {masks_dir}: no .png masks there")
    missing = [s for s in stems if not os.path.isfile(os.path.join(saliency_dir, s + ".png"))]
    if missing:
        raise UserError(f"--saliency {saliency_dir}: no map for {len(missing)} mask(s), e.g. {missing[0]}.png")
    out = {}
    for stem in stems:
        sal = np.asarray(Image.open(os.path.join(saliency_dir, stem + ".png")).convert("L"), np.float64) / 255
        mask = np.asarray(Image.open(os.path.join(masks_dir, stem + ".png")))
        if sal.shape != mask.shape:
            raise UserError(f"{saliency_dir}/{stem}.png is {sal.shape[1]}x{sal.shape[0]}, its mask "
                             f"{mask.shape[1]}x{mask.shape[0]}")
        out[stem] = scores(sal, mask)
    out["mean"] = {k: float(np.mean([out[s][k] for s in stems])) for k in out[stems[0]]}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_tools.saliency.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--saliency", required=True, help="folder of <stem>.png saliency maps")
    parser.add_argument("--masks", required=True, help="folder of <stem>.png class-index masks")
    parser.add_argument("--json", help="also write the scores here")
    args = parser.parse_args(argv)
    try:
        result = evaluate(args.saliency, args.masks)
    except ValueError as exc:
        say(f"error: {exc}", err=True)
        return 2
    say(f"{'image':24s} {'IoU@0.5':>8s} {'max F':>8s} {'MAE':>8s} {'S':>8s}")
    for stem, row in result.items():
        say(f"{stem:24s} {row['iou']:8.3f} {row['max_f']:8.3f} {row['mae']:8.3f} {row['s_measure']:8.3f}")
    if args.json:
        from dcsp_dist.core.atomic import write_json
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
