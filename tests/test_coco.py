"""The COCO source's rule, on a fixture written by the test: classes in the file's order,
tags with crowd annotations, masks by decreasing area with crowd = 255, empty images."""
import json
import os

import numpy as np
from PIL import Image

from data_tools.sources.coco import paint_mask, read_coco
from tests.support.coco_fixture import CAT_TO_LABEL, NAMES, VOC_TO_CAT, write_coco
from tests.support.hvd import run_python


def test_classes_tags_and_masks_follow_the_rule(synth_voc, tmp_path):
    path = tmp_path / "instances_val.json"
    write_coco(synth_voc, "val", path)
    names, keys = read_coco(str(path))
    assert names == NAMES                          # background, then the file's order
    assert keys[0]["anns"] == []                   # the image without annotations
    mask0 = paint_mask(keys[0]["anns"], keys[0]["height"], keys[0]["width"])
    assert not mask0.any()                         # ... is all background

    # Image 1: the small polygon "car" lies on top of the larger instances.
    k = keys[1]
    mask = paint_mask(k["anns"], k["height"], k["width"])
    assert (mask[3:24, 3:30] == CAT_TO_LABEL[3]).all()
    voc = np.asarray(Image.open(synth_voc / "SegmentationClass" / k["file_name"].replace(".jpg", ".png")))
    lut = np.zeros(256, np.uint8)
    for voc_class, cat in VOC_TO_CAT.items():
        lut[voc_class] = CAT_TO_LABEL[cat]
    outside = np.ones_like(mask, bool)
    outside[2:25, 2:31] = False
    assert (mask[outside] == lut[voc][outside]).all()

    # Image 2: the crowd region is 255 where no instance covers it; its class is a tag.
    k = keys[2]
    mask = paint_mask(k["anns"], k["height"], k["width"])
    voc = np.asarray(Image.open(synth_voc / "SegmentationClass" / k["file_name"].replace(".jpg", ".png")))
    bottom = np.zeros_like(mask, bool)
    bottom[-12:] = True
    assert (mask[bottom & (voc == 0)] == 255).all()
    assert (mask[bottom & (voc != 0)] == lut[voc][bottom & (voc != 0)]).all()
    assert CAT_TO_LABEL[44] in {a["label"] for a in k["anns"]}


def test_train_split_leaves_unannotated_images_out_and_says_so(synth_voc, tmp_path):
    path = tmp_path / "instances_train.json"
    write_coco(synth_voc, "train", path, empty=(0, 5))
    out = tmp_path / "records"
    proc = run_python("-m", "data_tools.build", "--coco-annotations", str(path), "--images",
                      str(synth_voc / "JPEGImages"), "--split", "train", "--out", str(out),
                      "--saliency-dir", str(synth_voc / "Saliency"), "--num-shards", "4", "--quiet")
    manifest = json.load(open(out / "train.manifest.json"))
    total = len((synth_voc / "ImageSets" / "Segmentation" / "train.txt").read_text().split())
    assert manifest["num_examples"] == total - 2 and manifest["skipped"] == 2, proc.stdout
    assert manifest["class_names"] == NAMES
    skipped = json.load(open(out / "train.skipped.json"))["skipped"]
    assert [s["reasons"][0].startswith("no annotations") for s in skipped] == [True, True]


def test_bad_coco_inputs_are_reported_and_nothing_is_written(synth_voc, tmp_path):
    path = tmp_path / "instances_val.json"
    data = write_coco(synth_voc, "val", path, bad_category=True)
    data["images"][4]["file_name"] = "missing.jpg"
    path.write_text(json.dumps(data))
    out = tmp_path / "records"
    proc = run_python("-m", "data_tools.build", "--coco-annotations", str(path), "--images",
                      str(synth_voc / "JPEGImages"), "--split", "val", "--out", str(out), "--quiet", check=False)
    assert proc.returncode == 1 and not out.exists()
    assert "category_id 99, which is not among the categories" in proc.stderr
    assert "missing.jpg: no image" in proc.stderr
    proc = run_python("-m", "data_tools.build", "--coco-annotations", str(tmp_path / "nope.json"), "--images",
                      str(synth_voc / "JPEGImages"), "--split", "val", "--out", str(out), check=False)
    assert proc.returncode == 2 and "nope.json: no such file" in proc.stderr


def test_flags_of_another_source_are_refused(synth_voc, tmp_path):
    lists = synth_voc / "ImageSets" / "Segmentation" / "val.txt"
    proc = run_python("-m", "data_tools.build", "--root", str(synth_voc), "--split-list", str(lists),
                      "--images", str(synth_voc / "JPEGImages"), "--out", str(tmp_path / "out"), check=False)
    assert proc.returncode == 2 and "--images goes with --coco-annotations" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_default_build_of_a_small_split_with_unannotated_images_has_no_empty_shard(synth_voc, tmp_path):
    """24 images, 4 without annotations, default --num-shards (one per planned image): the
    skipped images leave no empty shard behind, and training's check of the split passes."""
    from data_tools import build
    from dcsp_dist.data import records
    path = tmp_path / "instances_train.json"
    write_coco(synth_voc, "train", path, empty=(0, 5, 6, 11))
    out = tmp_path / "records"
    assert build.main(["--coco-annotations", str(path), "--images", str(synth_voc / "JPEGImages"), "--split", "train",
                       "--out", str(out), "--saliency-dir", str(synth_voc / "Saliency"), "--quiet",
                       "--workers", "1"]) == 0
    manifest = records.read_manifest(str(out), "train")
    assert manifest["skipped"] == 4 and manifest["num_shards"] == manifest["num_examples"] == 20
    assert all(s["num_examples"] == 1 for s in manifest["shards"])
    assert sorted(f for f in os.listdir(out) if f.endswith(".tfrecord")) == \
        [records.shard_name("train", i, 20) for i in range(20)]
    records.check_balance(str(out), manifest, 2, print)       # raised "empty shard(s)" before


def test_ids_that_would_leave_out_are_refused_at_build(synth_voc, tmp_path, capsys):
    from data_tools import build
    path = tmp_path / "instances_val.json"
    data = write_coco(synth_voc, "val", path)
    escape = tmp_path / "escape"
    escape.mkdir()
    (escape / "x.jpg").write_bytes((synth_voc / "JPEGImages" / data["images"][1]["file_name"]).read_bytes())
    data["images"][0]["file_name"] = "sub/" + data["images"][0]["file_name"]
    data["images"][1]["file_name"] = str(escape / "x.jpg")                     # absolute
    data["images"][2]["file_name"] = "../escape/x.jpg"
    path.write_text(json.dumps(data))
    out = tmp_path / "records"
    assert build.main(["--coco-annotations", str(path), "--images", str(synth_voc / "JPEGImages"), "--split", "val",
                       "--out", str(out), "--quiet", "--workers", "1"]) == 1
    err = capsys.readouterr().err.splitlines()
    for bad in ("sub/", str(escape / "x"), "../escape/x"):
        lines = [line for line in err if f"id '{bad}" in line]
        assert len(lines) == 1 and str(path) in lines[0] and "plain file name" in lines[0], bad
    assert not out.exists() and sorted(os.listdir(escape)) == ["x.jpg"]
    # with --skip-bad the rest is built, and no id leaves a plain name
    assert build.main(["--coco-annotations", str(path), "--images", str(synth_voc / "JPEGImages"), "--split", "val",
                       "--out", str(out), "--quiet", "--workers", "1", "--skip-bad"]) == 0
    from dcsp_dist.data import records
    assert records.read_manifest(str(out), "val")["num_examples"] == len(data["images"]) - 3


def test_a_rebuild_removes_only_its_own_shards(synth_voc, tmp_path):
    from data_tools import build, sources
    ids = sources.read_id_list(str(synth_voc / "ImageSets" / "Segmentation" / "val.txt"))
    out = tmp_path / "records"
    build.build(sources.VocSource(str(synth_voc), ids), "val", str(out), num_shards=3, workers=1, progress=False)
    victims = [tmp_path / "victim", tmp_path / "abs_victim"]
    for v in victims:
        v.write_text("keep me")
    (out / "notes.tfrecord").write_text("mine")
    manifest = json.load(open(out / "val.manifest.json"))
    manifest["shards"] += [{"file": "../victim"}, {"file": str(victims[1])}, {"file": "notes.tfrecord"}]
    (out / "val.manifest.json").write_text(json.dumps(manifest))
    build.build(sources.VocSource(str(synth_voc), ids), "val", str(out), num_shards=2, workers=1, progress=False)
    assert all(v.read_text() == "keep me" for v in victims) and (out / "notes.tfrecord").exists()
    assert sorted(f for f in os.listdir(out) if f.startswith("val-")) == ["val-00000-of-00002.tfrecord",
                                                                        "val-00001-of-00002.tfrecord"]
