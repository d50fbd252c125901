"""Your own classes: a 3-class tag list built, trained (--stage all, 2 ranks) and evaluated
end to end, with the data's class names everywhere, and its bad inputs."""
import json
import os

import numpy as np
from PIL import Image

from tests.support.hvd import run_python, run_ranks

CLASSES = ["pointy", "boxy", "round"]
# The synthetic set's VOC ids -> our 3 classes: triangle; rectangle and square; the rest.
REMAP = {0: 0, 1: 1, 6: 2, 20: 2, 8: 3, 15: 3, 255: 255}


def _tag_list(synth_voc, tmp_path, split):
    """tags.tsv for the synthetic images of ``split``, masks remapped to the 3 classes."""
    ids = (synth_voc / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()
    masks = tmp_path / "masks"
    masks.mkdir(exist_ok=True)
    lines = []
    lut = np.full(256, 255, np.uint8)
    for voc_id, ours in REMAP.items():
        lut[voc_id] = ours
    for image_id in ids:
        mask = lut[np.asarray(Image.open(synth_voc / "SegmentationClass" / f"{image_id}.png"))]
        Image.fromarray(mask).save(masks / f"{image_id}.png")
        names = sorted({CLASSES[c - 1] for c in np.unique(mask) if 0 < c < 255})
        lines.append(f"{synth_voc / 'JPEGImages' / (image_id + '.jpg')}\t{','.join(names)}\tmasks/{image_id}.png")
    path = tmp_path / f"{split}.tsv"
    path.write_text("\n".join(lines) + "\n")
    return path


def _build(tmp_path, tsv, classes, out, synth_voc, check=True):
    return run_python("-m", "data_tools.build", "--tag-list", str(tsv), "--classes", str(classes),
                      "--saliency-dir", str(synth_voc / "Saliency"), "--out", str(out), "--num-shards", "4",
                      "--quiet", check=check)


def test_three_class_tag_list_end_to_end(synth_voc, tmp_path):
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(CLASSES) + "\n")
    records = tmp_path / "records"
    for split in ("train", "val"):
        _build(tmp_path, _tag_list(synth_voc, tmp_path, split), classes, records, synth_voc)
    manifest = json.load(open(records / "train.manifest.json"))
    assert manifest["class_names"] == ["background"] + CLASSES and manifest["has_saliency"]
    assert run_python("-m", "data_tools.verify", str(records)).returncode == 0
    workdir = tmp_path / "run"
    log = run_ranks(2, "-m", "dcsp_dist.train", "--stage", "all", "--config", "tiny_test", "--data", str(records),
                    "--workdir", str(workdir)).stdout
    assert "round" in log and "tvmonitor" not in log                       # cue table: the data's names
    assert json.load(open(workdir / "attention" / "config.json"))["model"]["num_classes"] == 4
    run_ranks(2, "-m", "dcsp_dist.evaluate", "--checkpoint", str(workdir), "--data", str(records), "--split", "val",
              "--out", str(tmp_path / "eval"))
    result = json.load(open(tmp_path / "eval" / "results.json"))
    assert list(result["iou"]) == ["background"] + CLASSES
    assert np.asarray(result["confusion_matrix"]).shape == (4, 4)
    # masks of your own images come out as <out>/<id>.png (not the VOC server's tree), unless asked
    assert manifest["source"] == "tag_list"
    val_ids = sorted(line.split("\t")[0].rsplit("/", 1)[1][:-4] for line in (tmp_path / "val.tsv").read_text().splitlines())
    for layout, where in (("auto", tmp_path / "masks_out"), ("voc", tmp_path / "masks_voc" / "results" / "VOC2012" /
                                                             "Segmentation" / "comp6_test_cls")):
        out = where if layout == "auto" else tmp_path / "masks_voc"
        run_ranks(2, "-m", "dcsp_dist.predict", "--checkpoint", str(workdir), "--data", str(records), "--split", "val",
                  "--out", str(out), "--no-crf", "--layout", layout)
        assert sorted(p.stem for p in where.glob("*.png")) == val_ids
        assert all(np.asarray(Image.open(p)).max() < 4 for p in where.glob("*.png"))
        assert (out / "results.tar.gz").exists() == (layout == "voc") and (out / "results").exists() == (layout == "voc")


def test_tag_list_bad_inputs_are_reported_and_nothing_is_written(synth_voc, tmp_path):
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(CLASSES) + "\n")
    tsv = _tag_list(synth_voc, tmp_path, "train")
    lines = tsv.read_text().splitlines()
    lines[0] = lines[0].replace("\t", "\tgiraffe,", 1)                     # an unknown class name
    lines[1] = "missing.jpg\tround"                                         # a missing image
    tsv.write_text("\n".join(lines) + "\n")
    out = tmp_path / "records"
    proc = _build(tmp_path, tsv, classes, out, synth_voc, check=False)
    assert proc.returncode == 1 and not out.exists()
    assert "unknown class name 'giraffe'" in proc.stderr and "missing.jpg: no image" in proc.stderr


def test_train_and_val_with_different_class_lists_fail_before_any_work(synth_voc, tmp_path):
    records = tmp_path / "records"
    for split, names in (("train", CLASSES), ("val", CLASSES + ["extra"])):
        classes = tmp_path / f"classes-{split}.txt"
        classes.write_text("\n".join(names) + "\n")
        _build(tmp_path, _tag_list(synth_voc, tmp_path, split), classes, records, synth_voc)
    workdir = tmp_path / "run"
    proc = run_ranks(2, "-m", "dcsp_dist.train", "--stage", "attention", "--config", "tiny_test",
                     "--data", str(records), "--workdir", str(workdir), check=False)
    assert proc.returncode != 0 and "list different classes" in proc.stderr
    assert not os.path.exists(workdir)


def test_coco_fixture_end_to_end(synth_voc, tmp_path):
    """A COCO-format fixture (non-contiguous category ids, polygons, RLE, a crowd region, an
    image without annotations) built, verified, trained (--stage all, 2 ranks) and evaluated
    (2 ranks): tables and results.json show the file's names and a 4x4 matrix."""
    from tests.support.coco_fixture import NAMES, write_coco
    records = tmp_path / "records"
    for split in ("train", "val"):
        path = tmp_path / f"instances_{split}.json"
        write_coco(synth_voc, split, path)
        run_python("-m", "data_tools.build", "--coco-annotations", str(path), "--images",
                   str(synth_voc / "JPEGImages"), "--split", split, "--out", str(records),
                   "--saliency-dir", str(synth_voc / "Saliency"), "--num-shards", "4", "--quiet")
    val = json.load(open(records / "val.manifest.json"))
    assert val["skipped"] == 0 and val["class_names"] == NAMES      # evaluation keeps the empty image
    assert run_python("-m", "data_tools.verify", str(records)).returncode == 0
    workdir = tmp_path / "run"
    log = run_ranks(2, "-m", "dcsp_dist.train", "--stage", "all", "--config", "tiny_test", "--data", str(records),
                    "--workdir", str(workdir)).stdout
    assert "aeroplane" not in log and "[segmentation_adapted] done" in log
    assert json.load(open(workdir / "attention" / "config.json"))["model"]["num_classes"] == 4
    table = run_ranks(2, "-m", "dcsp_dist.evaluate", "--checkpoint", str(workdir), "--data", str(records),
                      "--split", "val", "--out", str(tmp_path / "eval")).stdout
    assert "bottle" in table and "dog" in table and "aeroplane" not in table
    result = json.load(open(tmp_path / "eval" / "results.json"))
    assert list(result["iou"]) == NAMES
    assert np.asarray(result["confusion_matrix"]).shape == (4, 4)
