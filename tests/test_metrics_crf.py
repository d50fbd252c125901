import os
import signal
import threading
import time

import numpy as np
from PIL import Image

from dcsp_dist.config import CRFConfig
from dcsp_dist.inference import crf, crf_pool, metrics
from tests.support.hvd import spawned_workers


def test_confusion_and_miou_match_independent_reference():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 21, (40, 50))
    labels[rng.uniform(size=labels.shape) < 0.1] = 255
    preds = np.where(rng.uniform(size=labels.shape) < 0.6, labels, rng.integers(0, 21, labels.shape)) % 256
    preds = np.where(preds == 255, 0, preds)
    matrix = metrics.confusion_matrix(labels, preds, 21)
    reference = np.zeros((21, 21), np.int64)
    for l, p in zip(labels.ravel(), preds.ravel()):
        if l < 21:
            reference[l, p] += 1
    np.testing.assert_array_equal(matrix, reference)
    result = metrics.scores(matrix)
    for c in range(21):
        tp = np.sum((labels == c) & (preds == c))
        fp = np.sum((labels != c) & (labels != 255) & (preds == c))
        fn = np.sum((labels == c) & (preds != c))
        assert abs(result["iou"][c] - tp / (tp + fp + fn)) < 1e-12
    assert abs(result["miou"] - np.mean(result["iou"])) < 1e-12
    assert abs(result["pixel_accuracy"] - np.mean(labels[labels < 21] == preds[labels < 21])) < 1e-12
    assert "mIoU" in metrics.format_table(result, [str(i) for i in range(21)])


def test_crf_sharpens_blurred_probabilities_on_real_voc_image(voc_sample):
    jpg, png = voc_sample
    image = np.asarray(Image.open(jpg).convert("RGB"))
    mask = np.asarray(Image.open(png))
    classes = [int(c) for c in np.unique(mask) if c != 255]
    # Probabilities as a stride-32 network would give them: box-averaged at 1/32 and
    # upsampled bilinearly, so boundaries are blurred and blocky.
    probs = np.zeros(mask.shape + (21,), np.float32)
    for c in classes:
        plane = Image.fromarray(((mask == c) * 255).astype(np.uint8))
        small = plane.resize((mask.shape[1] // 32, mask.shape[0] // 32), Image.BOX)
        probs[..., c] = np.asarray(small.resize(plane.size, Image.BILINEAR)) / 255.0
    probs = 0.3 / len(classes) + 0.7 * probs
    probs[..., [c for c in range(21) if c not in classes]] = 1e-3
    probs /= probs.sum(-1, keepdims=True)

    def miou(pred):
        return metrics.scores(metrics.confusion_matrix(mask, pred, 21))["miou"]

    before = miou(np.argmax(probs, -1))
    after = miou(crf.dense_crf(image, probs, CRFConfig()))
    assert after > before + 0.01, (before, after)


def test_default_crf_workers_give_each_core_of_a_rank_a_crf_process():
    cores = len(os.sched_getaffinity(0))
    assert crf_pool.default_crf_workers(1) == cores
    assert crf_pool.default_crf_workers(cores) == 1          # one core per rank: still overlap
    assert crf_pool.default_crf_workers(4 * cores) == 1      # oversubscribed: at least one


def _probs_with_tail(rng, h, w, c, present, tail_levels):
    """Background + ``present`` blobs, the other labels at fixed log-levels below."""
    logits = np.empty((h, w, c), np.float32)
    logits[:] = tail_levels
    logits[..., 0] = 0.0
    yy, xx = np.mgrid[0:h, 0:w]
    for k, label in enumerate(present):
        blob = (yy - h / 2) ** 2 + (xx - (k + 1) * w / (len(present) + 1)) ** 2 < (h / 4) ** 2
        logits[blob, label] = 3.0
    logits += rng.normal(0, 0.3, logits.shape).astype(np.float32)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    return probs / probs.sum(-1, keepdims=True)


def test_select_labels_keeps_what_can_matter_and_renormalises():
    rng = np.random.default_rng(0)
    tail = np.full(21, -20.0, np.float32)
    tail[[4, 9]] = [-5.0, -9.5]                      # 4 within e^-7 of the best, 9 far below
    probs = _probs_with_tail(rng, 40, 60, 21, [3, 15], tail)
    labels, sub = crf.select_labels(probs, 7.0)
    assert labels.tolist() == [0, 3, 4, 15]
    assert sub.shape == (4, 40, 60) and sub.dtype == np.float32
    np.testing.assert_allclose(sub.sum(0), 1.0, atol=1e-5)
    assert crf.select_labels(probs, 0.0)[0].tolist() == list(range(21))      # 0: every label
    only_background = np.zeros((5, 5, 21), np.float32)
    only_background[..., 0] = 1.0
    assert len(crf.select_labels(only_background, 7.0)[0]) == 2               # at least two



def test_select_labels_is_the_clipped_ratio_rule():
    """The selection equals its definition, max over pixels of max(p_c, clip) / best >= e^-margin,
    including maps where the unary's clip alone reaches (then every label is kept)."""
    rng = np.random.default_rng(4)
    for trial in range(6):
        logits = rng.normal(0, 1, (30, 40, 21)).astype(np.float32)
        logits[..., 0] += 8
        logits[..., rng.choice(np.arange(1, 21), 3, replace=False)] += rng.uniform(-4, 9, 3)
        if trial == 5:                           # nearly uniform somewhere: best ~ 1/21
            logits[:3, :3] = 0
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        for margin in (4.0, 6.0, 12.0):
            ratio = (np.maximum(probs, crf.UNARY_CLIP) / probs.max(-1, keepdims=True)).max(axis=(0, 1))
            expected = np.flatnonzero(ratio >= np.exp(-margin))
            if len(expected) < 2:
                expected = np.sort(np.argsort(probs.max(axis=(0, 1)))[-2:])
            assert crf.select_labels(probs, margin)[0].tolist() == expected.tolist(), (trial, margin)


def test_crf_over_kept_labels_equals_the_full_crf_on_the_real_image(voc_sample):
    """81 labels (COCO's count), a long tail: the same labels as the full-label CRF."""
    image = np.asarray(Image.open(voc_sample[0]).convert("RGB"))
    rng = np.random.default_rng(1)
    h, w = image.shape[:2]
    probs = _probs_with_tail(rng, h, w, 81, [15, 20, 41], rng.normal(-10, 2.5, 81).astype(np.float32))
    full = crf.dense_crf(image, probs, CRFConfig(label_margin=0.0))
    ours = crf.dense_crf(image, probs, CRFConfig())
    assert len(crf.select_labels(probs, CRFConfig().label_margin)[0]) < 40
    assert (full == ours).mean() >= 0.999
    assert set(np.unique(ours)) <= {0, 15, 20, 41} | set(np.unique(full))


class _Array:
    def __init__(self, value):
        self.value = value

    def numpy(self):
        return self.value


def test_a_crf_worker_signalled_while_it_starts_finishes_its_images():
    """SIGTERM to a CRF worker the moment it exists, before its Python has started (a preemption
    signal to the process group lands there as often as anywhere): it is born with the signal
    blocked and ignores it once up, so every image comes back; a worker killed by it would
    break the pool (BrokenProcessPool)."""
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(4)]
    probs = rng.dirichlet(np.ones(3), size=(48, 64)).astype(np.float32)
    dataset = [{"image": _Array(image)} for image in images]
    signalled = []

    def signal_the_worker_as_it_appears():
        deadline = time.time() + 60
        while not signalled and time.time() < deadline:
            for pid in spawned_workers(os.getpid()):
                os.kill(pid, signal.SIGTERM)
                signalled.append(pid)
            time.sleep(0.0005)

    watcher = threading.Thread(target=signal_the_worker_as_it_appears)
    watcher.start()
    try:
        out = list(crf_pool.run_inference(lambda image: _Array(probs), dataset, CRFConfig(), workers=1))
    finally:
        signalled.append(None)
        watcher.join()
    assert signalled[0] is not None, "the worker was never seen"
    assert len(out) == 4 and all(labels.shape == (48, 64) for _, labels, _ in out)
