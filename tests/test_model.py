import os

import keras
import numpy as np
import pytest

from dcsp_dist import config
from dcsp_dist.models import backbone, build_model, export_caffe_dict, load_caffe_dict, parameter_groups
from dcsp_dist.models.weights import main as weights_main
from dcsp_dist.models.weights import read_caffe_file, write_caffe_file

TINY = config.make_config("tiny_test", {"normalization": "frozen_batch_norm"})  # Caffe/ImageNet layout


@pytest.fixture(scope="module")
def full_model():
    return build_model(config.make_config("voc_paper"))


def test_parameter_count_and_output_stride_8(full_model):
    assert full_model.count_params() == 44_206_988
    assert backbone(full_model).count_params() == 42_658_176
    out = full_model(np.zeros((1, 321, 321, 3), np.float32))
    assert out["segmentation"].shape == (1, 41, 41, 21)
    assert out["attention"].shape == (1, 41, 41, 20)


def test_backbone_at_stride_32_equals_keras_resnet101(full_model):
    cfg = config.make_config("voc_paper").replace(output_stride=32)
    model = build_model(cfg)
    reference = keras.applications.ResNet101(include_top=False, weights=None, input_shape=(None, None, 3))
    rng = np.random.default_rng(0)
    for layer in backbone(model).layers:  # same (random, non-trivial) weights, copied by layer name
        if layer.weights:
            values = [rng.normal(0, 0.05, w.shape).astype(np.float32) for w in layer.get_weights()]
            if isinstance(layer, keras.layers.BatchNormalization):
                values[3] = np.abs(values[3]) + 1.0          # positive variance
            layer.set_weights(values)
            reference.get_layer(layer.name).set_weights(values)
    x = rng.normal(0, 50, (2, 96, 96, 3)).astype(np.float32)
    ours = backbone(model)(x).numpy()
    theirs = reference(x).numpy()
    assert ours.shape == theirs.shape == (2, 3, 3, 2048)
    assert np.abs(ours - theirs).max() < 1e-4 * max(1.0, np.abs(theirs).max())


def test_parameter_groups_follow_structure():
    model = build_model(TINY)
    groups = parameter_groups(model)
    assert len(groups.head_kernels) == 5 and len(groups.head_biases) == 5
    assert all(len(v.shape) == 1 for v in groups.head_biases)
    assert not {id(v) for v in groups.backbone} & {id(v) for v in groups.head_kernels}
    bn = [w for layer in backbone(model).layers if isinstance(layer, keras.layers.BatchNormalization)
          for w in layer.weights]
    assert bn and not any(w.trainable for w in bn)          # batch norm frozen
    assert len(groups.trainable(False)) == 10
    init = np.concatenate([np.asarray(k).ravel() for k in groups.head_kernels])
    assert abs(init.std() - 0.01) < 0.002 and not any(np.asarray(b).any() for b in groups.head_biases)


@pytest.mark.parametrize("suffix", [".npy", ".npz"])
def test_caffe_export_import_round_trip(tmp_path, suffix):
    source = build_model(TINY)
    rng = np.random.default_rng(1)
    for v in source.weights:  # random weights everywhere, conv biases included
        value = rng.normal(0, 0.1, v.shape).astype(np.float32)
        v.assign(np.abs(value) + 0.5 if "variance" in v.path else value)
    path = str(tmp_path / f"weights{suffix}")
    write_caffe_file(export_caffe_dict(source), path)
    if suffix == ".npy":   # the authors' pickled dict: refused as it is, loaded after the one-time conversion
        with pytest.raises(ValueError, match="pickled .npy"):
            read_caffe_file(path)
        assert weights_main(["convert", "--trust-pickle", path, str(tmp_path / "converted.npz")]) == 0
        path = str(tmp_path / "converted.npz")
    target = build_model(TINY.replace(seed=9))
    loaded = load_caffe_dict(target, path)
    assert "conv1" in loaded and "bn_conv1" in loaded and "fc1_voc12_d0" in loaded
    x = rng.normal(0, 30, (1, 64, 64, 3)).astype(np.float32)
    a, b = source(x), target(x)
    # Conv biases are folded into the BN means: equal up to float rounding.
    np.testing.assert_allclose(a["segmentation"], b["segmentation"], atol=1e-4)
    # A model that came from Caffe (zero conv biases) round-trips bit for bit.
    again = build_model(TINY.replace(seed=5))
    load_caffe_dict(again, export_caffe_dict(target))
    np.testing.assert_array_equal(target(x)["segmentation"], again(x)["segmentation"])
    assert set(read_caffe_file(path)) == set(export_caffe_dict(target))


class _Opens:
    """A pickle that, when loaded, writes a file: what a received .npy could do."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_pickled_npy_is_never_unpickled_by_default(tmp_path, capsys):
    victim = tmp_path / "written_by_pickle"
    bad = tmp_path / "init.npy"
    np.save(bad, np.array({"conv1": _Opens(str(victim))}, dtype=object), allow_pickle=True)
    model = build_model(TINY)
    for load in (lambda: read_caffe_file(str(bad)), lambda: load_caffe_dict(model, str(bad)),
                 lambda: make_config_and_load(model, str(bad))):
        with pytest.raises(ValueError, match="loading a pickle can run code") as err:
            load()
        assert "convert --trust-pickle" in str(err.value) and "\n" not in str(err.value)
    assert not victim.exists()
    assert weights_main(["convert", str(bad), str(tmp_path / "x.npz")]) == 2            # no opt-in: nothing read
    assert "pass --trust-pickle" in capsys.readouterr().err and not victim.exists()


def make_config_and_load(model, spec):
    from dcsp_dist.models.weights import load_initial_weights
    return load_initial_weights(model, spec)


def test_malformed_caffe_dict_is_one_clear_error_and_loads_nothing():
    model = build_model(TINY)
    weights = export_caffe_dict(model)
    del weights["res2a_branch1"]
    weights["bn_conv1"]["scale"] = np.zeros(3, np.float32)
    weights["extra_layer"] = {"weights": np.zeros(1)}
    weights["conv1"]["weights"] = weights["conv1"]["weights"] + 1.0
    before = np.asarray(backbone(model).get_layer("conv1_conv").kernel).copy()
    with pytest.raises(ValueError) as info:
        load_caffe_dict(model, weights)
    msg = str(info.value)
    assert "missing layer res2a_branch1" in msg and "bn_conv1/scale has shape (3,)" in msg
    assert "unexpected layer extra_layer" in msg
    np.testing.assert_array_equal(before, np.asarray(backbone(model).get_layer("conv1_conv").kernel))


def test_caffe_names_follow_msra_convention(full_model):
    names = set(export_caffe_dict(full_model))
    for name in ("conv1", "bn_conv1", "res2a_branch1", "bn2a_branch1", "res2c_branch2c", "res3b3_branch2a",
                 "res4b22_branch2c", "bn4b22_branch2c", "res5c_branch2c", "bn5c_branch2c",
                 "fc1_voc12_c0", "fc1_voc12_c3", "fc1_voc12_d0"):
        assert name in names, name


def test_mixed_precision_keeps_float32_outputs():
    model = build_model(TINY.replace(mixed_precision="bfloat16"))
    out = model(np.zeros((1, 64, 64, 3), np.float32))
    assert out["segmentation"].dtype == "float32" and out["attention"].dtype == "float32"


def test_imagenet_weights_from_a_local_file_load_by_layer_name(tmp_path, full_model):
    """Offline path of the ImageNet import: a local keras.applications ResNet101 weights file."""
    from dcsp_dist.models import load_initial_weights
    reference = keras.applications.ResNet101(include_top=False, weights=None, input_shape=(None, None, 3))
    path = str(tmp_path / "resnet101_notop.weights.h5")
    reference.save_weights(path)
    assert load_initial_weights(full_model, path).startswith("ImageNet ResNet101")
    for name in ("conv1_conv", "conv4_block23_2_conv", "conv5_block3_3_bn"):
        for a, b in zip(backbone(full_model).get_layer(name).get_weights(), reference.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_initial_weights(full_model, str(tmp_path / "missing.weights.h5"))


def test_group_norm_backbone_trains_its_norms_without_decay():
    """From scratch there are no batch-norm statistics to freeze: group norm, trained (x1),
    no batch norm left, and only conv kernels in the L2 term."""
    model = build_model(TINY.replace(normalization="group_norm"))
    layers = backbone(model).layers
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in layers)
    norms = [layer for layer in layers if isinstance(layer, keras.layers.GroupNormalization)]
    assert len(norms) == 1 + 4 * 3 + 4          # stem + 3 per block + 4 shortcuts (blocks 1,1,1,1)
    groups = parameter_groups(model)
    trained = {id(v) for v in groups.backbone}
    assert all(id(w) in trained for layer in norms for w in layer.weights)
    assert all(len(k.shape) == 4 for k in groups.conv_kernels)
    out = model(np.zeros((1, 65, 65, 3), np.float32))
    assert tuple(out["segmentation"].shape) == (1, 9, 9, TINY.model.num_classes)


def test_group_norm_refuses_imagenet_weights():
    with pytest.raises(ValueError, match="group_norm cannot take the ImageNet weights"):
        TINY.replace(normalization="group_norm", init_weights="imagenet")


@pytest.mark.parametrize("size,dilation", [((15, 15), 6), ((15, 15), 12), ((15, 15), 18), ((15, 15), 24),
                                           ((41, 33), 24), ((7, 20), 12), ((1, 1), 6)])
def test_atrous_conv_equals_dilated_conv2d(size, dilation):
    """Tap by tap (dropping the taps that read only padding) is Conv2D's function: outputs
    and the gradients of inputs, kernel and bias, on maps of known and of unknown size."""
    import tensorflow as tf

    from dcsp_dist.models.atrous import AtrousConv2D, tap_offsets
    rng = np.random.default_rng(dilation)
    x = tf.constant(rng.normal(0, 1, (2, *size, 24)).astype(np.float32))
    ours = AtrousConv2D(5, dilation)
    reference = keras.layers.Conv2D(5, 3, padding="same", dilation_rate=dilation)
    ours.build(x.shape), reference.build(x.shape)
    weights = [rng.normal(0, 1, (3, 3, 24, 5)).astype(np.float32), np.arange(5, dtype=np.float32)]
    ours.set_weights(weights), reference.set_weights(weights)

    def forward_backward(layer, shape):
        @tf.function(input_signature=[tf.TensorSpec(shape, tf.float32)])
        def run(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = layer(x)
                loss = tf.reduce_sum(y * tf.cos(y))
            return [y] + tape.gradient(loss, [x, layer.kernel.value, layer.bias.value])
        return [t.numpy() for t in run(x)]

    expected = forward_backward(reference, x.shape)
    for shape in (x.shape, (None, None, None, 24)):
        for got, want in zip(forward_backward(ours, shape), expected):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    if size == (15, 15):   # DeepLab's rates on the demo's maps: 18 and 24 reach only with the centre tap
        assert len(tap_offsets(dilation, *size)) == {6: 9, 12: 9, 18: 1, 24: 1}[dilation]


def test_weights_are_read_by_content_whatever_the_name(tmp_path):
    """A zip saved under a .npy name (or .NPZ) loads as the dict it holds; an .npy array
    under an .npz name, and a damaged zip, are one line (an NpzFile's .shape was an
    AttributeError traceback on every rank)."""
    weights = {"conv1": {"weights": np.ones((3, 3, 3, 4), np.float32)}}
    npz = tmp_path / "w.npz"
    write_caffe_file(weights, str(npz))
    for name in ("w_zip.npy", "w.NPZ"):
        (tmp_path / name).write_bytes(npz.read_bytes())
        got = read_caffe_file(str(tmp_path / name))
        assert set(got) == {"conv1"} and got["conv1"]["weights"].shape == (3, 3, 3, 4)
    np.save(tmp_path / "array.npy", np.zeros(3))
    (tmp_path / "array.npz").write_bytes((tmp_path / "array.npy").read_bytes())
    with pytest.raises(ValueError, match="expected a dict of layers"):
        read_caffe_file(str(tmp_path / "array.npz"))
    (tmp_path / "cut.npz").write_bytes(npz.read_bytes()[:60])
    with pytest.raises(ValueError, match="cut.npz: not a readable .npy or .npz|cut.npz: entry"):
        read_caffe_file(str(tmp_path / "cut.npz"))
    assert not [p for p in os.listdir(tmp_path) if ".tmp" in p]
