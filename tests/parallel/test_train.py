"""The trainer under real horovodrun: synchronised weights, 1-vs-2-rank equivalence,
resume, guards, and the whole schedule end to end."""
import json
import os
import re
import signal
import subprocess
import sys

import numpy as np

from tests.support.hvd import ROOT, run_python, run_ranks


def _load(path):
    with np.load(path) as data:
        return [data[k] for k in sorted(data.files, key=lambda k: int(k.split("_")[1]))]


def test_two_rank_steps_equal_one_rank_steps_on_the_joint_batch(synth_records, tmp_path):
    args = ["tests/parallel/workers/train_steps.py", "--data", str(synth_records), "--out", str(tmp_path)]
    run_ranks(2, *args)
    run_ranks(1, *args)
    rank0, rank1 = _load(tmp_path / "weights-np2-rank0.npz"), _load(tmp_path / "weights-np2-rank1.npz")
    single = _load(tmp_path / "weights-np1-rank0.npz")
    for a, b in zip(rank0, rank1):
        np.testing.assert_array_equal(a, b)
    worst = max(float(np.abs(a - s).max()) for a, s in zip(rank0, single))
    assert worst < 1e-5, worst


def test_stage_all_end_to_end_reports_cue_quality(tiny_run, synth_records):
    workdir, log = tiny_run
    data_dir = synth_records
    for stage in ("attention", "cues", "segmentation", "adapt", "segmentation_adapted"):
        assert (workdir / stage / "done.json").is_file(), stage
    cues = json.load(open(workdir / "cues" / "cues.json"))
    assert 0.0 < cues["miou"] <= 1.0 and "[cues] cue quality" in log
    assert len(list((workdir / "cues").glob("train-*-of-00004.cues.tfrecord"))) == 4
    assert json.load(open(workdir / "attention" / "config.json"))["name"] == "tiny_test"
    events = list((workdir / "attention" / "tb").glob("events.out.tfevents.*"))
    assert events
    # TensorBoard really holds the scalars and the image strip.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(workdir / "segmentation" / "tb"), size_guidance={"tensors": 0}).Reload()
    tags = set(acc.Tags()["tensors"])
    assert {"loss/total", "loss/classification", "loss/segmentation", "loss/l2", "learning_rate",
            "images_per_sec", "step_time_sec", "input|cue|prediction|attention"} <= tags
    # Relaunching finds every stage done and does no work.
    again = run_ranks(2, "-m", "dcsp_dist.train", "--stage", "all", "--config", "tiny_test",
                      "--data", str(data_dir), "--workdir", str(workdir)).stdout
    assert again.count("already done, skipping") == 5


def test_resume_after_interruption_keeps_step_and_learning_rate(synth_records, tmp_path):
    workdir = tmp_path / "run"
    cmd = [sys.executable, "-m", "dcsp_dist.train", "--stage", "attention", "--config", "tiny_test",
           "--data", str(synth_records), "--workdir", str(workdir), "--set", "attention_steps=150",
           "--set", "checkpoint_every=5", "--set", "image_summary_every=1000", "--set", "log_every=1"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", DCSP_THREADS="1", HOROVOD_CYCLE_TIME="1", PYTHONPATH=ROOT)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True, text=True)
    # Interrupt at a step the test sees (the log line of step 12, after ckpt-10), not by
    # watching for a checkpoint file that rotation deletes: the tiny model runs 150 steps in
    # seconds, and a poll could miss the file or the whole job.
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if re.search(r"\[attention\] step 12/150 ", line):
            break
    os.killpg(proc.pid, signal.SIGKILL)   # a hard interruption, mid-stage
    proc.wait()
    assert any("step 12/150" in line for line in seen), "".join(seen)
    assert not (workdir / "attention" / "done.json").exists()
    import tensorflow as tf
    indexed = int(tf.train.latest_checkpoint(str(workdir / "attention" / "ckpt")).rsplit("-", 1)[1])
    on_disk = sorted(int(p.name[5:-6]) for p in (workdir / "attention" / "ckpt").glob("ckpt-*.index"))
    out = run_python(*cmd[1:]).stdout
    # The kill may land after a checkpoint's files and before the index file names it: the
    # newest checkpoint on disk is the one to resume from, never older than the index says.
    resumed = re.search(r"resuming from (\S+)-(\d+)\n", out)
    assert resumed and resumed.group(1) == str(workdir / "attention" / "ckpt" / "ckpt"), out
    saved_step = int(resumed.group(2))
    assert saved_step in on_disk and saved_step >= indexed >= 10, (saved_step, on_disk, indexed)
    first = re.search(r"\[attention\] step (\d+)/150 .* lr ([0-9.e+-]+)", out)
    assert int(first.group(1)) == saved_step + 1
    from dcsp_dist.training.schedule import PolyWithWarmup
    expected = float(PolyWithWarmup(1e-2, 150, 0.9)(saved_step))
    assert abs(float(first.group(2)) - expected) / expected < 0.01
    assert (workdir / "attention" / "done.json").exists()


def test_non_finite_loss_stops_with_the_step_and_keeps_the_last_checkpoint(synth_records, tmp_path):
    proc = run_python("-m", "dcsp_dist.train", "--stage", "attention", "--config", "tiny_test",
                      "--data", str(synth_records), "--workdir", str(tmp_path), "--set", "base_lr=1e12",
                      "--set", "attention_steps=50", check=False)
    assert proc.returncode == 1
    line = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
    assert len(line) == 1 and "non-finite loss" in line[0] and re.search(r"at step \d+", line[0])
    assert not (tmp_path / "attention" / "done.json").exists()


def test_fewer_shards_than_ranks_fails_before_any_work(synth_records, tmp_path):
    out = tmp_path / "one_shard"
    manifest = json.load(open(synth_records / "train.manifest.json"))
    os.makedirs(out)
    one = dict(manifest, shards=manifest["shards"][:1], num_examples=manifest["shards"][0]["num_examples"])
    os.symlink(synth_records / manifest["shards"][0]["file"], out / manifest["shards"][0]["file"])
    json.dump(one, open(out / "train.manifest.json", "w"))
    proc = run_ranks(2, "-m", "dcsp_dist.train", "--stage", "attention", "--config", "tiny_test",
                     "--data", str(out), "--workdir", str(tmp_path / "run"), check=False)
    assert proc.returncode != 0
    assert "1 shard files for 2 ranks" in proc.stderr
    assert not (tmp_path / "run").exists()


def test_training_split_without_saliency_fails_before_any_work(synth_records, tmp_path):
    out = tmp_path / "nosal"
    os.makedirs(out)
    manifest = json.load(open(synth_records / "train.manifest.json"))
    for s in manifest["shards"]:
        os.symlink(synth_records / s["file"], out / s["file"])
    json.dump(dict(manifest, has_saliency=False), open(out / "train.manifest.json", "w"))
    proc = run_python("-m", "dcsp_dist.train", "--stage", "all", "--config", "tiny_test",
                      "--data", str(out), "--workdir", str(tmp_path / "run"), check=False)
    assert proc.returncode == 1 and "has no saliency maps" in proc.stderr
    assert not (tmp_path / "run").exists()


def test_ranks_with_different_configs_stop_with_a_clear_error():
    proc = run_ranks(2, "tests/parallel/workers/config_mismatch.py", check=False)
    assert proc.returncode != 0
    assert proc.stdout.count("ranks disagree on the config") == 2


def _stage_weights(workdir, stage):
    """Every tensor of a stage's final checkpoint, by name."""
    import tensorflow as tf
    info = json.load(open(workdir / stage / "done.json"))
    reader = tf.train.load_checkpoint(str(workdir / stage / info["checkpoint"]))
    # Everything the checkpoint holds: Keras 3 saves some model variables under the
    # optimizer's path, so no filter by name.
    return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()}


def test_same_seed_same_run_other_seed_other_run(tiny_run, synth_records, tmp_path):
    """deterministic=True (the demo presets): a second 2-rank --stage all run with the shared
    tiny run's seed ends bit-identical to it in every stage; another seed differs."""
    workdir, _ = tiny_run
    again, other = tmp_path / "again", tmp_path / "other"
    run_ranks(2, "-m", "dcsp_dist.train", "--stage", "all", "--config", "tiny_test", "--data", str(synth_records),
              "--workdir", str(again))
    for stage in ("attention", "segmentation", "segmentation_adapted"):
        first, second = _stage_weights(workdir, stage), _stage_weights(again, stage)
        assert first.keys() == second.keys() and len(first) > 10
        for key in first:
            np.testing.assert_array_equal(first[key], second[key], err_msg=f"{stage}: {key}")
    run_ranks(2, "-m", "dcsp_dist.train", "--stage", "attention", "--config", "tiny_test", "--set", "seed=4",
              "--data", str(synth_records), "--workdir", str(other))
    first, third = _stage_weights(workdir, "attention"), _stage_weights(other, "attention")
    assert any(not np.array_equal(first[k], third[k]) for k in first)


def test_adapt_with_crf_writes_cues_of_tagged_classes(tiny_run, synth_records, tmp_path):
    """adapt_crf=true: the adapt stage's cues come from the CRF-refined restricted softmax;
    every label is background or a tagged class, and the stage reports its cue quality."""
    import shutil

    import tensorflow as tf

    from dcsp_dist.data import records
    from dcsp_dist.data.pipeline import decode_cue
    workdir, _ = tiny_run
    copy = tmp_path / "run"
    for stage in ("attention", "cues", "segmentation"):
        shutil.copytree(workdir / stage, copy / stage)
    # A changed setting on an existing run: said explicitly (the run's config.json says adapt_crf=false).
    run_ranks(2, "-m", "dcsp_dist.train", "--stage", "adapt", "--config", "tiny_test", "--set", "adapt_crf=true",
              "--allow-changed-config", "--data", str(synth_records), "--workdir", str(copy))
    assert json.load(open(copy / "config_changes.json"))[0]["changes"] == ["adapt_crf: False -> True"]
    summary = json.load(open(copy / "adapt" / "cues.json"))
    assert 0 < summary["miou"] <= 1
    manifest = records.read_manifest(str(synth_records), "train")
    tags = {}
    for path in records.shard_files(str(synth_records), manifest):
        for raw in tf.data.TFRecordDataset(path):
            ex = tf.io.parse_single_example(raw, {"id": tf.io.FixedLenFeature([], tf.string),
                                                  "tags/ids": tf.io.VarLenFeature(tf.int64)})
            tags[ex["id"].numpy().decode()] = set(tf.sparse.to_dense(ex["tags/ids"]).numpy().tolist())
    seen = 0
    for path in sorted((copy / "adapt").glob("*.cues.tfrecord")):
        for raw in tf.data.TFRecordDataset(str(path)):
            cue = decode_cue(raw)
            labels = set(np.unique(cue["cue"].numpy()).tolist()) - {0}
            assert labels <= tags[cue["id"].numpy().decode()]
            seen += 1
    assert seen == manifest["num_examples"]


def test_cues_follow_their_records_and_not_bookkeeping(tiny_run, synth_voc, synth_records, tmp_path):
    """Records rebuilt with other saliency (same ids, same sizes): rerunning the cue stage
    redoes every shard, and the cues differ; a rerun that changes only log_every redoes none;
    a training stage done on the old records is refused by name."""
    import shutil

    from data_tools import build, sources
    from data_tools.saliency import maps
    workdir, _ = tiny_run
    copy = tmp_path / "run"
    for stage in ("attention", "cues"):
        shutil.copytree(workdir / stage, copy / stage)
    lists = synth_voc / "ImageSets" / "Segmentation"
    assert maps.main(["--root", str(synth_voc), "--split-list", str(lists / "train.txt"), "--out-dir",
                      str(tmp_path / "sal"), "--detector", "frequency-tuned", "--workers", "1"]) == 0
    data = tmp_path / "records"
    ids = sources.read_id_list(str(lists / "train.txt"))
    build.build(sources.VocSource(str(synth_voc), ids, saliency_dir=str(tmp_path / "sal")), "train", str(data),
                num_shards=4, workers=1, progress=False)
    shutil.copy(synth_records / "val.manifest.json", data)
    for f in synth_records.glob("val-*.tfrecord"):
        shutil.copy(f, data)
    shards = sorted((copy / "cues").glob("*.cues.tfrecord"))
    before = {p.name: p.read_bytes() for p in shards}
    stamps = {p.name: json.load(open(str(p) + ".json"))["made_by"] for p in shards}
    train = ["-m", "dcsp_dist.train", "--config", "tiny_test", "--data", str(data), "--workdir", str(copy)]
    out = run_ranks(2, *train, "--stage", "cues").stdout
    assert "the training records changed since this stage was done; redoing it" in out
    after = {p.name: p.read_bytes() for p in sorted((copy / "cues").glob("*.cues.tfrecord"))}
    assert after.keys() == before.keys() and all(after[n] != before[n] for n in after)       # every shard redone
    assert all(json.load(open(copy / "cues" / (n + ".json")))["made_by"] != stamps[n] for n in after)
    mtimes = {p.name: p.stat().st_mtime_ns for p in (copy / "cues").glob("*.cues.tfrecord")}
    os.remove(copy / "cues" / "done.json")
    run_ranks(2, *train, "--stage", "cues", "--set", "log_every=7")
    assert {p.name: p.stat().st_mtime_ns for p in (copy / "cues").glob("*.cues.tfrecord")} == mtimes   # none redone
    proc = run_ranks(2, *train, "--stage", "attention", check=False)
    assert proc.returncode != 0 and "[attention] was trained on other records" in proc.stdout + proc.stderr
