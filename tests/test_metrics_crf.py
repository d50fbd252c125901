import numpy as np
from PIL import Image

from dcsp_dist import crf, inference, metrics


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
    after = miou(crf.dense_crf(image, probs, crf.CRFParams()))
    assert after > before + 0.01, (before, after)


def test_default_crf_workers_give_each_core_of_a_rank_a_crf_process():
    import os
    cores = len(os.sched_getaffinity(0))
    assert inference.default_crf_workers(1) == cores
    assert inference.default_crf_workers(cores) == 1          # one core per rank: still overlap
    assert inference.default_crf_workers(4 * cores) == 1      # oversubscribed: at least one
