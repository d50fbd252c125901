import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from data_tools import build, sources, verify
from data_tools.sources import VocSource
from dcsp_dist import config
from dcsp_dist.data import pipeline, records
from dcsp_dist.models import inputs
from dcsp_dist.models.inputs import BGR_MEAN

CFG = config.make_config("tiny_test")


def _ids(voc, split):
    return sources.read_id_list(str(voc / "ImageSets" / "Segmentation" / f"{split}.txt"))


def _all_records(directory, split):
    manifest = records.read_manifest(str(directory), split)
    return [pipeline.decode(s, manifest["has_saliency"], manifest["has_mask"], num_tags=records.num_tags(manifest))
            for s in tf.data.TFRecordDataset(records.shard_files(str(directory), manifest))]


def test_round_trip_equals_source_files(synth_voc, synth_records):
    examples = _all_records(synth_records, "train")
    assert len(examples) == 24
    manifest = json.load(open(synth_records / "train.manifest.json"))
    assert manifest["has_saliency"] and manifest["has_mask"] and manifest["role"] == "train"
    assert sum(s["num_examples"] for s in manifest["shards"]) == 24
    raw = tf.data.TFRecordDataset(records.shard_files(str(synth_records), manifest))
    for ex, serialized in zip(examples, raw):
        image_id = ex["id"].numpy().decode()
        parsed = tf.io.parse_single_example(serialized, records.feature_spec(records.num_tags(manifest)))
        assert parsed["image/encoded"].numpy() == (synth_voc / "JPEGImages" / f"{image_id}.jpg").read_bytes()
        saliency = np.asarray(Image.open(synth_voc / "Saliency" / f"{image_id}.png"))
        assert np.abs(ex["saliency"].numpy().astype(int) - saliency).max() <= 1
        mask = np.asarray(Image.open(synth_voc / "SegmentationClass" / f"{image_id}.png"))
        np.testing.assert_array_equal(ex["mask"].numpy(), mask)
        tags = sorted(int(c) for c in np.unique(mask) if c)
        assert sorted(parsed["tags/ids"].values.numpy().tolist()) == tags
        assert (np.flatnonzero(ex["tags"].numpy()) + 1).tolist() == tags


def test_saliency_npz_is_read_within_one_level(tmp_path, synth_voc):
    root = tmp_path / "voc"
    shutil.copytree(synth_voc, root)
    image_id = _ids(root, "train")[0]
    png = root / "Saliency" / f"{image_id}.png"
    actv = np.asarray(Image.open(png)).astype(np.float32) / 255.0
    png.unlink()
    np.savez(root / "Saliency" / f"{image_id}.npz", actv=actv)
    build.build(VocSource(str(root), [image_id]), "train", str(tmp_path / "out"), progress=False, workers=1)
    ex = _all_records(tmp_path / "out", "train")[0]
    assert np.abs(ex["saliency"].numpy() / 255.0 - actv).max() <= 1 / 255 + 1e-6


def test_saliency_dir_replaces_the_voc_saliency_folder(tmp_path, synth_voc):
    """--saliency-dir works for the VOC source too: <image file stem>.png from that folder."""
    ids = _ids(synth_voc, "train")[:3]
    other = tmp_path / "other_saliency"
    other.mkdir()
    for image_id in ids:
        sal = np.asarray(Image.open(synth_voc / "Saliency" / f"{image_id}.png"))
        Image.fromarray(255 - sal).save(other / f"{image_id}.png")
    listing = tmp_path / "ids.txt"
    listing.write_text("\n".join(ids) + "\n")
    assert build.main(["--root", str(synth_voc), "--split-list", str(listing), "--split", "train", "--out",
                       str(tmp_path / "out"), "--saliency-dir", str(other), "--quiet", "--workers", "1"]) == 0
    for ex in _all_records(tmp_path / "out", "train"):
        image_id = ex["id"].numpy().decode()
        expected = np.asarray(Image.open(other / f"{image_id}.png"))
        np.testing.assert_array_equal(ex["saliency"].numpy().squeeze(), expected)


def _bad_root(tmp_path, synth_voc):
    root = tmp_path / "bad"
    shutil.copytree(synth_voc, root)
    ids = _ids(root, "train")[:10]
    jpg = root / "JPEGImages"
    (jpg / f"{ids[0]}.jpg").write_bytes((jpg / f"{ids[0]}.jpg").read_bytes()[:600])        # truncated
    (jpg / f"{ids[1]}.jpg").write_bytes(b"")                                                 # zero bytes
    (root / "Annotations" / f"{ids[2]}.xml").unlink()                                        # no tags
    (root / "Saliency" / f"{ids[3]}.png").unlink()                                           # no saliency
    Image.new("L", (9, 9)).save(root / "Saliency" / f"{ids[4]}.png")                        # wrong size
    (root / "ClassCategories").mkdir()
    (root / "ClassCategories" / f"{ids[5]}.txt").write_text("3\n21\n")                       # id out of range
    xml = root / "Annotations" / f"{ids[6]}.xml"
    xml.write_text(xml.read_text().replace("<name>", "<name>spaceship", 1))                  # unknown name
    xml = root / "Annotations" / f"{ids[7]}.xml"
    xml.write_text("<annotation></annotation>")                                              # no tags at all
    Image.new("L", (5, 5)).save(root / "SegmentationClass" / f"{ids[8]}.png")                # mask size
    return root, ids + [ids[9], "no_such_image"]                                             # duplicate, missing


def test_bad_input_reports_every_item_and_writes_nothing(tmp_path, synth_voc, capsys):
    root, ids = _bad_root(tmp_path, synth_voc)
    out = tmp_path / "out"
    lst = tmp_path / "list.txt"
    lst.write_text("\n".join(ids) + "\n")
    code = build.main(["--root", str(root), "--split-list", str(lst), "--split", "train", "--out", str(out),
                       "--quiet", "--workers", "1"])
    err = capsys.readouterr().err
    assert code == 1
    for needle in (f"{ids[0]}.jpg: not a readable image", f"{ids[1]}.jpg: not a readable image", "missing tag file",
                   "missing saliency map", "saliency is 9x9", "tag id 21 outside 1..20", "unknown class name 'spaceship",
                   "has no tags",
                   "mask is 5x5", "duplicate id", "no image for id no_such_image"):
        assert needle in err, needle
    assert not out.exists() or not os.listdir(out)


def test_skip_bad_writes_good_items_and_a_report(tmp_path, synth_voc):
    root, ids = _bad_root(tmp_path, synth_voc)
    lst = tmp_path / "list.txt"
    lst.write_text("\n".join(ids) + "\n")
    out = tmp_path / "out"
    assert build.main(["--root", str(root), "--split-list", str(lst), "--split", "train", "--out", str(out),
                       "--skip-bad", "--quiet", "--workers", "1", "--num-shards", "2"]) == 0
    report = json.load(open(out / "train.skipped.json"))
    assert {s["id"] for s in report["skipped"]} >= {ids[0], ids[1], ids[2], "no_such_image"}
    manifest = records.read_manifest(str(out), "train")
    assert manifest["num_examples"] == 1                                      # ids[9] is the only good one
    assert manifest["num_shards"] == 1 and manifest["shards"][0]["num_examples"] == 1   # no empty shard
    assert verify.main([str(out)]) == 0
    assert not [f for f in os.listdir(out) if ".tmp" in f]


def test_verify_detects_corruption(tmp_path, synth_records, capsys):
    out = tmp_path / "copy"
    shutil.copytree(synth_records, out)
    assert verify.main([str(out)]) == 0
    shard = sorted(out.glob("train-*.tfrecord"))[1]
    data_bytes = bytearray(shard.read_bytes())
    data_bytes[len(data_bytes) // 2] ^= 0xFF
    shard.write_bytes(bytes(data_bytes))
    assert verify.main([str(out)]) == 1
    assert "sha256 differs" in capsys.readouterr().err


def test_real_voc_image_builds_and_verifies(tmp_path, voc_sample):
    jpg, png = voc_sample
    root = tmp_path / "voc"
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    shutil.copy(jpg, root / "JPEGImages")
    shutil.copy(png, root / "SegmentationClass")
    manifest = build.build(VocSource(str(root), ["2007_000129"]), "val", str(tmp_path / "out"), progress=False, workers=1)
    assert manifest["has_mask"] and not manifest["has_saliency"] and manifest["role"] == "eval"
    assert verify.main([str(tmp_path / "out")]) == 0
    ex = _all_records(tmp_path / "out", "val")[0]
    np.testing.assert_array_equal(ex["mask"].numpy(), np.asarray(Image.open(png)))
    assert ex["image"].shape == (500, 334, 3)


@pytest.mark.parametrize("num_shards,num_ranks", [(2, 2), (3, 3), (4, 3)])
def test_every_example_read_once_per_epoch(tmp_path, synth_voc, num_shards, num_ranks):
    out = tmp_path / "rec"
    build.build(VocSource(str(synth_voc), _ids(synth_voc, "train")), "train", str(out), num_shards=num_shards,
                workers=1, progress=False)
    seen = []
    for rank in range(num_ranks):
        ds = pipeline.make_inference_dataset(str(out), "train", rank=rank, size=num_ranks)
        seen += [ex["id"].numpy().decode() for ex in ds]
    assert sorted(seen) == sorted(_ids(synth_voc, "train"))


def test_fewer_files_than_ranks_is_a_clear_error(synth_records):
    with pytest.raises(records.DataError, match="4 shard files for 5 ranks"):
        pipeline.make_train_dataset(str(synth_records), CFG, 2, rank=0, size=5)


def test_augment_keeps_image_and_maps_aligned():
    """A test pattern whose label map is a function of its colour must stay consistent."""
    h, w = 70, 90
    labels = (np.arange(h)[:, None] // 10 * 3 + np.arange(w)[None, :] // 30).astype(np.uint8)  # blocks
    colours = np.random.default_rng(0).integers(0, 256, (labels.max() + 1, 3)).astype(np.uint8)
    example = {"id": tf.constant("x"), "image": tf.constant(colours[labels]), "tags": tf.zeros([20]),
               "cue": tf.constant(labels), "mask": tf.constant(labels)}
    cfg = config.make_config("tiny_test", {"crop_size": "80", "min_scale": "0.7", "max_scale": "1.4"})
    padded = flipped = 0
    for i in range(12):
        out = pipeline.augment(example, cfg.input, tf.constant([7, i], tf.int64), maps=("cue", "mask"))
        rgb = out["image"].numpy().astype(np.float64)
        cue = out["cue"].numpy()
        np.testing.assert_array_equal(cue, out["mask"].numpy())
        alone = pipeline.augment(example, cfg.input, tf.constant([7, i], tf.int64), maps=("cue",))  # one map
        np.testing.assert_array_equal(cue, alone["cue"].numpy())
        inside = cue != 255
        # Where the label is known, the pixel's colour is that label's colour (away from
        # bilinear blending at block edges): check the majority of pixels.
        err = np.abs(rgb[inside] - colours[cue[inside]]).max(axis=-1)
        assert np.mean(err < 2) > 0.85
        # Content sits in the top-left valid[0] x valid[1] rectangle, padding elsewhere.
        rows, cols = out["valid"].numpy()
        np.testing.assert_array_equal(inside, (np.arange(80)[:, None] < rows) & (np.arange(80)[None, :] < cols))
        assert (out["image"].numpy()[~inside] == 0).all()
        padded += int(not inside.all())
        # A flip shows as the column blocks in reverse order (label % 3 falls along a row).
        row = cue[0, :cols] % 3
        flipped += int(row[0] > row[-1])
        # The network input: BGR minus the Caffe mean, padding exactly 0 (docs/method.md §1).
        x = inputs.network_input(out["image"][None], out["valid"][None])[0].numpy()
        assert (x[~inside] == 0).all()
        np.testing.assert_allclose(x[inside], rgb[inside][:, ::-1] - np.array(BGR_MEAN), atol=1e-4)
    assert 0 < padded < 12 and 0 < flipped < 12


def test_crop_geometry_matches_the_spec_scales():
    """Crops come from windows of crop/s source pixels: scale s ~ U[min, max), whole axis if smaller."""
    cfg = config.make_config("voc_paper")  # crop 321, scale [0.5, 1.5)
    rng = np.random.default_rng(0)
    scales = []
    for u in rng.random((500, 4)).astype(np.float32):
        offset, window, out, _ = (t.numpy() for t in pipeline.crop_geometry(tf.constant([375, 500]), u, cfg.input))
        s = 0.5 + u[0]
        for size, off, win, o in zip((375, 500), offset, window, out):
            assert 0 <= off <= size - win
            if win < size:  # the crop lies inside the scaled image: a window of ~321/s pixels
                assert o == 321 and abs(321 / win - s) < 0.01 and size * s > 320
            else:           # the whole axis, scaled by s, padded if shorter than the crop
                assert o == min(321, round(size * s)) and size * s < 322
        scales.append(out[1] / window[1])
    assert abs(np.mean(scales) - 1.0) < 0.03 and min(scales) < 0.52 and max(scales) > 1.48
    off = config.make_config("voc_paper", {"augment": "false"})
    offset, window, out, flip = pipeline.crop_geometry(tf.constant([375, 500]), tf.fill([4], 0.9), off.input)
    assert list(offset.numpy()) == [0, 0] and list(window.numpy()) == list(out.numpy()) == [321, 321]
    assert not flip.numpy()


def test_crop_decode_equals_full_decode(synth_records):
    """Training decodes only each crop's window of the JPEG; the crops match full decoding."""
    manifest = records.read_manifest(str(synth_records), "train")
    files = records.shard_files(str(synth_records), manifest)
    cfg = config.make_config("tiny_test", {"crop_size": "48", "min_scale": "0.6", "max_scale": "1.5"})
    for i, s in enumerate(tf.data.TFRecordDataset(files[:1]).take(6)):
        seed = tf.constant([3, i], tf.int64)
        full = pipeline.augment(pipeline.decode(s, True, False, num_tags=20), cfg.input, seed, maps=("saliency",))
        lazy = pipeline.augment(pipeline.decode(s, True, False, decode_image=False, num_tags=20), cfg.input, seed,
                                maps=("saliency",))
        np.testing.assert_array_equal(full["valid"].numpy(), lazy["valid"].numpy())
        np.testing.assert_array_equal(full["saliency"].numpy(), lazy["saliency"].numpy())
        # libjpeg upsamples chroma without the neighbours outside the window, so the
        # window's outermost pixels may differ a little; everything inside is equal.
        diff = np.abs(full["image"].numpy().astype(int) - lazy["image"].numpy().astype(int)).max(-1)
        rows, cols = full["valid"].numpy()
        assert diff[2:rows - 2, 2:cols - 2].max() <= 1 and diff.mean() < 0.5


def test_eager_and_tf_data_agree(synth_records):
    manifest = records.read_manifest(str(synth_records), "train")
    files = records.shard_files(str(synth_records), manifest)
    serialized = list(tf.data.TFRecordDataset(files[:1]).take(3))
    seed = tf.constant([5, 1], tf.int64)
    eager = [pipeline.augment(pipeline.decode(s, True, True, num_tags=20), CFG.input, seed, maps=("saliency", "mask"))
             for s in serialized]
    dataset = tf.data.Dataset.from_tensor_slices(tf.stack(serialized)).map(
        lambda s: pipeline.augment(pipeline.decode(s, True, True, num_tags=20), CFG.input, seed, maps=("saliency", "mask")))
    for a, b in zip(eager, dataset):
        for key in ("image", "saliency", "mask", "tags"):
            np.testing.assert_allclose(a[key].numpy(), b[key].numpy(), atol=1e-4)


def test_training_pipeline_batches_and_rank_seeds(synth_records):
    a = next(iter(pipeline.make_train_dataset(str(synth_records), CFG, 2, rank=0, size=2)))
    b = next(iter(pipeline.make_train_dataset(str(synth_records), CFG, 2, rank=1, size=2)))
    assert a["image"].shape == (2, 64, 64, 3) and a["tags"].shape == (2, 20)
    assert not set(a["id"].numpy()) & set(b["id"].numpy())


def test_a_build_is_byte_for_byte_reproducible(synth_voc, tmp_path):
    """The same images give the same shard files in two processes (the Example's feature map
    is serialised in key order), so a manifest's sha256 names the data, not the run."""
    from tests.support.hvd import run_python
    lists = synth_voc / "ImageSets" / "Segmentation" / "val.txt"
    digests = []
    for out in ("a", "b"):
        run_python("-m", "data_tools.build", "--root", str(synth_voc), "--split-list", str(lists), "--split", "val",
                   "--out", str(tmp_path / out), "--num-shards", "2", "--quiet", "--workers", "1")
        digests.append([s["sha256"] for s in json.load(open(tmp_path / out / "val.manifest.json"))["shards"]])
    assert digests[0] == digests[1]


def test_a_full_disk_while_publishing_replaces_nothing_and_a_late_failure_says_so(synth_voc, tmp_path, monkeypatch,
                                                                                   capsys):
    """Publishing a split writes everything that takes space (the manifest too) before it
    renames any shard: a full disk then leaves the earlier build whole and no temporary file.
    A failure among the renames themselves says the split must be rebuilt (it never says
    "nothing was replaced" after shards were)."""
    import errno
    lists = synth_voc / "ImageSets" / "Segmentation"
    out = tmp_path / "records"
    args = ["--root", str(synth_voc), "--split-list", str(lists / "val.txt"), "--split", "val", "--out", str(out),
            "--num-shards", "4", "--quiet"]
    assert build.main(args) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real_dump = json.dump

    def full_disk(obj, fh, *a, **k):
        if isinstance(obj, dict) and "shards" in obj:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_dump(obj, fh, *a, **k)
    monkeypatch.setattr(build.json, "dump", full_disk)
    assert build.main(args[:-3] + ["--num-shards", "3", "--quiet"]) == 1
    assert "nothing was replaced" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before          # whole, nothing left over
    assert verify.main([str(out)]) == 0
    monkeypatch.setattr(build.json, "dump", real_dump)
    real_publish, calls = build.publish, []

    def fails_at_the_third(tmp, path):
        calls.append(path)
        if len(calls) == 3:
            raise OSError(errno.EIO, "Input/output error")
        return real_publish(tmp, path)
    monkeypatch.setattr(build, "publish", fails_at_the_third)
    assert build.main(args[:-3] + ["--num-shards", "3", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "after 2 of 3 shards were replaced" in err and "build it again" in err and "nothing was replaced" not in err
    assert not [p.name for p in out.iterdir() if ".tmp-" in p.name]


def test_uneven_records_per_rank_warn_only_when_it_matters(synth_records, tmp_path):
    """Over 10 % more records on the fullest rank than on the emptiest: a warning with the
    --num-shards that evens them; 23 against 22 (the own-photo recipe's 45 photos over 2
    ranks) is quiet."""
    shutil.copytree(synth_records, tmp_path / "r")
    manifest = json.load(open(tmp_path / "r" / "train.manifest.json"))
    said = []
    records.check_balance(str(tmp_path / "r"), manifest, 3, said.append)              # 12, 6, 6 records
    assert len(said) == 1 and "uneven records per rank over 3 ranks: min 6, max 12" in said[0]
    for shard, n in zip(manifest["shards"], (12, 11, 11, 11)):                          # 23 and 22 over 2
        shard["num_examples"] = n
    said.clear()
    records.check_balance(str(tmp_path / "r"), manifest, 2, said.append)
    assert said == []
