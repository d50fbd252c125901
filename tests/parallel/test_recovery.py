"""Training that does not die of one bad stretch (dcsp_dist.training.recovery), under real horovodrun:
a rate that blows the loss up is rolled back from on every rank together and the run
finishes; a run that cannot be recovered stops after the bound with its last good state
saved and named."""
import json
import os
import re

import numpy as np

from tests.support.hvd import run_ranks

FLAGS = ["-m", "dcsp_dist.train", "--stage", "attention", "--config", "tiny_test", "--set", "attention_steps=8",
         "--set", "checkpoint_every=1000", "--set", "log_every=1"]


def _events(log):
    return re.findall(r"\[attention\] recovery (\d)/3: (.*?) at step (\d+); rolled back to the state of step (\d+), "
                      r"skipped batches \d+-\d+, learning rate x([0-9.e-]+)", log)


def test_a_rate_that_blows_up_is_rolled_back_on_every_rank_and_the_run_finishes(synth_records, tmp_path):
    workdir = tmp_path / "run"
    proc = run_ranks(2, *FLAGS, "--data", str(synth_records), "--workdir", str(workdir),
                     "--set", "base_lr=1e5", "--set", "recovery_lr_factor=1e-7")   # 1e5 -> 0.01 after one roll-back
    events = _events(proc.stdout)
    assert len(events) == 1, proc.stdout[-3000:]
    count, why, step, back_to, scale = events[0]
    assert "non-finite" in why and back_to == "0" and float(scale) == 1e-7
    done = json.load(open(workdir / "attention" / "done.json"))
    assert done["steps"] == 8 and [(e["step"], e["back_to"]) for e in done["recoveries"]] == [(int(step), 0)]
    # every rank held the same weights at the end (the stage checks it) and they are finite
    digests = re.findall(r"rank \d on \S+: weights sha256 (\w+)", proc.stdout)
    assert len(digests) == 2 and len(set(digests)) == 1
    assert re.search(r"step 8/8 .* lr \d", proc.stdout)
    from tensorflow.python.summary.summary_iterator import summary_iterator
    tags = set()
    for name in os.listdir(workdir / "attention" / "tb"):
        for event in summary_iterator(str(workdir / "attention" / "tb" / name)):
            tags |= {v.tag for v in event.summary.value}
    assert {"recovery", "recovery/count", "recovery/lr_scale"} <= tags, tags


def test_a_run_that_cannot_be_recovered_stops_after_the_bound_with_the_last_good_state_saved(synth_records, tmp_path):
    workdir = tmp_path / "run"
    # No lower rate helps: a step from the good state blows the weights up, the next step's loss
    # is NaN, and so every other step rolls back (2, 4, 6); the fourth NaN, at step 8, stops.
    proc = run_ranks(2, *FLAGS, "--data", str(synth_records), "--workdir", str(workdir), "--set", "base_lr=1e6",
                     "--set", "recovery_lr_factor=1", check=False)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert [e[0] for e in _events(proc.stdout)] == ["1", "2", "3"], proc.stdout[-3000:]
    saved = f"{workdir}/attention/ckpt/ckpt-0"
    lines = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(lines) == 2 and all(f"after 3 recoveries; stopped. The last good state is saved: {saved} (step 0)"
                                   in line for line in lines), proc.stderr[-3000:]
    import tensorflow as tf
    reader = tf.train.load_checkpoint(saved)
    values = [reader.get_tensor(k) for k in reader.get_variable_to_shape_map() if "model" in k]
    assert values and all(np.all(np.isfinite(v)) for v in values if np.issubdtype(np.asarray(v).dtype, np.floating))
    assert not (workdir / "attention" / "done.json").exists() and not (workdir / ".lock").exists()


def test_an_elastic_job_rolls_back_on_every_worker_alike(synth_records, tmp_path):
    """Horovod elastic (launch/elastic.sh, two workers): the same roll-back decided on each
    worker from the step's averaged losses, the rate's scale part of the elastic state, and
    the stage ends with every rank on the same weights."""
    import subprocess
    import sys

    from tests.support.hvd import ROOT
    workdir = tmp_path / "run"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", HOROVOD_CYCLE_TIME="1", DCSP_THREADS="1",
               PYTHONPATH=ROOT, PYTHON=sys.executable)
    cmd = ["bash", "launch/elastic.sh", "--min-np", "2", "--max-np", "2", "-H", "localhost:1,127.0.0.1:1",
           "--elastic-timeout", "120", "--stage", "attention", "--config", "tiny_test", "--data", str(synth_records),
           "--workdir", str(workdir), "--", *FLAGS[6:], "--set", "elastic_commit_every=3", "--set", "base_lr=1e5",
           "--set", "recovery_lr_factor=1e-7"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    events = _events(out)
    assert len(events) == 1 and events[0][3] == "0", out[-4000:]
    done = json.load(open(workdir / "attention" / "done.json"))
    assert len(done["recoveries"]) == 1 and done["steps"] == 8
    digests = re.findall(r"rank \d on \S+: weights sha256 (\w+)", out)
    assert len(digests) == 2 and len(set(digests)) == 1, out[-3000:]
