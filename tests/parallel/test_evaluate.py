"""Evaluation and prediction under real horovodrun: every image exactly once."""
import json

import numpy as np
import pytest
from PIL import Image

from dcsp_dist.data import palette
from tests.support.hvd import run_python, run_ranks


def _evaluate(num_ranks, run, data, out, *extra):
    args = ["-m", "dcsp_dist.evaluate", "--checkpoint", str(run), "--data", str(data), "--split", "val",
            "--out", str(out), *extra]
    proc = run_ranks(num_ranks, *args)
    return json.load(open(out / "results.json")), proc.stdout


def _expected_pixels(data):
    import tensorflow as tf

    from dcsp_dist.data import pipeline, records
    manifest = records.read_manifest(str(data), "val")
    total = 0
    for ex in pipeline.make_inference_dataset(str(data), "val", files=records.shard_files(str(data), manifest)):
        total += int(np.sum(ex["mask"].numpy() < 21))
    del tf
    return total, manifest["num_examples"]


def test_merged_matrix_identical_for_1_2_3_ranks_and_counts_each_image_once(tiny_run, synth_records, tmp_path):
    workdir, _ = tiny_run
    pixels, images = _expected_pixels(synth_records)
    assert images == 7  # no rank count in 2, 3, 4 divides it
    results = {n: _evaluate(n, workdir, synth_records, tmp_path / f"np{n}", "--no-crf")[0] for n in (1, 2, 3)}
    for n, r in results.items():
        assert r["num_images"] == 7 and r["ranks"] == n
        assert int(np.sum(r["confusion_matrix"])) == pixels
        assert r["confusion_matrix"] == results[1]["confusion_matrix"], n
    # The preset's crop-size windows by default; --window image runs on whole images.
    whole = _evaluate(1, workdir, synth_records, tmp_path / "whole", "--no-crf", "--window", "image")[0]
    assert results[1]["window"] == "crop" and whole["window"] == "image"
    assert int(np.sum(whole["confusion_matrix"])) == pixels


def test_evaluation_with_crf_writes_results_picture_and_tensorboard(tiny_run, synth_records, tmp_path):
    workdir, _ = tiny_run
    result, stdout = _evaluate(2, workdir, synth_records, tmp_path / "crf", "--crf-workers", "1")
    assert result["crf"] and result["num_images"] == 7
    assert "mIoU" in stdout and "aeroplane" in stdout
    assert Image.open(tmp_path / "crf" / "confusion.png").size[0] > 100
    assert list((tmp_path / "crf" / "tb").glob("events.out.tfevents.*"))
    sequential, _ = _evaluate(1, workdir, synth_records, tmp_path / "seq", "--crf-workers", "0")
    assert sequential["confusion_matrix"] == result["confusion_matrix"]


def test_predict_writes_voc_palette_pngs_and_a_tarball(tiny_run, synth_records, tmp_path):
    workdir, _ = tiny_run
    out = tmp_path / "sub"
    run_ranks(2, "-m", "dcsp_dist.predict", "--checkpoint", str(workdir), "--data", str(synth_records),
              "--split", "val", "--out", str(out), "--overlays", "--no-crf")
    masks = sorted((out / "results" / "VOC2012" / "Segmentation" / "comp6_test_cls").glob("*.png"))
    assert len(masks) == 7 and json.load(open(synth_records / "val.manifest.json"))["source"] == "voc"   # --layout auto
    for path in masks:
        image = Image.open(path)
        assert image.mode == "P"
        assert image.getpalette()[:63] == palette.palette()[:63]
        assert np.asarray(image).max() < 21
    assert (out / "results.tar.gz").stat().st_size > 0
    assert len(list((out / "overlays").glob("*.jpg"))) == 7
    # The PNG indices are the evaluation's argmax: evaluate the same way and compare.
    from dcsp_dist.data import pipeline, records
    from dcsp_dist.inference import metrics
    manifest = records.read_manifest(str(synth_records), "val")
    matrix = np.zeros((21, 21), np.int64)
    for ex in pipeline.make_inference_dataset(str(synth_records), "val", files=records.shard_files(str(synth_records), manifest)):
        server_dir = out / "results" / "VOC2012" / "Segmentation" / "comp6_test_cls"
        pred = np.asarray(Image.open(server_dir / f"{ex['id'].numpy().decode()}.png"))
        matrix += metrics.confusion_matrix(ex["mask"].numpy(), pred, 21)
    result, _ = _evaluate(1, workdir, synth_records, tmp_path / "ref", "--no-crf")
    assert matrix.tolist() == result["confusion_matrix"]


def test_several_checkpoints_in_one_launch_equal_one_launch_each(tiny_run, synth_records, tmp_path):
    workdir, _ = tiny_run
    first, final = tmp_path / "first", tmp_path / "final"
    run_ranks(2, "-m", "dcsp_dist.evaluate", "--checkpoint", str(workdir / "segmentation"), "--checkpoint",
              str(workdir), "--data", str(synth_records), "--split", "val", "--no-crf",
              "--out", str(first), "--out", str(final))
    for out, checkpoint in ((first, workdir / "segmentation"), (final, workdir)):
        together = json.load(open(out / "results.json"))
        alone, _ = _evaluate(2, checkpoint, synth_records, tmp_path / f"alone_{out.name}", "--no-crf")
        assert together["checkpoint"] == alone["checkpoint"] and together["num_images"] == 7
        assert together["confusion_matrix"] == alone["confusion_matrix"]
    assert "/segmentation/" in json.load(open(first / "results.json"))["checkpoint"]
    assert "/segmentation_adapted/" in json.load(open(final / "results.json"))["checkpoint"]


@pytest.mark.parametrize("case", ["missing", "classes", "nomask", "workers", "outs", "same_out"])
def test_bad_input_is_one_clear_line_before_any_work(tiny_run, synth_records, tmp_path, case):
    workdir, _ = tiny_run
    checkpoint, split = str(workdir), "val"
    if case == "missing":
        checkpoint = str(tmp_path / "nothing_here")
    elif case == "classes":
        import shutil
        copy = tmp_path / "run"
        shutil.copytree(workdir, copy)
        cfg = json.load(open(copy / "segmentation_adapted" / "config.json"))
        cfg["model"]["num_classes"] = 5
        json.dump(cfg, open(copy / "segmentation_adapted" / "config.json", "w"))
        checkpoint = str(copy)
    else:
        split = "train_nomask"
        import os
        manifest = json.load(open(synth_records / "train.manifest.json"))
        manifest["has_mask"] = False
        data = tmp_path / "data"
        os.makedirs(data)
        for s in manifest["shards"]:
            os.symlink(synth_records / s["file"], data / s["file"])
        json.dump(manifest, open(data / "train_nomask.manifest.json", "w"))
        synth = data
    proc = run_python("-m", "dcsp_dist.evaluate", "--checkpoint", checkpoint,
                      "--data", str(synth if case == "nomask" else synth_records), "--split", split,
                      "--out", str(tmp_path / "out"), *(["--crf-workers", "-1"] if case == "workers" else []),
                      *(["--out", str(tmp_path / "out2")] if case == "outs" else []),
                      *(["--checkpoint", checkpoint, "--out", str(tmp_path / "out")] if case == "same_out" else []),
                      check=False)
    errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
    assert proc.returncode == 1 and len(errors) == 1, proc.stderr[-2000:]
    needle = {"missing": "no such run directory or checkpoint", "classes": "does not fit a 5-class",
              "nomask": "has no masks", "workers": "--crf-workers -1: expected 0",
              "outs": "--out given 2 times for 1 --checkpoint", "same_out": "would both write"}[case]
    assert needle in errors[0]
    assert not (tmp_path / "out").exists()
