"""Cue computation (docs/method.md §4.2 / 4.4) against an independent NumPy implementation."""
import numpy as np
import tensorflow as tf

from dcsp_dist.data import cues


def numpy_attention_cues(att, sal, tags, threshold=0.4):
    """Spec 4.2 written out per class with plain loops."""
    h, w, k = att.shape
    best = np.full((h, w), -np.inf)
    label = np.zeros((h, w), np.int64)
    for c in range(k):
        if not tags[c]:
            continue
        a = att[..., c].astype(np.float64)
        a = a - a.min() + 1e-12
        a = a / a.max()
        hm = 2.0 / (1.0 / (a + 1e-12) + 1.0 / (sal + 1e-12))
        better = hm > best
        best = np.where(better, hm, best)
        label = np.where(better, c + 1, label)
    return np.where(best < threshold, 0, label).astype(np.uint8)


def numpy_adapted_cues(logits, tags):
    allowed = [0] + [c + 1 for c in range(len(tags)) if tags[c]]
    return np.asarray(allowed)[np.argmax(logits[..., allowed], axis=-1)].astype(np.uint8)


def test_attention_cues_match_numpy_reference():
    rng = np.random.default_rng(0)
    for trial in range(20):
        h, w = rng.integers(5, 40, size=2)
        att = rng.normal(0, 3, (h, w, 20)).astype(np.float32)
        sal = rng.uniform(0, 1, (h, w)).astype(np.float32)
        tags = np.zeros(20, np.float32)
        tags[rng.choice(20, size=rng.integers(1, 4), replace=False)] = 1
        got = cues.attention_cues(tf.constant(att), tf.constant(sal), tf.constant(tags), 0.4).numpy()
        want = numpy_attention_cues(att, sal, tags)
        agree = np.mean(got == want)
        assert agree > 0.999, (trial, agree)   # float32 vs float64 ties only
        assert set(np.unique(got)) <= {0} | {int(c) + 1 for c in np.flatnonzero(tags)}
        # the rule's guarantee: a harmonic mean is at most twice the smaller of its two terms,
        # so a pixel whose saliency is below half the threshold is background, whatever its attention
        faint = sal < 0.4 / 2
        assert faint.any() and (got[faint] == 0).all()


def test_normalised_maps_lie_in_zero_one():
    maps = tf.random.normal([7, 9, 4]) * 10
    n = cues.normalise_maps(maps).numpy()
    assert n.min() > 0 and np.allclose(n.max(axis=(0, 1)), 1.0)


def test_adapted_cues_never_pick_an_untagged_class():
    rng = np.random.default_rng(1)
    for _ in range(20):
        logits = rng.normal(0, 5, (12, 15, 21)).astype(np.float32)
        tags = np.zeros(20, np.float32)
        tags[rng.choice(20, size=2, replace=False)] = 1
        # The original's defect: present classes with negative logits lose to absent ones
        # multiplied by 0. Make present classes strongly negative to provoke it.
        for c in np.flatnonzero(tags):
            logits[..., c + 1] = -np.abs(logits[..., c + 1]) - 1
        logits[..., 0] = -50.0
        got = cues.adapted_cues(tf.constant(logits), tf.constant(tags)).numpy()
        allowed = {int(c) + 1 for c in np.flatnonzero(tags)} | {0}
        assert set(np.unique(got)) <= allowed
        np.testing.assert_array_equal(got, numpy_adapted_cues(logits, tags))


def test_adapted_probabilities_exclude_untagged_classes_and_agree_with_the_argmax():
    rng = np.random.default_rng(3)
    logits = rng.normal(0, 3, (12, 14, 21)).astype(np.float32)
    tags = np.zeros(20, np.float32)
    tags[[4, 11]] = 1
    probs = cues.adapted_probabilities(tf.constant(logits), tf.constant(tags)).numpy()
    allowed = [0, 5, 12]
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
    assert (probs[..., [c for c in range(21) if c not in allowed]] == 0).all()
    np.testing.assert_array_equal(np.argmax(probs, -1), numpy_adapted_cues(logits, tags))
    # Probabilities in (upsample_space="probabilities"): restricted and renormalised, the same
    # argmax as on the logits they came from.
    softmax = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    from_probs = cues.adapted_probabilities(tf.constant(softmax), tf.constant(tags), are_probabilities=True).numpy()
    np.testing.assert_allclose(from_probs, probs, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(cues.adapted_cues(tf.constant(softmax), tf.constant(tags)).numpy(),
                                  numpy_adapted_cues(logits, tags))
