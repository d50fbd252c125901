"""Masks for any folder of photos (predict --images) and a SavedModel to serve (export), on
three real VOC photos with the tiny run: the exported model, loaded by a process that does not
import dcsp_dist, labels the photos as predict --no-crf does."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
from PIL import Image

from tests.support.hvd import ROOT, run_python, run_ranks

PHOTOS = os.path.join(ROOT, "tests", "data", "real_voc", "images")
STEMS = ["2007_000033", "2007_000129", "2007_000346"]


def _photos(tmp_path):
    """The three photos (two PNG, one re-saved as JPEG) and a broken file."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for stem in STEMS[:2]:
        shutil.copy(os.path.join(PHOTOS, stem + ".png"), folder / f"{stem}.png")
    Image.open(os.path.join(PHOTOS, STEMS[2] + ".png")).convert("RGB").save(folder / f"{STEMS[2]}.jpg", quality=95)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return folder


def test_predict_images_then_export_agree(tiny_run, tmp_path):
    workdir, _ = tiny_run
    photos = _photos(tmp_path)
    out = tmp_path / "masks"
    proc = run_ranks(2, "-m", "dcsp_dist.predict", "--checkpoint", str(workdir), "--images", str(photos),
                     "--out", str(out), "--no-crf", "--overlays")
    assert sorted(p.stem for p in out.glob("*.png")) == STEMS
    assert sorted(p.stem for p in (out / "overlays").glob("*.jpg")) == STEMS
    record = json.load(open(out / "predict.json"))
    assert record["num_images"] == 3 and len(record["unreadable"]) == 1 and "broken.jpg" in record["unreadable"][0]
    assert sum("unreadable image, skipped:" in line and "broken.jpg" in line
               for line in (proc.stdout + proc.stderr).splitlines()) == 1
    for stem in STEMS:
        mask = np.asarray(Image.open(out / f"{stem}.png"))
        size = Image.open(os.path.join(PHOTOS, stem + ".png")).size
        assert mask.shape == size[::-1] and mask.max() < 21
    # with the CRF too (the run's settings), and an image list
    listing = tmp_path / "list.txt"
    listing.write_text(f"{STEMS[0]}.png\n")
    run_ranks(1, "-m", "dcsp_dist.predict", "--checkpoint", str(workdir), "--images", str(photos), "--list",
              str(listing), "--out", str(tmp_path / "crf"))
    assert [p.stem for p in (tmp_path / "crf").glob("*.png")] == [STEMS[0]]

    exported = tmp_path / "saved"
    proc = run_python("-m", "dcsp_dist.export", "--checkpoint", str(workdir), "--out", str(exported))
    assert "exported" in proc.stdout
    show = subprocess.run([os.path.join(os.path.dirname(sys.executable), "saved_model_cli"), "show", "--dir",
                           str(exported), "--all"], capture_output=True, text=True, timeout=300)
    assert show.returncode == 0 and "serving_default" in show.stdout and "class_names" in show.stdout
    assert "DT_UINT8" in show.stdout and "(-1, -1, 3)" in show.stdout
    # a process without dcsp_dist: tf.saved_model.load, then the class maps of the photos
    script = f"""
import sys, json, numpy as np, tensorflow as tf
from PIL import Image
model = tf.saved_model.load({str(exported)!r})
serve = model.signatures["serving_default"]
names = [n.decode() for n in model.signatures["class_names"]()["class_names"].numpy()]
out = {{}}
for path in sys.argv[1:]:
    rgb = np.asarray(Image.open(path).convert("RGB"))
    result = serve(image=tf.constant(rgb))
    assert result["probabilities"].shape == rgb.shape[:2] + (len(names),)
    np.save(path + ".npy", result["classes"].numpy())
print(json.dumps({{"names": names, "dcsp_dist_imported": any(m.startswith("dcsp_dist") for m in sys.modules)}}))
"""
    paths = [str(photos / f"{s}.png") for s in STEMS[:2]] + [str(photos / f"{STEMS[2]}.jpg")]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH="")
    done = subprocess.run([sys.executable, "-c", script, *paths], capture_output=True, text=True, timeout=600,
                          cwd=str(tmp_path), env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    info = json.loads(done.stdout.strip().splitlines()[-1])
    assert not info["dcsp_dist_imported"]
    assert info["names"] == json.load(open(workdir / "segmentation_adapted" / "classes.json"))["class_names"]
    assert info["names"][1] == "aeroplane"            # the run's class list travelled with the model
    same = total = 0
    for stem, path in zip(STEMS, paths):
        served, predicted = np.load(path + ".npy"), np.asarray(Image.open(out / f"{stem}.png"))
        same, total = same + int((served == predicted).sum()), total + predicted.size
    print(f"SavedModel vs predict --no-crf: {same / total:.6f} of {total} pixels; "
          f"{sum(f.stat().st_size for f in exported.rglob('*') if f.is_file()) / 1e6:.1f} MB")
    assert same / total >= 0.9999
    # an existing --out is refused, nothing replaced
    again = run_python("-m", "dcsp_dist.export", "--checkpoint", str(workdir), "--out", str(exported), check=False)
    assert again.returncode == 1 and "already exists" in again.stderr


def test_predict_images_reads_photos_as_people_have_them(tiny_run, tmp_path):
    """The image corpus (EXIF-rotated, 16-bit, CMYK, grey, palette with alpha, non-ASCII
    names; truncated, empty, over the bomb limit) over 2 ranks: a mask per good image, upright,
    each bad one named once, the rest done."""
    from tests.support import image_corpus
    workdir, _ = tiny_run
    folder = tmp_path / "corpus"
    folder.mkdir()
    expected = image_corpus.write(folder)
    out = tmp_path / "masks"
    proc = run_ranks(2, "-m", "dcsp_dist.predict", "--checkpoint", str(workdir), "--images", str(folder),
                     "--out", str(out), "--no-crf")
    for name, want in expected.items():
        mask = np.asarray(Image.open(out / (os.path.splitext(name)[0] + ".png")))
        assert mask.shape == want.shape[:2], name
    record = json.load(open(out / "predict.json"))
    assert record["num_images"] == len(expected)
    for name, reason in image_corpus.BAD.items():
        assert sum(f"{name}: {reason}" in line for line in record["unreadable"]) == 1, name
        assert sum(f"{name}: {reason}" in line for line in (proc.stdout + proc.stderr).splitlines()) == 1, name
