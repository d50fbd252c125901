import numpy as np
from PIL import Image

from data_tools import saliency


def _scene():
    """Grey background, a vivid red square (most salient) and a dimmer blue disc."""
    img = np.full((160, 200, 3), 128, np.uint8)
    img[30:90, 20:80] = (255, 0, 0)
    yy, xx = np.mgrid[0:160, 0:200]
    disc = (yy - 110) ** 2 + (xx - 150) ** 2 < 30 ** 2
    img[disc] = (100, 100, 170)
    return img, disc


def test_second_pass_finds_the_object_behind_the_most_salient_one():
    img, disc = _scene()
    first = saliency._at_224(saliency.frequency_tuned, img)
    final = saliency.hierarchical_saliency(img)
    assert first[50, 50] > 0.7                       # the red square dominates pass 1
    assert np.median(first[disc]) < 0.7              # the disc is below the first threshold
    assert np.median(final[disc]) > 0.8              # pass 2 adds it
    assert np.all(final >= first - 1e-6)             # max fusion
    assert final.shape == img.shape[:2] and 0 <= final.min() and final.max() <= 1


def test_cli_writes_maps_with_a_keras_model_detector(tmp_path):
    import keras
    root = tmp_path / "voc"
    (root / "JPEGImages").mkdir(parents=True)
    img, _ = _scene()
    Image.fromarray(img).save(root / "JPEGImages" / "a.jpg")
    (tmp_path / "ids.txt").write_text("a\n")
    # A stand-in saliency network: "red channel is salient".
    inputs = keras.Input((224, 224, 3))
    outputs = keras.layers.Conv2D(1, 1, activation="sigmoid", kernel_initializer=keras.initializers.Constant(
        np.array([[[[0.05], [-0.05], [-0.05]]]])), bias_initializer="zeros")(inputs)
    model_path = tmp_path / "sal.keras"
    keras.Model(inputs, outputs).save(model_path)
    assert saliency.main(["--root", str(root), "--split-list", str(tmp_path / "ids.txt"),
                          "--model", str(model_path)]) == 0
    sal = np.asarray(Image.open(root / "Saliency" / "a.png"))
    assert sal.shape == (160, 200) and sal[50, 50] > 200 and sal[5, 5] < 128


def test_cli_builtin_detector_and_bad_model(tmp_path, capsys):
    root = tmp_path / "voc"
    (root / "JPEGImages").mkdir(parents=True)
    Image.fromarray(_scene()[0]).save(root / "JPEGImages" / "a.jpg")
    (tmp_path / "ids.txt").write_text("a\nmissing\n")
    assert saliency.main(["--root", str(root), "--split-list", str(tmp_path / "ids.txt"), "--workers", "1"]) == 1
    assert "missing.jpg" in capsys.readouterr().err
    assert (root / "Saliency" / "a.png").exists() and not list((root / "Saliency").glob("*.tmp*"))
    assert saliency.main(["--root", str(root), "--split-list", str(tmp_path / "ids.txt"),
                          "--model", str(tmp_path / "nope.keras")]) == 2
