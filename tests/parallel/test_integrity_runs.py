"""Nothing lost, round two: rotation after resumes, no non-finite checkpoint, one job per
run directory, changed settings on resume, empty shards, damaged cue shards, empty state
files, the device line.

Real horovodrun jobs on real files; each test checks the message, the exit status and what
is left on disk.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np

from tests.support.hvd import HOROVODRUN, ROOT, run_ranks

TRAIN = ["-m", "dcsp_dist.train", "--config", "tiny_test", "--set", "image_summary_every=1000"]
STEPS_FIRST = 200   # the first of two jobs: stopped (SIGSTOP) while it holds the lock, so any count will do


def _errors(proc):
    return [line for line in (proc.stdout + proc.stderr).splitlines() if "error:" in line]


def _attention(records, workdir, *extra, ranks=2, check=True):
    return run_ranks(ranks, *TRAIN, "--stage", "attention", "--data", str(records), "--workdir", str(workdir),
                     *extra, check=check)


def _indexed(ckpt):
    return sorted(int(p.name[len("ckpt-"):-len(".index")]) for p in ckpt.glob("ckpt-*.index"))


def test_rotation_survives_three_resumes(synth_records, tmp_path):
    ckpt = tmp_path / "attention" / "ckpt"
    for steps in (4, 6, 8, 10):   # the first run, then three resumes with more steps
        if steps > 4:
            (tmp_path / "attention" / "done.json").unlink()
        _attention(synth_records, tmp_path, "--set", f"attention_steps={steps}", "--set", "checkpoint_every=1",
                   "--set", "keep_checkpoints=2", "--allow-changed-config", ranks=1)   # rank 0 keeps them
        assert _indexed(ckpt) == [steps - 1, steps], sorted(os.listdir(ckpt))
    changes = json.load(open(tmp_path / "config_changes.json"))
    assert len(changes) == 3 and changes[0]["changes"] == ["attention_steps: 4 -> 6"]


def test_overflowing_weights_are_never_checkpointed(synth_records, tmp_path):
    import tensorflow as tf
    proc = _attention(synth_records, tmp_path, "--set", "attention_steps=20", "--set", "checkpoint_every=1",
                      "--set", "base_lr=3e38", check=False)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    errors = _errors(proc)
    assert errors and all("non-finite" in e and "stopped" in e for e in errors), errors
    assert not (tmp_path / "attention" / "done.json").exists()
    for index in (tmp_path / "attention" / "ckpt").glob("ckpt-*.index"):
        reader = tf.train.load_checkpoint(str(index)[: -len(".index")])
        for name in reader.get_variable_to_shape_map():
            value = reader.get_tensor(name)
            if np.issubdtype(np.asarray(value).dtype, np.floating):
                assert np.isfinite(value).all(), (index.name, name)


def _spawn_attention(records, workdir, steps):
    env = dict(os.environ, DCSP_THREADS="1", TF_CPP_MIN_LOG_LEVEL="2", HOROVOD_CYCLE_TIME="1",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [*HOROVODRUN, "--gloo", "-np", "1", "-H", "localhost:1", sys.executable, *TRAIN, "--stage", "attention",
           "--data", str(records), "--workdir", str(workdir), "--set", f"attention_steps={steps}"]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_second_job_on_a_run_directory_refuses_and_the_first_finishes(synth_records, tmp_path):
    first = _spawn_attention(synth_records, tmp_path, steps=STEPS_FIRST)
    lock, holder = tmp_path / ".lock", {}
    deadline = time.time() + 180
    while "pid" not in holder and time.time() < deadline and first.poll() is None:
        time.sleep(0.1)
        try:
            holder = json.loads(lock.read_text())
        except (OSError, ValueError):
            pass
    assert "pid" in holder, first.communicate()[0][-2000:]
    # The holder is held still (SIGSTOP, alive, its lock fresh) while the second job starts: the
    # refusal cannot depend on how fast the first one trains.
    os.kill(holder["pid"], signal.SIGSTOP)
    try:
        second = _attention(synth_records, tmp_path, "--set", f"attention_steps={STEPS_FIRST}", check=False)
    finally:
        os.kill(holder["pid"], signal.SIGCONT)
    assert second.returncode == 1
    errors = _errors(second)
    assert len(errors) == 2 and all("is in use by" in e and f"pid {holder['pid']}" in e for e in errors), errors
    out, _ = first.communicate(timeout=600)
    assert first.returncode == 0, out[-3000:]
    assert json.load(open(tmp_path / "attention" / "done.json"))["checkpoint"] == f"ckpt/ckpt-{STEPS_FIRST}"
    assert not lock.exists()                                            # released at the end


def test_stale_lock_of_a_dead_process_is_taken_over(synth_records, tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    import socket
    (tmp_path / ".lock").write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid,
                                                "started": "earlier", "token": "x"}))
    proc = _attention(synth_records, tmp_path, "--set", "attention_steps=2", ranks=1)     # rank 0 holds the lock
    assert "took over the stale lock" in proc.stdout and f"process {dead.pid} is gone" in proc.stdout
    assert (tmp_path / "attention" / "done.json").exists() and not (tmp_path / ".lock").exists()


def test_resume_with_changed_settings_is_refused(synth_records, tmp_path):
    _attention(synth_records, tmp_path, "--set", "attention_steps=2")
    (tmp_path / "attention" / "done.json").unlink()
    proc = _attention(synth_records, tmp_path, "--set", "attention_steps=3", "--set", "bg_threshold=0.5",
                      "--set", "log_every=7", check=False)
    assert proc.returncode == 1
    errors = _errors(proc)
    assert len(errors) == 2, errors
    assert "attention_steps: 2 -> 3" in errors[0] and "bg_threshold: 0.4 -> 0.5" in errors[0]
    assert "log_every" not in errors[0] and "--allow-changed-config" in errors[0]
    assert not (tmp_path / "attention" / "done.json").exists()


def _copy_records(records, tmp_path):
    copy = tmp_path / "records"
    shutil.copytree(records, copy)
    return copy


def test_empty_shard_is_one_line_on_every_rank_before_any_step(synth_records, tmp_path):
    records = _copy_records(synth_records, tmp_path)
    manifest_path = records / "train.manifest.json"
    manifest = json.load(open(manifest_path))
    shard = manifest["shards"][1]
    open(records / shard["file"], "wb").close()
    import hashlib
    shard.update(num_examples=0, bytes=0, sha256=hashlib.sha256(b"").hexdigest())
    manifest_path.write_text(json.dumps(manifest))
    start = time.time()
    proc = _attention(records, tmp_path / "run", check=False)
    assert time.time() - start < 120
    errors = _errors(proc)
    assert proc.returncode == 1 and len(errors) == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert all(shard["file"] in e and "empty shard" in e for e in errors)
    assert "step 1/" not in proc.stdout


def test_uneven_shards_are_reported_with_the_shard_count_that_evens_them(synth_records, tmp_path):
    manifest = json.load(open(synth_records / "train.manifest.json"))
    assert len(manifest["shards"]) % 3, "the fixture's shards must not divide evenly over 3 ranks"   # before any job
    proc = _attention(synth_records, tmp_path, "--set", "attention_steps=1", "--set", "global_batch=3", ranks=3)
    assert "uneven records per rank over 3 ranks" in proc.stdout and "--num-shards" in proc.stdout


def _copy_run(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run[0], run)
    return run


def test_truncated_cue_shard_is_named_as_a_cue_shard(tiny_run, synth_records, tmp_path):
    run = _copy_run(tiny_run, tmp_path)
    shutil.rmtree(run / "segmentation")
    cue = sorted((run / "cues").glob("*.cues.tfrecord"))[0]
    cue.write_bytes(cue.read_bytes()[: cue.stat().st_size // 2])
    proc = run_ranks(2, *TRAIN, "--stage", "segmentation", "--data", str(synth_records), "--workdir", str(run),
                     check=False)
    errors = _errors(proc)
    assert proc.returncode == 1 and len(errors) == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert all(f"cue shard {cue}" in e and "rerun --stage cues" in e for e in errors), errors


def test_empty_done_json_is_one_line_naming_it(tiny_run, synth_records, tmp_path):
    run = _copy_run(tiny_run, tmp_path)
    done = run / "attention" / "done.json"
    done.write_text("")
    proc = run_ranks(2, *TRAIN, "--stage", "all", "--data", str(synth_records), "--workdir", str(run), check=False)
    errors = _errors(proc)
    assert proc.returncode == 1 and len(errors) == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert all(str(done) in e and "unreadable" in e for e in errors), errors
    assert not [line for line in proc.stderr.splitlines() if line.startswith("[") and "Traceback" in line]


def test_device_line_and_require_gpu_refusal(tiny_run, synth_records, tmp_path):
    import socket
    host = socket.gethostname()
    assert f"rank 0 on {host}: CPU only" in tiny_run[1] and f"rank 1 on {host}: CPU only" in tiny_run[1]
    proc = _attention(synth_records, tmp_path / "gpu", "--set", "require_gpu=true", check=False)
    errors = _errors(proc)
    assert proc.returncode == 1 and len(errors) == 2, errors
    assert all("require_gpu=true, but TensorFlow sees no GPU" in e for e in errors)
    assert not (tmp_path / "gpu" / "attention").exists()
    proc = run_ranks(1, *TRAIN, "--stage", "attention", "--data", str(synth_records), "--workdir",
                     str(tmp_path / "cvd"), check=False, env={"CUDA_VISIBLE_DEVICES": "0"})
    assert proc.returncode == 1 and "CUDA_VISIBLE_DEVICES=0, but TensorFlow sees no GPU" in proc.stderr
    proc = run_ranks(1, *TRAIN, "--stage", "attention", "--data", str(synth_records), "--workdir",
                     str(tmp_path / "cvd_off"), "--set", "attention_steps=1", "--set", "require_gpu=false",
                     env={"CUDA_VISIBLE_DEVICES": "0"})
    assert "rank 0 on" in proc.stdout and "CPU only" in proc.stdout


def _predict(tiny_run, records, out, split, check=True):
    return run_ranks(2, "-m", "dcsp_dist.predict", "--checkpoint", str(tiny_run[0]), "--data", str(records),
                     "--split", split, "--out", str(out), "--no-crf", check=check)


def test_predict_twice_into_one_out_holds_only_the_second_split(tiny_run, synth_records, synth_voc, tmp_path):
    import tarfile
    out = tmp_path / "sub"
    _predict(tiny_run, synth_records, out, "train")
    (out / "results" / "VOC2012" / "Segmentation" / "comp6_test_cls" / "orphan.tmp.png").write_bytes(b"x")
    _predict(tiny_run, synth_records, out, "val")
    val_ids = set((synth_voc / "ImageSets" / "Segmentation" / "val.txt").read_text().split())
    masks = sorted(p.name for p in (out / "results" / "VOC2012" / "Segmentation" / "comp6_test_cls").iterdir())
    manifest = json.load(open(synth_records / "val.manifest.json"))
    assert len(masks) == manifest["num_examples"] == 7 and all(m.endswith(".png") for m in masks)
    assert {m[:-4] for m in masks} == val_ids
    with tarfile.open(out / "results.tar.gz") as tar:
        names = sorted(os.path.basename(n) for n in tar.getnames() if n.endswith(".png"))
    assert names == masks
    assert json.load(open(out / "predict.json"))["split"] == "val"
    assert not [p for p in tmp_path.iterdir() if ".partial" in p.name or ".old" in p.name]


def test_predict_refuses_a_directory_it_did_not_write(tiny_run, synth_records, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    proc = _predict(tiny_run, synth_records, out, "val", check=False)
    errors = _errors(proc)
    assert proc.returncode == 1 and len(errors) == 2 and all("did not write" in e for e in errors), errors
    assert (out / "notes.txt").read_text() == "keep me" and sorted(os.listdir(out)) == ["notes.txt"]
