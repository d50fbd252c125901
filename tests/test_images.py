"""One image reader for build, saliency and predict --images (dcsp_dist.data.images): phone and
scanner photos come out upright and 8-bit against NumPy, and each broken one is named once
while the rest are done."""
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from data_tools import build
from data_tools.saliency import maps
from dcsp_dist.data import images, records
from tests.support import image_corpus


@pytest.fixture()
def corpus(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    return folder, image_corpus.write(folder)


def test_the_reader_applies_exif_scales_16_bit_and_composites_transparency(corpus):
    folder, expected = corpus
    for name, want in expected.items():
        got = images.read_rgb(str(folder / name))
        assert got.dtype == np.uint8 and got.shape == want.shape, name
        np.testing.assert_array_equal(got, want, err_msg=name)
    upright = images.read_rgb(str(folder / "phone rotated.jpg"))
    assert upright[:20].mean(axis=(0, 1))[0] > 150 and upright[20:].mean(axis=(0, 1))[2] > 150   # red on top
    for name, reason in image_corpus.BAD.items():
        with pytest.raises(images.BadImage) as err:
            images.read_rgb(str(folder / name))
        assert str(err.value).startswith(f"{folder / name}: {reason}") and "\n" not in str(err.value)


def test_build_stores_upright_rgb_and_names_each_bad_image(corpus, tmp_path, capsys):
    folder, expected = corpus
    (tmp_path / "classes.txt").write_text("thing\n")
    names = sorted(list(expected) + list(image_corpus.BAD))
    (folder / "tags.tsv").write_text("".join(f"{n}\tthing\n" for n in names))
    out = tmp_path / "records"
    assert build.main(["--tag-list", str(folder / "tags.tsv"), "--classes", str(tmp_path / "classes.txt"),
                       "--split", "photos", "--role", "test", "--out", str(out), "--skip-bad", "--quiet",
                       "--workers", "1"]) == 0
    err = capsys.readouterr().err
    for name, reason in image_corpus.BAD.items():
        assert sum(f"{name}: {reason}" in line for line in err.splitlines()) == 1, name
    manifest = records.read_manifest(str(out), "photos")
    assert manifest["num_examples"] == len(expected) and manifest["skipped"] == len(image_corpus.BAD)
    assert all(s["num_examples"] for s in manifest["shards"])                  # no empty shard published
    seen = {}
    for path in records.shard_files(str(out), manifest):
        for raw in tf.data.TFRecordDataset(path):
            ex = tf.io.parse_single_example(raw, {"id": tf.io.FixedLenFeature([], tf.string),
                                                  "image/encoded": tf.io.FixedLenFeature([], tf.string)})
            seen[ex["id"].numpy().decode()] = tf.io.decode_jpeg(ex["image/encoded"], channels=3).numpy()
    for name, want in expected.items():
        got = seen[os.path.splitext(name)[0]]
        assert got.shape == want.shape, name                                    # upright, as viewers show it
        assert np.abs(got.astype(int) - want).mean() < 4, name                  # JPEG-close to the reader's pixels


def test_saliency_writes_upright_maps_and_names_each_bad_image_once(corpus, tmp_path, capsys):
    folder, expected = corpus
    out = tmp_path / "sal"
    assert maps.main(["--images", str(folder), "--out-dir", str(out), "--workers", "1"]) == 1
    captured = capsys.readouterr()
    for name, reason in image_corpus.BAD.items():
        assert sum(f"{name}: {reason}" in line for line in captured.err.splitlines()) == 1, name
    for name, want in expected.items():
        sal = np.asarray(Image.open(out / (os.path.splitext(name)[0] + ".png")))
        assert sal.shape == want.shape[:2], name
    assert f"wrote {len(expected)}, kept 0 already done, {len(image_corpus.BAD)} bad" in captured.out
