"""ONNX saliency detectors through a real onnxruntime session, on graphs the test builds with
the onnx package (no model is downloaded), each against a NumPy reference."""
import numpy as np
import pytest
from PIL import Image

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402

from data_tools.saliency import maps, onnx_runner  # noqa: E402


def _model(path, height=32, width=48, outputs=("red",), sigmoid_input=False, input_shape=None):
    """x [1, 3, H, W] -> per output: one channel ([1, 1, H, W]); "red"/"green"/"blue" pick it,
    "red3d" gives [1, H, W]. Dynamic H, W when height is None."""
    h, w = ("H", "W") if height is None else (height, width)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, input_shape or [1, 3, h, w])
    nodes, outs, inits = [], [], []
    for k, kind in enumerate(outputs):
        channel = {"red": 0, "green": 1, "blue": 2, "red3d": 0}[kind]
        for name, value in ((f"s{k}", [channel]), (f"e{k}", [channel + 1]), (f"a{k}", [1])):
            inits.append(helper.make_tensor(name, TensorProto.INT64, [1], value))
        nodes.append(helper.make_node("Slice", ["x", f"s{k}", f"e{k}", f"a{k}"], [f"c{k}"]))
        if kind == "red3d":
            inits.append(helper.make_tensor(f"q{k}", TensorProto.INT64, [1], [1]))
            nodes.append(helper.make_node("Squeeze", [f"c{k}", f"q{k}"], [f"y{k}"]))
            shape = [1, h, w]
        else:
            nodes.append(helper.make_node("Identity", [f"c{k}"], [f"y{k}"]))
            shape = [1, 1, h, w]
        outs.append(helper.make_tensor_value_info(f"y{k}", TensorProto.FLOAT, shape))
    graph = helper.make_graph(nodes, "saliency", [x], outs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)


def _image(h=32, w=48, seed=0):
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 200, (h, w, 3)).astype(np.uint8)
    img[8:20, 10:30] = (250, 10, 10)         # a red object
    return img


def test_generic_nchw_is_rgb_over_255(tmp_path):
    det = onnx_runner.OnnxDetector(_model(tmp_path / "m.onnx"))
    img = _image()
    assert det.input_size == (32, 48)                        # from the model's fixed shape
    np.testing.assert_allclose(det(img), img[..., 0] / 255.0, atol=1e-6)


def test_channel_order_is_rgb(tmp_path):
    """A network that reads channel 0 sees red: the red object is salient, not blue."""
    det = onnx_runner.OnnxDetector(_model(tmp_path / "m.onnx"))
    sal = det(_image())
    assert sal[8:20, 10:30].mean() > 0.95 and sal[8:20, 10:30].mean() > sal.mean() + 0.3


def test_dynamic_size_and_three_dim_output(tmp_path):
    det = onnx_runner.OnnxDetector(_model(tmp_path / "m.onnx", height=None, outputs=("red3d",)))
    assert det.input_size == onnx_runner.DYNAMIC_SIZE == (320, 320)
    img = _image(320, 320)
    np.testing.assert_allclose(det(img), img[..., 0] / 255.0, atol=1e-6)
    # the full two passes run at 320x320 and come back at the image's size
    assert maps.hierarchical_saliency(_image(50, 70), det).shape == (50, 70)


def test_two_outputs_pick_by_index(tmp_path):
    path = _model(tmp_path / "m.onnx", outputs=("red", "green"))
    img = _image()
    first = onnx_runner.OnnxDetector(path)
    second = onnx_runner.OnnxDetector(path, onnx_runner.convention_from("generic", output=1))
    np.testing.assert_allclose(first(img), img[..., 0] / 255.0, atol=1e-6)
    np.testing.assert_allclose(second(img), img[..., 1] / 255.0, atol=1e-6)


def test_u2net_preset_normalises_as_published(tmp_path):
    """u2net: 320x320, RGB / image max, ImageNet mean and std, first output, min-max."""
    det = onnx_runner.OnnxDetector(_model(tmp_path / "m.onnx", height=None),
                                     onnx_runner.convention_from("u2net"))
    assert det.input_size == (320, 320)
    img = _image(320, 320, seed=3)
    red = (img[..., 0] / img.max() - 0.485) / 0.229
    reference = (red - red.min()) / (red.max() - red.min())
    np.testing.assert_allclose(det(img), reference, atol=1e-5)
    # explicit flags over a preset: sigmoid of the raw normalised channel, no stretch
    det = onnx_runner.OnnxDetector(_model(tmp_path / "m.onnx", height=None), onnx_runner.convention_from(
        "u2net", size="64x64", sigmoid=True, minmax=False))
    img = _image(64, 64, seed=4)
    np.testing.assert_allclose(det(img), 1 / (1 + np.exp(-(img[..., 0] / img.max() - 0.485) / 0.229)), atol=1e-5)


def test_bad_models_are_one_line(tmp_path, capsys):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"this is not a protobuf")
    gray = _model(tmp_path / "gray.onnx", input_shape=[1, 1, 32, 48])
    rank3 = _model(tmp_path / "rank3.onnx", input_shape=[3, 32, 48])
    for path, needle in ((str(junk), "not a usable ONNX model"),
                         (gray, "expected input [1, 3, H, W] (NCHW, RGB), the model's input 'x' is [1, 1, 32, 48]"),
                         (rank3, "expected input [1, 3, H, W] (NCHW, RGB), the model's input 'x' is [3, 32, 48]")):
        with pytest.raises(onnx_runner.OnnxError, match=None) as err:
            onnx_runner.OnnxDetector(path)
        assert needle in str(err.value) and path in str(err.value) and "\n" not in str(err.value)
    # through the command line: exit 2, one line
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(_image()).save(photos / "a.png")
    assert maps.main(["--images", str(photos), "--out-dir", str(tmp_path / "s"), "--model", gray]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "expected input [1, 3, H, W]" in err[0]
    assert maps.main(["--images", str(photos), "--out-dir", str(tmp_path / "s"), "--model", str(junk)]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1     # onnxruntime's own log line silenced
    with pytest.raises(ValueError, match="--input-size 32: expected HxW"):
        onnx_runner.convention_from("generic", size="32")


def test_cli_writes_maps_with_an_onnx_model(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    img = _image(60, 90)
    Image.fromarray(img).save(photos / "shop.png")
    out = tmp_path / "sal"
    assert maps.main(["--images", str(photos), "--out-dir", str(out), "--model",
                          _model(tmp_path / "m.onnx"), "--model-preset", "generic"]) == 0
    sal = np.asarray(Image.open(out / "shop.png")) / 255.0
    det = onnx_runner.OnnxDetector(str(tmp_path / "m.onnx"))
    np.testing.assert_allclose(sal, maps.hierarchical_saliency(img, det), atol=1 / 255 + 1e-6)


def test_models_that_do_not_fit_are_one_line_at_load(tmp_path, capsys):
    """A fixed batch of 2, and a fixed 256x256 model under the u2net preset (320): each is
    said once when the model loads, before any image; an output that is not one map too."""
    batch2 = _model(tmp_path / "b2.onnx", input_shape=[2, 3, 32, 48])
    with pytest.raises(onnx_runner.OnnxError, match="fixed batch of 2; saliency runs one image at a time"):
        onnx_runner.OnnxDetector(batch2)
    notes = []
    fixed = onnx_runner.OnnxDetector(_model(tmp_path / "f.onnx", height=256, width=256),
                                       onnx_runner.convention_from("u2net"), warn=notes.append)
    assert fixed.input_size == (256, 256) and len(notes) == 1 and "takes 256x256 (fixed in the model)" in notes[0]
    with pytest.raises(onnx_runner.OnnxError, match="--input-size 320x320, but the model's input 'x' is fixed"):
        onnx_runner.OnnxDetector(str(tmp_path / "f.onnx"), onnx_runner.convention_from("u2net", size="320x320"),
                                   explicit_size=True)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 48])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 32, 48])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "rgb", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.save(model, str(tmp_path / "rgb.onnx"))
    with pytest.raises(onnx_runner.OnnxError, match=r"output 'y' is \[1, 3, 32, 48\], expected one map"):
        onnx_runner.OnnxDetector(str(tmp_path / "rgb.onnx"))
    # through the command line: one line, before any image, no map written
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(_image()).save(photos / "a.png")
    assert maps.main(["--images", str(photos), "--out-dir", str(tmp_path / "s"), "--model", batch2]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fixed batch of 2" in err[0] and not list((tmp_path / "s").glob("*.png"))
