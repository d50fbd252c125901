"""Stride-8 geometry (docs/method.md §7): every resize keeps output i on image pixel 8i."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from dcsp_dist import config
from dcsp_dist.inference.predictor import make_multiscale_fn
from dcsp_dist.models import build_model, geometry
from dcsp_dist.models.inputs import BGR_MEAN
from dcsp_dist.training import losses

SIZES = [(113, 161), (112, 160), (117, 150), (96, 105)]   # 8k+1, 8k, odd/even mixes


def _coordinate_model():
    """A stand-in with the network's geometry: a 1x1 conv with stride 8 and valid padding,
    so output i is input pixel 8i. It reads back (row, column) from a coordinate ramp
    stored in the image's R and G channels (undoing the BGR mean subtraction)."""
    kernel = np.zeros((1, 1, 3, 2), np.float32)
    kernel[0, 0, 2, 0] = 1.0   # BGR channel 2 = R = row
    kernel[0, 0, 1, 1] = 1.0   # BGR channel 1 = G = column
    bias = np.array([BGR_MEAN[2], BGR_MEAN[1]], np.float32)
    image = keras.Input((None, None, 3))
    out = keras.layers.Conv2D(2, 1, strides=8, padding="valid", kernel_initializer=keras.initializers.Constant(kernel),
                              bias_initializer=keras.initializers.Constant(bias))(image)
    return keras.Model(image, {"segmentation": out, "attention": out})


def _ramp(h, w):
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([yy, xx, np.zeros_like(yy)], -1).astype(np.uint8)


@pytest.mark.parametrize("size", SIZES)
def test_multiscale_fusion_returns_each_pixels_own_coordinate(size):
    h, w = size
    fused = make_multiscale_fn(_coordinate_model(), (1.0, 0.75, 0.5), "segmentation", 8)
    coords = fused(tf.constant(_ramp(h, w))).numpy()                     # [H, W, 2]
    yy, xx = np.mgrid[0:h, 0:w]
    # Interior: away from the borders, where the last output (pixel 8(n-1)) and the
    # scaled images' edge pixels clamp the ramp.
    inner = (slice(16, h - 16), slice(16, w - 16))
    err_rows = np.abs(coords[..., 0] - yy)[inner]
    err_cols = np.abs(coords[..., 1] - xx)[inner]
    assert err_rows.mean() < 0.5 and err_cols.mean() < 0.5, (err_rows.mean(), err_cols.mean())
    # The scale-1 map alone is exact wherever it interpolates (up to its last output).
    single = make_multiscale_fn(_coordinate_model(), (1.0,), "segmentation", 8)(tf.constant(_ramp(h, w))).numpy()
    last = 8 * ((h - 1) // 8), 8 * ((w - 1) // 8)
    np.testing.assert_allclose(single[: last[0] + 1, :, 0], yy[: last[0] + 1], atol=1e-4)
    np.testing.assert_allclose(single[:, : last[1] + 1, 1], xx[:, : last[1] + 1], atol=1e-4)
    # Beyond the last output, the edge value (no extrapolation).
    assert np.all(single[last[0]:, :, 0] == pytest.approx(last[0], abs=1e-4))


def test_tf_default_resize_would_be_off():
    """The reason for all this: half-pixel resizing puts output i at 8i + 3.5 on 8k crops."""
    h, w = 112, 160
    out = tf.constant(np.arange(14, dtype=np.float32)[:, None, None] * 8 * np.ones((1, 20, 1), np.float32))
    naive = tf.image.resize(out, (h, w), method="bilinear").numpy()[..., 0]
    exact = geometry.upsample(out, (h, w), 8).numpy()[..., 0]
    rows = np.arange(h)[:, None] * np.ones((1, w))
    assert abs((naive - rows)[16:-16].mean()) > 3.0
    np.testing.assert_allclose(exact[:105], rows[:105], atol=1e-4)


@pytest.mark.parametrize("size", SIZES)
def test_loss_labels_are_the_labels_of_pixel_8i(size):
    h, w = size
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 21, (2, h, w)).astype(np.uint8)
    picked = geometry.labels_at_outputs(tf.constant(labels), 8).numpy()
    assert picked.shape == (2, -(-h // 8), -(-w // 8))
    np.testing.assert_array_equal(picked, labels[:, ::8, ::8])
    # The loss scores output i against exactly that label: logits that are one-hot of
    # pixel 8i's label give ~0, the same logits against labels shifted by 4 pixels do not.
    logits = tf.one_hot(picked, 21) * 50.0
    assert float(losses.segmentation_loss(logits, tf.constant(labels), 8)) < 1e-6
    shifted = np.roll(labels, 4, axis=1)
    assert float(losses.segmentation_loss(logits, tf.constant(shifted), 8)) > 1.0


@pytest.mark.parametrize("n", [64, 65, 112, 113, 117])
def test_network_output_size_is_ceil_of_input_over_8(n):
    """The real network gives ceil(N / 8) outputs, which labels_at_outputs relies on."""
    model = build_model(config.make_config("tiny_test"))
    out = model(tf.zeros((1, n, n + 3, 3)), training=False)["segmentation"]
    assert tuple(out.shape[1:3]) == (-(-n // 8), -(-(n + 3) // 8))


def _two_class_edge_model():
    """A stride-8 stand-in whose two logits read the image's R channel: a bright pixel gives
    a confident background (logits [6, 0]), a dark one a less confident object ([0, 2])."""
    mean_r = BGR_MEAN[2]
    kernel = np.zeros((1, 1, 3, 2), np.float32)
    kernel[0, 0, 2] = [6.0 / 255.0, -2.0 / 255.0]      # BGR channel 2 = R - mean
    bias = np.array([6.0 * mean_r / 255.0, 2.0 * (255.0 - mean_r) / 255.0], np.float32)
    image = keras.Input((None, None, 3))
    out = keras.layers.Conv2D(2, 1, strides=8, padding="valid", kernel_initializer=keras.initializers.Constant(kernel),
                              bias_initializer=keras.initializers.Constant(bias))(image)
    return keras.Model(image, {"segmentation": out, "attention": out})


def test_probabilities_are_interpolated_where_upsample_space_says():
    """Outputs at pixels 0, 8, ..., 80; background up to pixel 32, object from 40 on. Bilinear
    logits move the boundary towards the less confident object (crossing at 32 + 0.75 * 8 =
    38); the softmax taken on the grid first puts it near the middle (32 + 0.566 * 8 = 36.5)."""
    from dcsp_dist.inference.predictor import make_probability_fn

    w = 81
    image = np.zeros((9, w, 3), np.uint8)
    image[:, :40, 0] = 255
    model = _two_class_edge_model()
    grid = np.where(np.arange(0, w, 8) < 40, 1.0, 0.0)                          # bright outputs
    logits = np.stack([6.0 * grid, 2.0 * (1 - grid)], -1)                        # [11, 2]
    softmax = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    x = np.arange(w) / 8.0
    for space, expected_first_object_pixel in (("logits", 39), ("probabilities", 37)):
        probs = make_probability_fn(model, (1.0,), 8, space)(tf.constant(image)).numpy()
        assert probs.shape == (9, w, 2)
        np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
        if space == "logits":
            row = np.stack([np.interp(x, np.arange(11), logits[:, k]) for k in range(2)], -1)
            reference = np.exp(row) / np.exp(row).sum(-1, keepdims=True)
        else:
            reference = np.stack([np.interp(x, np.arange(11), softmax[:, k]) for k in range(2)], -1)
        np.testing.assert_allclose(probs[4], reference, atol=1e-5)
        assert int(np.argmax(probs[4].argmax(-1) == 1)) == expected_first_object_pixel, space


def test_windowed_inference_puts_every_output_where_the_whole_image_does():
    """For a network that only looks at pixel 8i, running it on windows (each starting on
    a multiple of 8, overlapping, the last padded) gives exactly the whole image's outputs,
    at one scale and fused over scales; 200 is larger than every image (one padded window)."""
    model = _coordinate_model()
    for scales in ((1.0,), (1.0, 0.75, 0.5)):
        whole_fn = make_multiscale_fn(model, scales, "segmentation", 8)
        tiled_fns = {window: make_multiscale_fn(model, scales, "segmentation", 8, window=window)
                     for window in (33, 64, 113, 200)}
        for h, w in SIZES:
            image = tf.constant(_ramp(h, w))
            whole = whole_fn(image).numpy()
            for window, tiled_fn in tiled_fns.items():
                np.testing.assert_allclose(tiled_fn(image).numpy(), whole, atol=1e-4,
                                           err_msg=f"{h}x{w}, window {window}, scales {scales}")


def _input_size_model():
    """A stand-in whose every stride-8 output holds the height and width of the input it was given."""
    image = keras.Input((None, None, 3))
    size = keras.layers.Lambda(lambda x: keras.ops.ones_like(x[:, ::8, ::8, :2]) * keras.ops.cast(
        keras.ops.stack([keras.ops.shape(x)[1], keras.ops.shape(x)[2]]), "float32"))(image)
    return keras.Model(image, {"segmentation": size, "attention": size})


def test_windowed_inference_shows_the_network_only_windows_of_the_crop_size():
    from dcsp_dist.inference.predictor import windowed_outputs

    model = _input_size_model()
    x = tf.zeros((250, 130, 3))
    np.testing.assert_array_equal(windowed_outputs(model, x, "segmentation", 113).numpy(), 113)
    whole = model(x[None])["segmentation"][0].numpy()
    assert whole.shape == (32, 17, 2) and (whole == [250, 130]).all()
    assert windowed_outputs(model, x, "segmentation", 113).shape == (32, 17, 2)
