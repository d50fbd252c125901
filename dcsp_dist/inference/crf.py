"""Dense CRF post-processing (Kraehenbuehl & Koltun) with the docs/method.md §5 parameters, over the
labels that can matter.

The mean-field cost grows linearly with the number of labels, and on an image almost all
of COCO's 81 (or VOC's 21) have a probability near zero everywhere. With Potts weights
(Gaussian 3 + bilateral 4) the pairwise term moves a label's energy by at most about 7
relative to another's, so a label whose probability stays below e^-7 of the best label's at
every pixel can never take a pixel. The CRF therefore runs over the labels whose ratio to
the pixel's best label reaches e^-margin somewhere in the image (``label_margin``, 6 by
default; always at least two labels), renormalised, and the result is mapped back to the
full label ids. ``label_margin = 0`` runs over every label. The bound is loose in practice:
in benchmarks/crf_bench.py margins 4 to 8 all label at least 99.9997 % of the pixels as
the full CRF does (6 and above: every pixel, on every map measured), so the default is 6,
one nat under the bound.

NumPy and pydensecrf only, so it can run in worker processes next to the network; only the
kept labels' probabilities ([k, H, W] float32) travel to them.
"""
from __future__ import annotations

import numpy as np
import pydensecrf.densecrf as dcrf
from pydensecrf.utils import unary_from_softmax

from dcsp_dist.config import CRFConfig

UNARY_CLIP = 1e-5   # pydensecrf.utils.unary_from_softmax's floor on probabilities



def select_labels(probs: np.ndarray, margin: float) -> tuple[np.ndarray, np.ndarray]:
    """The labels the CRF needs and their renormalised probabilities.

    Args:
      probs: [H, W, C] softmax probabilities.
      margin: keep label c if p_c(x) >= e^-margin * max_l p_l(x) at some pixel x (0: all).
    Returns: (labels [k] int64 ascending, k >= 2 (or C), probabilities [k, H, W] float32
      summing to 1 per pixel; when every label is kept, ``probs`` as they are, transposed).
    """
    c = probs.shape[-1]
    planes = np.ascontiguousarray(np.moveaxis(probs, -1, 0), dtype=np.float32)   # [C, H, W]
    if margin <= 0 or c <= 2:
        return np.arange(c), planes
    # As the unary sees them (-log of probabilities clipped at UNARY_CLIP): label c reaches
    # e^-margin of the best where max(p_c, clip) >= e^-margin * best. Where the clip alone
    # gets there, every label does; elsewhere it is p_c >= e^-margin * best.
    floor = planes.max(axis=0) * np.float32(np.exp(-margin))                    # [H, W]
    if floor.min() <= UNARY_CLIP:
        return np.arange(c), planes
    labels = np.array([label for label in range(c) if (planes[label] >= floor).any()], np.int64)
    if len(labels) < 2:
        labels = np.sort(np.argsort(planes.max(axis=(1, 2)))[-2:])
    if len(labels) == c:
        return labels, planes
    sub = planes[labels]
    sub /= sub.sum(axis=0, keepdims=True)
    return labels, sub


def crf_on_labels(image: np.ndarray, probs: np.ndarray, labels: np.ndarray,
                  params: CRFConfig = CRFConfig()) -> np.ndarray:
    """Mean-field inference over ``labels`` only; returns [H, W] uint8 full label ids.

    Args:
      image: [H, W, 3] uint8 RGB.
      probs: [k, H, W] float32 probabilities of ``labels`` (from ``select_labels``).
      labels: [k] the label ids the k channels stand for.
    """

    k, h, w = probs.shape
    crf = dcrf.DenseCRF2D(w, h, k)
    unary = unary_from_softmax(probs)
    crf.setUnaryEnergy(np.require(unary, np.float32, ["C", "W"]))
    crf.addPairwiseGaussian(sxy=params.gaussian_sxy, compat=params.gaussian_compat,
                            kernel=dcrf.DIAG_KERNEL, normalization=dcrf.NORMALIZE_SYMMETRIC)
    crf.addPairwiseBilateral(sxy=params.bilateral_sxy, srgb=params.bilateral_srgb,
                             rgbim=np.require(image, np.uint8, ["C", "W"]),
                             compat=params.bilateral_compat, kernel=dcrf.DIAG_KERNEL,
                             normalization=dcrf.NORMALIZE_SYMMETRIC)
    marginals = np.asarray(crf.inference(params.iterations)).reshape(k, h, w)
    return np.asarray(labels, np.uint8)[np.argmax(marginals, axis=0)]


def dense_crf(image: np.ndarray, probs: np.ndarray, params: CRFConfig = CRFConfig()) -> np.ndarray:
    """Refine softmax probabilities [H, W, C] with a dense CRF over the labels that can
    matter (``params.label_margin``); returns [H, W] uint8 labels."""
    labels, sub = select_labels(probs, params.label_margin)
    return crf_on_labels(image, sub, labels, params)

