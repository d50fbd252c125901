"""Single-process checks of the training step (one Horovod rank, no launcher needed)."""
import dataclasses

import numpy as np
import tensorflow as tf

from dcsp_dist import config, distributed
from dcsp_dist.train import StageTrainer


def _batch(cfg, n=2):
    rng = np.random.default_rng(0)
    tags = np.zeros((n, 20), np.float32)
    tags[:, [0, 7]] = 1
    crop = cfg.crop_size
    return {"image": tf.constant(rng.integers(0, 256, (n, crop, crop, 3)), tf.uint8),
            "valid": tf.constant([[crop, crop], [crop - 5, crop - 9]][:n] + [[crop, crop]] * (n - 2), tf.int32),
            "tags": tf.constant(tags),
            "cue": tf.constant(rng.choice([0, 1, 8, 255], (n, cfg.crop_size, cfg.crop_size)), tf.uint8)}


def test_xla_step_equals_plain_step():
    distributed.init()
    cfg = config.make_config("tiny_test")
    results = []
    for xla in (False, True):
        trainer = StageTrainer("segmentation", dataclasses.replace(cfg, xla=xla))
        losses = trainer.step(_batch(cfg)).numpy()
        results.append((losses, [np.asarray(v) for v in trainer.model.trainable_weights]))
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-4)
    for a, b in zip(results[0][1], results[1][1]):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_attention_stage_trains_only_the_new_layers_and_multipliers_apply():
    distributed.init()
    cfg = config.make_config("tiny_test", {"attention_trains_backbone": "false"})
    trainer = StageTrainer("attention", cfg)
    before = {v.path: np.asarray(v).copy() for v in trainer.model.weights}
    trainer.step(_batch(cfg))
    moved = {v.path for v in trainer.model.weights if not np.array_equal(before[v.path], np.asarray(v))}
    assert moved and all(p.startswith(("fc1_voc12_c", "fc1_voc12_d0")) for p in moved), sorted(moved)[:5]
    assert trainer.multipliers == [10.0] * 5 + [20.0] * 5
    # lr(step) follows poly decay from the stage's peak
    assert abs(float(trainer.schedule(0)) - cfg.learning_rate("attention")) < 1e-9
    seg = StageTrainer("segmentation", cfg)
    assert abs(float(seg.schedule(0)) - cfg.learning_rate("segmentation")) < 1e-9
    assert float(seg.schedule(seg.steps)) == 0.0
