"""Confusion matrices and mIoU (docs/method.md §5). Ranks add matrices up; results come from the sum."""
from __future__ import annotations

import numpy as np


def confusion_matrix(labels, predictions, num_classes: int) -> np.ndarray:
    """int64 [C, C] (rows: ground truth, columns: prediction) over pixels with label < C."""
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    predictions = np.asarray(predictions).reshape(-1).astype(np.int64)
    keep = labels < num_classes
    index = labels[keep] * num_classes + predictions[keep]
    return np.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes).astype(np.int64)


def scores(matrix: np.ndarray) -> dict:
    """Per-class IoU = TP / (TP + FP + FN), mIoU and pixel accuracy from a confusion matrix.

    Classes that occur neither in the labels nor in the predictions have no IoU (NaN) and
    are left out of the mean; on VOC val every class occurs.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    tp = np.diag(matrix)
    union = matrix.sum(0) + matrix.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
    total = matrix.sum()
    return {"iou": iou, "miou": float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
            "pixel_accuracy": float(tp.sum() / total) if total else float("nan")}


def format_table(result: dict, class_names, title: str = "") -> str:
    """A per-class IoU table for the console."""
    lines = [title] if title else []
    lines.append(f"{'class':<14}{'IoU':>8}")
    for name, iou in zip(class_names, result["iou"]):
        lines.append(f"{name:<14}{'   n/a' if np.isnan(iou) else f'{100 * iou:8.2f}'}")
    lines.append(f"{'mIoU':<14}{100 * result['miou']:8.2f}")
    lines.append(f"{'pixel acc.':<14}{100 * result['pixel_accuracy']:8.2f}")
    return "\n".join(lines)
