"""Nothing lost, nothing raw: damaged checkpoints and records, full disks, bad outputs.

Real files damaged for real (truncated, bytes flipped), real horovodrun jobs, and a real
tmpfs for the full-disk cases. Each test checks the message, the exit status, the time and
what is left on disk.
"""
import json
import os
import shutil
import subprocess
import time

import pytest

from dcsp_dist.core import atomic
from tests.support.hvd import run_python, run_ranks

TRAIN = ["-m", "dcsp_dist.train", "--config", "tiny_test", "--set", "checkpoint_every=2",
         "--set", "attention_steps=8", "--set", "image_summary_every=1000"]


def _errors(proc):
    return [line for line in (proc.stdout + proc.stderr).splitlines() if "error:" in line]


def _attention(records, workdir, check=True):
    return run_ranks(2, *TRAIN, "--stage", "attention", "--data", str(records), "--workdir", str(workdir),
                     check=check)


@pytest.fixture(scope="module")
def trained(synth_records, tmp_path_factory):
    """An attention stage of 8 steps with checkpoints 4, 6, 8 kept."""
    workdir = tmp_path_factory.mktemp("attention_run")
    _attention(synth_records, workdir)
    return workdir


def _copy(trained, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(trained, copy)
    return copy


def _stamps(ckpt):
    return {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in ckpt.iterdir() if p.name.startswith("ckpt-")}


def test_lost_index_resumes_from_the_files_and_overwrites_nothing(trained, synth_records, tmp_path):
    run = _copy(trained, tmp_path)
    ckpt = run / "attention" / "ckpt"
    (run / "attention" / "done.json").unlink()
    (ckpt / "checkpoint").unlink()
    before = _stamps(ckpt)
    proc = _attention(synth_records, run)
    assert "resuming from" in proc.stdout and "ckpt-8" in proc.stdout, proc.stdout[-2000:]
    assert "random initialisation" not in proc.stdout
    assert _stamps(ckpt) == before                                      # nothing overwritten
    assert json.load(open(run / "attention" / "done.json"))["checkpoint"] == "ckpt/ckpt-8"


def test_truncated_newest_checkpoint_is_skipped_and_the_stage_is_not_done(trained, synth_records, tmp_path):
    run = _copy(trained, tmp_path)
    ckpt = run / "attention" / "ckpt"
    data = next(ckpt.glob("ckpt-8.data-*"))
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    older = {k: v for k, v in _stamps(ckpt).items() if k.startswith(("ckpt-4", "ckpt-6"))}
    proc = _attention(synth_records, run)
    log = proc.stdout + proc.stderr
    assert "done.json names" in log and "unreadable" in log           # not "already done"
    assert "skipped unreadable checkpoint(s)" in log and "ckpt-8" in log
    assert "resuming from" in log and "ckpt-6" in log
    assert {k: v for k, v in _stamps(ckpt).items() if k in older} == older
    from dcsp_dist.rundir import checkpoints
    assert checkpoints.problem(str(ckpt / "ckpt-8")) is None           # retrained and readable again


def test_no_readable_checkpoint_refuses_to_start_over(trained, synth_records, tmp_path):
    run = _copy(trained, tmp_path)
    (run / "attention" / "done.json").unlink()
    for data in (run / "attention" / "ckpt").glob("ckpt-*.data-*"):
        data.write_bytes(b"\0" * 10)
    before = _stamps(run / "attention" / "ckpt")
    start = time.time()
    proc = _attention(synth_records, run, check=False)
    assert proc.returncode != 0 and time.time() - start < 120
    errors = _errors(proc)
    assert errors and all("no readable checkpoint" in e and "refusing to start" in e for e in errors), errors
    assert _stamps(run / "attention" / "ckpt") == before


@pytest.mark.parametrize("tool", ["evaluate", "predict"])
def test_unreadable_checkpoint_is_one_clear_line_for_evaluate_and_predict(trained, synth_records, tmp_path, tool):
    run = _copy(trained, tmp_path)
    data = next((run / "attention" / "ckpt").glob("ckpt-8.data-*"))
    data.write_bytes(data.read_bytes()[:100])
    proc = run_python("-m", f"dcsp_dist.{tool}", "--checkpoint", str(run / "attention" / "ckpt" / "ckpt-8"),
                      "--data", str(synth_records), "--split", "val", "--out", str(tmp_path / "out"), "--no-crf",
                      check=False)
    errors = _errors(proc)
    assert proc.returncode == 1 and len(errors) == 1, proc.stderr[-2000:]
    assert "ckpt-8 is unreadable" in errors[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def _damaged_copy(synth_records, tmp_path, how):
    data = tmp_path / "records"
    shutil.copytree(synth_records, data)
    shard = sorted(data.glob("train-*.tfrecord"))[1]      # rank 1's first shard under 2 ranks
    raw = bytearray(shard.read_bytes())
    if how == "truncate":
        shard.write_bytes(raw[: len(raw) // 2])
    else:  # flip bytes inside the first record's payload: same size, CRC mismatch when read
        for i in range(40, 60):
            raw[i] ^= 0xFF
        shard.write_bytes(bytes(raw))
    return data, shard


def test_truncated_shard_stops_every_rank_before_any_work(synth_records, tmp_path):
    data, shard = _damaged_copy(synth_records, tmp_path, "truncate")
    start = time.time()
    proc = run_ranks(2, *TRAIN, "--stage", "attention", "--data", str(data), "--workdir", str(tmp_path / "w"),
                     check=False)
    assert proc.returncode != 0 and time.time() - start < 120
    errors = _errors(proc)
    assert len(errors) == 2, errors                                      # one line from each rank
    assert all(str(shard) in e and "truncated" in e and "data_tools.verify" in e for e in errors)
    assert not (tmp_path / "w" / "attention" / "ckpt").exists()


def test_flipped_bytes_found_by_verify_data_at_start_or_named_when_read(synth_records, tmp_path):
    data, shard = _damaged_copy(synth_records, tmp_path, "flip")
    proc = run_ranks(2, *TRAIN, "--verify-data", "--stage", "attention", "--data", str(data),
                     "--workdir", str(tmp_path / "w1"), check=False)
    errors = _errors(proc)
    assert proc.returncode != 0 and len(errors) == 2 and all(str(shard) in e and "sha256" in e for e in errors)
    # Without --verify-data the size matches, so training starts; the first read of the
    # damaged record names the shard instead of a raw DataLossError.
    start = time.time()
    proc = run_ranks(2, *TRAIN, "--stage", "attention", "--data", str(data), "--workdir", str(tmp_path / "w2"),
                     check=False)
    assert proc.returncode != 0 and time.time() - start < 180
    log = proc.stdout + proc.stderr
    assert f"damaged records in {shard}" in log and "data_tools.verify" in log, log[-3000:]
    assert "<stderr>:Traceback" not in log       # no rank ends in a raw error (horovodrun's own report aside)


def test_bad_settings_and_outputs_are_one_line_and_leave_nothing(trained, synth_records, tmp_path):
    for setting in ("checkpoint_every=0", "global_batch=0", "eval_scales=1,1.5"):
        workdir = tmp_path / f"w-{setting.split('=')[0]}"
        proc = run_python(*TRAIN, "--stage", "attention", "--set", setting, "--data", str(synth_records),
                          "--workdir", str(workdir), check=False)
        assert proc.returncode == 2 and setting.split("=")[0] in proc.stderr and "Traceback" not in proc.stderr
        assert not workdir.exists()
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    start = time.time()
    proc = run_python("-m", "dcsp_dist.evaluate", "--checkpoint", str(trained / "attention"), "--data",
                      str(synth_records), "--split", "val", "--out", str(a_file), check=False)
    assert proc.returncode == 1 and "--out" in proc.stderr and "not a directory" in proc.stderr
    assert time.time() - start < 60 and a_file.read_text() == "x"
    proc = run_python(*TRAIN, "--stage", "attention", "--data", str(synth_records), "--workdir", str(a_file / "w"),
                      check=False)
    assert proc.returncode == 1 and "--workdir" in proc.stderr and "Traceback" not in proc.stderr
    bad = tmp_path / "bad_manifest"
    bad.mkdir()
    (bad / "train.manifest.json").write_text(json.dumps({"schema_version": 1, "shards": "none"}))
    proc = run_python(*TRAIN, "--stage", "attention", "--data", str(bad), "--workdir", str(tmp_path / "w3"),
                      check=False)
    assert proc.returncode == 1 and "is not a dcsp_dist manifest" in proc.stderr and "Traceback" not in proc.stderr


def test_build_leaves_no_empty_output_on_duplicate_ids(synth_voc, tmp_path):
    ids = tmp_path / "ids.txt"
    first = (synth_voc / "ImageSets" / "Segmentation" / "train.txt").read_text().split()[0]
    ids.write_text(f"{first}\n{first}\n")
    out = tmp_path / "new_records"
    proc = run_python("-m", "data_tools.build", "--root", str(synth_voc), "--split-list", str(ids),
                      "--split", "train", "--out", str(out), "--quiet", check=False)
    assert proc.returncode == 1 and "duplicate id" in proc.stderr and not out.exists()
    proc = run_python("-m", "data_tools.build", "--root", str(synth_voc), "--split-list", str(ids),
                      "--split", "train", "--out", str(ids), "--quiet", check=False)
    assert proc.returncode == 2 and "not a directory" in proc.stderr and "Traceback" not in proc.stderr


# ----------------------------------------------------------------------------- full disk
@pytest.fixture
def tmpfs(tmp_path):
    """mount(size) -> a tmpfs of that size mounted for the test (needs root, as CI runs)."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tmpfs needs root")
    mounted = []

    def mount(size):
        point = tmp_path / f"tmpfs{len(mounted)}"
        point.mkdir()
        if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)]).returncode:
            pytest.skip("mount -t tmpfs failed here")
        mounted.append(point)
        return point

    try:
        yield mount
    finally:
        for point in mounted:
            subprocess.run(["umount", "-l", str(point)])


@pytest.fixture
def small_tmpfs(tmpfs):
    return tmpfs("1m")


def _fill(mount):
    """Fill the file system to the last byte."""
    with open(mount / "filler", "wb", buffering=0) as fh:
        try:
            while True:
                fh.write(b"\0" * 4096)
        except OSError:
            pass


def test_full_disk_while_saving_a_checkpoint_or_json(small_tmpfs):
    import keras
    import tensorflow as tf

    from dcsp_dist.rundir.checkpoints import save as _save

    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(64)])
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(model=model), str(small_tmpfs / "ckpt"), max_to_keep=3)
    manager.save(checkpoint_number=1)
    atomic.write_json(str(small_tmpfs / "results.json"), {"miou": 0.5})
    before = sorted(os.listdir(small_tmpfs / "ckpt"))
    _fill(small_tmpfs)
    with pytest.raises(OSError, match=r"saving checkpoint .*ckpt-2 failed .*earlier checkpoints kept: ckpt-1"):
        _save(manager, 2)
    assert sorted(os.listdir(small_tmpfs / "ckpt")) == before              # nothing partial
    from dcsp_dist.rundir import checkpoints
    assert checkpoints.problem(str(small_tmpfs / "ckpt" / "ckpt-1")) is None
    with pytest.raises(OSError, match=r"writing .*results.json failed"):
        atomic.write_json(str(small_tmpfs / "results.json"), {"miou": 0.6, "pad": "x" * 100_000})
    assert json.load(open(small_tmpfs / "results.json")) == {"miou": 0.5}
    assert not [f for f in os.listdir(small_tmpfs) if ".tmp" in f]


def test_damaged_val_records_are_named_by_evaluate(trained, synth_records, tmp_path):
    data = tmp_path / "records"
    shutil.copytree(synth_records, data)
    shard = sorted(data.glob("val-*.tfrecord"))[0]
    raw = bytearray(shard.read_bytes())
    for i in range(40, 60):
        raw[i] ^= 0xFF
    shard.write_bytes(bytes(raw))
    proc = run_python("-m", "dcsp_dist.evaluate", "--checkpoint", str(trained / "attention"), "--data", str(data),
                      "--split", "val", "--out", str(tmp_path / "out"), "--no-crf", check=False)
    errors = _errors(proc)
    assert proc.returncode == 1 and len(errors) == 1, proc.stderr[-2000:]
    assert f"damaged records in {shard}" in errors[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "out" / "results.json").exists()


def test_full_disk_while_writing_cue_shards(trained, synth_records, tmpfs):
    mount = tmpfs("16m")
    run = mount / "run"
    shutil.copytree(trained / "attention", run / "attention", ignore=shutil.ignore_patterns("tb"))
    _fill(mount)
    proc = run_python("-m", "dcsp_dist.train", "--stage", "cues", "--config", "tiny_test", "--data",
                      str(synth_records), "--workdir", str(run), check=False)
    errors = _errors(proc)
    assert proc.returncode == 1 and len(errors) == 1, proc.stderr[-2000:]
    assert ("failed" in errors[0] or "cannot write" in errors[0]) and "Traceback" not in proc.stderr
    left = [p.name for p in (run / "cues").iterdir()] if (run / "cues").exists() else []
    assert not [name for name in left if ".tmp" in name or name.endswith(".cues.tfrecord")], left
    from dcsp_dist.rundir import checkpoints
    assert checkpoints.problem(str(run / "attention" / "ckpt" / "ckpt-8")) is None
