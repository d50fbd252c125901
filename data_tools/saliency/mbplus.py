"""MB+ salient-object detection: J. Zhang, S. Sclaroff, Z. Lin, X. Shen, B. Price, R. Mech,
"Minimum Barrier Salient Object Detection at 80 FPS", ICCV 2015. Needs no weights.

A pixel is salient when every path from it to the image border has to cross a strong
"barrier" (the spread between the highest and lowest value along the path): the minimum
barrier distance (MBD) to the border, per Lab channel, summed. MB+ adds
- a backgroundness cue: each border strip's (10% of the side) colour distribution, and every
  pixel's Mahalanobis distance to it; the four maps summed minus the largest (an object may
  touch one border);
- smoothing by morphological reconstruction (an opening then a closing by reconstruction,
  structuring element of radius 50 * sqrt(mean saliency), scaled from the paper's 300 px);
- a centre weight, 1 - distance to the centre / half the diagonal;
- a contrast sigmoid, 1 / (1 + exp(-10 (s - t))), t by Otsu's method.

The MBD is approximated, as in the paper, by repeated scans; here each scan sweeps rows top
to bottom, columns left to right, then back, each sweep vectorised along the other axis
(NumPy; no compiled code). On ``../shared/data/real_voc`` through the hierarchical two
passes it finds about 1.5x the foreground of frequency-tuned: docs/benchmarks.md.
"""
from __future__ import annotations

import cv2
import numpy as np

SCANS = 3            # MBD raster-scan rounds (the paper: 3)
BORDER = 0.1         # backgroundness strips: this share of the shorter side
ALPHA = 50           # smoothing radius: ALPHA * sqrt(mean saliency) at 300 px
SIGMOID_B = 10.0     # contrast sigmoid slope


def _norm(x: np.ndarray) -> np.ndarray:
    return (x - x.min()) / (x.max() - x.min() + 1e-12)


def barrier_distance(image: np.ndarray, scans: int = SCANS) -> np.ndarray:
    """Minimum barrier distance of every pixel to the border, per channel, summed: [H, W]."""
    img = image.astype(np.float32)
    dist = np.full(img.shape, np.inf, np.float32)
    high, low = img.copy(), img.copy()
    dist[0] = dist[-1] = dist[:, 0] = dist[:, -1] = 0

    def relax(to, frm):
        u, lo = np.maximum(high[frm], img[to]), np.minimum(low[frm], img[to])
        cost = u - lo
        better = cost < dist[to]
        dist[to] = np.where(better, cost, dist[to])
        high[to] = np.where(better, u, high[to])
        low[to] = np.where(better, lo, low[to])

    h, w = img.shape[:2]
    for _ in range(scans):
        for i in range(1, h):
            relax(np.s_[i:i + 1], np.s_[i - 1:i])
        for j in range(1, w):
            relax(np.s_[:, j:j + 1], np.s_[:, j - 1:j])
        for i in range(h - 2, -1, -1):
            relax(np.s_[i:i + 1], np.s_[i + 1:i + 2])
        for j in range(w - 2, -1, -1):
            relax(np.s_[:, j:j + 1], np.s_[:, j + 1:j + 2])
    return dist.sum(-1)


def backgroundness(lab: np.ndarray) -> np.ndarray:
    """Mahalanobis distance to each border strip's colours; the four summed minus the largest."""
    h, w = lab.shape[:2]
    r = max(1, int(round(BORDER * min(h, w))))
    pixels = lab.reshape(-1, 3).astype(np.float64)
    maps = []
    for strip in (lab[:r], lab[-r:], lab[:, :r], lab[:, -r:]):
        colours = strip.reshape(-1, 3).astype(np.float64)
        inverse = np.linalg.inv(np.cov(colours.T) + np.eye(3) * 1e-3)
        d = pixels - colours.mean(0)
        maps.append(_norm(np.sqrt(np.einsum("ij,jk,ik->i", d, inverse, d)).reshape(h, w)))
    maps = np.stack(maps)
    return _norm(maps.sum(0) - maps.max(0))


def _reconstruct(marker: np.ndarray, mask: np.ndarray, by_dilation: bool, limit: int = 500) -> np.ndarray:
    """Morphological reconstruction of ``marker`` under (dilation) or over (erosion) ``mask``."""
    kernel = np.ones((3, 3), np.uint8)
    for _ in range(limit):
        grown = np.minimum(cv2.dilate(marker, kernel), mask) if by_dilation \
            else np.maximum(cv2.erode(marker, kernel), mask)
        if np.array_equal(grown, marker):
            break
        marker = grown
    return marker


def smooth(sal: np.ndarray) -> np.ndarray:
    """Opening then closing by reconstruction, radius ALPHA * sqrt(mean) at 300 px."""
    radius = max(1, int(round(ALPHA * np.sqrt(sal.mean()) * min(sal.shape) / 300)))
    element = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    sal = _reconstruct(cv2.erode(sal, element), sal, by_dilation=True)
    return _reconstruct(cv2.dilate(sal, element), sal, by_dilation=False)


def mb_plus(rgb: np.ndarray) -> np.ndarray:
    """MB+ saliency of an RGB uint8 image, [H, W] in [0, 1]."""
    lab = cv2.cvtColor(np.ascontiguousarray(rgb, np.uint8), cv2.COLOR_RGB2LAB).astype(np.float32)
    sal = _norm(_norm(barrier_distance(cv2.GaussianBlur(lab, (0, 0), 1.0))) + backgroundness(lab))
    sal = smooth(sal.astype(np.float32))
    h, w = sal.shape
    yy, xx = np.mgrid[0:h, 0:w]
    sal = _norm(sal * (1 - np.hypot(yy - h / 2, xx - w / 2) / np.hypot(h / 2, w / 2)))
    otsu, _ = cv2.threshold(np.round(sal * 255).astype(np.uint8), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return _norm(1 / (1 + np.exp(-SIGMOID_B * (sal - otsu / 255)))).astype(np.float32)
