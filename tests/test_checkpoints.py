"""Loading a stage's weights from another stage's checkpoint: one read, and a damaged file
is one CheckpointError naming it (real TF checkpoints of the tiny model)."""
import numpy as np
import pytest
import tensorflow as tf

from dcsp_dist import config
from dcsp_dist.models import build_model
from dcsp_dist.rundir import checkpoints


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    cfg = config.make_config("tiny_test")
    model = build_model(cfg)
    optimizer = tf.keras.optimizers.SGD(0.1, momentum=0.9)
    prefix = tf.train.Checkpoint(model=model, optimizer=optimizer).write(
        str(tmp_path_factory.mktemp("ckpt") / "ckpt-1"))
    return cfg, model, prefix


def test_restore_model_loads_the_weights(saved):
    cfg, source, prefix = saved
    target = build_model(cfg.replace(seed=7))
    assert any(not np.array_equal(a, b) for a, b in zip(source.get_weights(), target.get_weights()))
    checkpoints.restore_model(target, prefix, "the attention stage's checkpoint")
    assert all(np.array_equal(a, b) for a, b in zip(source.get_weights(), target.get_weights()))


@pytest.mark.parametrize("damage", ["truncated", "missing"])
def test_a_damaged_checkpoint_is_one_line_naming_it(saved, tmp_path, damage):
    import glob
    import shutil
    cfg, _, prefix = saved
    copy = str(tmp_path / "ckpt-1")
    for path in glob.glob(prefix + ".*"):
        shutil.copy(path, copy + path[len(prefix):])
    data = glob.glob(copy + ".data-*")[0]
    if damage == "truncated":
        open(data, "r+b").truncate(100)
    else:
        copy = str(tmp_path / "ckpt-9")
    with pytest.raises(checkpoints.CheckpointError) as err:
        checkpoints.restore_model(build_model(cfg), copy, "the attention stage's checkpoint")
    message = str(err.value)
    assert message.startswith(f"the attention stage's checkpoint {copy} is unreadable") and "\n" not in message


def test_evaluate_needs_out_for_a_prefix_outside_a_run(tmp_path):
    from dcsp_dist.evaluate import default_out
    run = tmp_path / "run"
    (run / "segmentation" / "ckpt").mkdir(parents=True)
    assert default_out(str(run / "segmentation" / "ckpt" / "ckpt-9"), "val") == str(run / "eval_val")
    assert default_out(str(run), "val") == str(run / "eval_val")
    for prefix in ("/ckpt-9", str(tmp_path / "loose" / "ckpt-9"), str(tmp_path / "a" / "ckpt" / "ckpt-9")):
        with pytest.raises(ValueError, match="is not inside a run directory .*give --out"):
            default_out(prefix, "val")
