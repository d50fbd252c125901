"""The COCO source's rule, on a fixture written by the test: classes in the file's order,
tags with crowd annotations, masks by decreasing area with crowd = 255, empty images."""
import json

import numpy as np
from PIL import Image

from data_tools.sources.coco import paint_mask, read_coco
from tests.coco_fixture import CAT_TO_LABEL, NAMES, VOC_TO_CAT, write_coco
from tests.hvd import run_python


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
