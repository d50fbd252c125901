"""Dense CRF post-processing (Kraehenbuehl & Koltun) with the spec 5 parameters.

NumPy and pydensecrf only, so it can run in worker processes next to the network.
"""
from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class CRFParams:
    iterations: int = 10
    gaussian_sxy: float = 3.0
    gaussian_compat: float = 3.0
    bilateral_sxy: float = 49.0
    bilateral_srgb: float = 5.0
    bilateral_compat: float = 4.0

    @classmethod
    def from_config(cls, cfg) -> "CRFParams":
        return cls(cfg.crf_iterations, cfg.crf_gaussian_sxy, cfg.crf_gaussian_compat,
                   cfg.crf_bilateral_sxy, cfg.crf_bilateral_srgb, cfg.crf_bilateral_compat)


def dense_crf(image: np.ndarray, probs: np.ndarray, params: CRFParams = CRFParams()) -> np.ndarray:
    """Refine softmax probabilities with a dense CRF and return labels.

    Args:
      image: [H, W, 3] uint8 RGB.
      probs: [H, W, C] float softmax probabilities.
    Returns: [H, W] uint8 argmax of the CRF marginals after ``params.iterations`` steps.
    """
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax

    h, w, c = probs.shape
    crf = dcrf.DenseCRF2D(w, h, c)
    unary = unary_from_softmax(np.ascontiguousarray(probs.transpose(2, 0, 1), dtype=np.float32))
    crf.setUnaryEnergy(np.require(unary, np.float32, ["C", "W"]))
    crf.addPairwiseGaussian(sxy=params.gaussian_sxy, compat=params.gaussian_compat,
                            kernel=dcrf.DIAG_KERNEL, normalization=dcrf.NORMALIZE_SYMMETRIC)
    crf.addPairwiseBilateral(sxy=params.bilateral_sxy, srgb=params.bilateral_srgb,
                             rgbim=np.require(image, np.uint8, ["C", "W"]),
                             compat=params.bilateral_compat, kernel=dcrf.DIAG_KERNEL,
                             normalization=dcrf.NORMALIZE_SYMMETRIC)
    marginals = np.asarray(crf.inference(params.iterations)).reshape(c, h, w)
    return np.argmax(marginals, axis=0).astype(np.uint8)


def crf_or_argmax(image: np.ndarray, probs: np.ndarray, params: CRFParams | None) -> np.ndarray:
    """dense_crf when ``params`` is given, else the plain argmax (``--no-crf``)."""
    if params is None:
        return np.argmax(probs, axis=-1).astype(np.uint8)
    return dense_crf(image, probs, params)
