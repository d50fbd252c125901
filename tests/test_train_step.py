"""Single-process checks of the training step (one Horovod rank, no launcher needed)."""

import numpy as np
import pytest
import tensorflow as tf

from dcsp_dist import config, distributed
from dcsp_dist.training.trainer import StageTrainer


def _batch(cfg, n=2):
    rng = np.random.default_rng(0)
    tags = np.zeros((n, 20), np.float32)
    tags[:, [0, 7]] = 1
    crop = cfg.input.crop_size
    return {"image": tf.constant(rng.integers(0, 256, (n, crop, crop, 3)), tf.uint8),
            "valid": tf.constant([[crop, crop], [crop - 5, crop - 9]][:n] + [[crop, crop]] * (n - 2), tf.int32),
            "tags": tf.constant(tags),
            "cue": tf.constant(rng.choice([0, 1, 8, 255], (n, cfg.input.crop_size, cfg.input.crop_size)), tf.uint8),
            "id": tf.constant([f"img{i}" for i in range(n)])}   # strings, as the pipeline's: XLA has no kernel


def test_xla_step_equals_plain_step():
    distributed.init()
    cfg = config.make_config("tiny_test")
    results = []
    for xla in (False, True):
        trainer = StageTrainer("segmentation", cfg.replace(xla=xla, deterministic=False))
        losses = np.array(trainer.step(_batch(cfg)), np.float64)
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


def _shared_and_head(trainer):
    """Backbone + ASPP weights, and the attention head's, as arrays."""
    head = {"fc1_voc12_d0"}
    shared = [np.asarray(v) for v in trainer.model.trainable_weights if v.path.split("/")[0] not in head]
    attention = [np.asarray(v) for v in trainer.model.trainable_weights if v.path.split("/")[0] in head]
    return shared, attention


def _one_step(objective, batch):
    cfg = config.make_config("tiny_test", {"segmentation_objective": objective})
    trainer = StageTrainer("segmentation", cfg)
    before = _shared_and_head(trainer)
    trainer.step(batch)
    return before, _shared_and_head(trainer)


def _changed(before, after):
    return any(not np.array_equal(a, b) for a, b in zip(before, after))


def test_authors_code_objective_keeps_classification_and_decay_out_of_shared_layers():
    """Spec 4.3: backbone + ASPP see the segmentation loss alone; the attention head sees
    classification + L2 on its own kernel."""
    distributed.init()
    cfg = config.make_config("tiny_test")
    assert cfg.schedule.segmentation_objective == "authors_code"
    batch = _batch(cfg)
    other_tags = dict(batch, tags=tf.constant(np.eye(20, dtype=np.float32)[[3, 11]]))
    (shared0, head0), (shared_a, head_a) = _one_step("authors_code", batch)
    _, (shared_b, head_b) = _one_step("authors_code", other_tags)
    assert _changed(shared0, shared_a)                       # the segmentation loss trains them
    for a, b in zip(shared_a, shared_b):                     # ... and the tags do not reach them
        np.testing.assert_array_equal(a, b)
    assert _changed(head_a, head_b)                          # the attention head sees the tags
    # All cues ignored: no segmentation gradient, and no weight decay on shared layers.
    ignored = dict(batch, cue=tf.fill(tf.shape(batch["cue"]), tf.constant(255, tf.uint8)))
    (shared0, head0), (shared_i, head_i) = _one_step("authors_code", ignored)
    for a, b in zip(shared0, shared_i):
        np.testing.assert_array_equal(a, b)
    assert _changed(head0, head_i)


def test_paper_text_objective_sends_every_loss_everywhere():
    distributed.init()
    cfg = config.make_config("tiny_test")
    batch = _batch(cfg)
    other_tags = dict(batch, tags=tf.constant(np.eye(20, dtype=np.float32)[[3, 11]]))
    _, (shared_a, _) = _one_step("paper_text", batch)
    _, (shared_b, _) = _one_step("paper_text", other_tags)
    assert _changed(shared_a, shared_b)
    ignored = dict(batch, cue=tf.fill(tf.shape(batch["cue"]), tf.constant(255, tf.uint8)))
    (shared0, _), (shared_i, _) = _one_step("paper_text", ignored)
    assert _changed(shared0, shared_i)


def test_unknown_objective_is_one_clear_error():
    with pytest.raises(ValueError, match="segmentation_objective must be one of authors_code, paper_text"):
        config.make_config("tiny_test", {"segmentation_objective": "both"})


def test_a_roll_back_restores_the_last_good_state_to_the_bit_and_lowers_the_rate():
    """Recovery (dcsp_dist.training.recovery) on a real trainer: the copy comes back exactly (weights
    and momentum, not the step counter), the rate's scale drops by the factor, and the
    judgement: non-finite losses always, a spike only against a filled window."""
    from dcsp_dist.training.recovery import SPIKE_WINDOW, Recovery
    from dcsp_dist.training.trainer import StepResult
    distributed.init()
    cfg = config.make_config("tiny_test", {"recovery_spike": "4", "recovery_lr_factor": "0.25"})
    trainer = StageTrainer("segmentation", cfg)
    recovery = Recovery(trainer, cfg.run)
    trainer.step(_batch(cfg))
    recovery.keep(1)
    state = [v for v in list(trainer.model.variables) + list(trainer.optimizer.variables) if "float" in str(v.dtype)]
    kept = distributed.weights_digest(state)
    for _ in range(3):
        trainer.step(_batch(cfg))
    assert distributed.weights_digest(state) != kept
    assert recovery.can_roll_back()
    event = recovery.roll_back(4, float("nan"), "non-finite loss nan")
    assert distributed.weights_digest(state) == kept                       # bit for bit
    assert int(trainer.optimizer.iterations.numpy()) == 4                 # the steps go on
    assert event.back_to == 1 and event.lr_scale == 0.25 and float(trainer.lr_scale.numpy()) == 0.25
    assert "rolled back to the state of step 1, skipped batches 2-4, learning rate x0.25" in event.line("s", 1, 3)
    assert float(trainer.optimizer.learning_rate) == pytest.approx(0.25 * float(trainer.schedule(4)))

    def result(total, finite=True):
        return StepResult(total, total, 0.0, 0.0, finite, False)
    assert recovery.judge(result(float("inf"))) and recovery.judge(result(1.0, finite=False))
    assert recovery.judge(result(100.0)) is None                           # no level yet: not a spike
    for _ in range(SPIKE_WINDOW):
        assert recovery.judge(result(1.0)) is None
    assert recovery.judge(result(3.9)) is None                             # within 4x the median
    assert "is 4.5x its recent level 1.0000" in recovery.judge(result(4.5))
    off = Recovery(trainer, cfg.run.__class__(**{**cfg.run.__dict__, "recovery_max": 0}))
    for _ in range(SPIKE_WINDOW):
        off.judge(result(1.0))
    assert off.judge(result(50.0)) is None and off.judge(result(float("nan")))   # off: only non-finite stops
    assert not off.can_roll_back()
