"""Preempted, nothing lost: a signal to one rank stops every rank at the same step, rank 0
checkpoints that step, and the resumed run ends bit-identical to an uninterrupted one.

Real horovodrun jobs, real signals to real rank processes.
"""
import json
import os
import re
import signal
import subprocess
import sys

from tests.hvd import HOROVODRUN, ROOT, run_ranks
from tests.parallel.test_elastic import _watch, _worker_pids

STEPS = 40
FLAGS = ["-m", "dcsp_dist.train", "--stage", "attention", "--config", "tiny_test", "--set", f"attention_steps={STEPS}",
         "--set", "checkpoint_every=1000", "--set", "log_every=1", "--set", "image_summary_every=1000"]


def _env():
    return dict(os.environ, DCSP_THREADS="1", TF_CPP_MIN_LOG_LEVEL="2", HOROVOD_CYCLE_TIME="1",
                PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _digest(workdir):
    return json.load(open(workdir / "attention" / "done.json"))["weights_sha256"]


def test_signal_to_one_rank_loses_no_step_and_the_resume_equals_an_uninterrupted_run(synth_records, tmp_path):
    straight = tmp_path / "straight"
    run_ranks(2, *FLAGS, "--data", str(synth_records), "--workdir", str(straight))

    workdir = tmp_path / "preempted"
    cmd = [HOROVODRUN, "--gloo", "-np", "2", "-H", "localhost:2", sys.executable, *FLAGS,
           "--data", str(synth_records), "--workdir", str(workdir)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    out = _watch(proc, 10, lambda step: [os.kill(pid, signal.SIGUSR1) for pid in _worker_pids(workdir, 1)])
    assert proc.returncode != 0, out[-3000:]
    stops = re.findall(r"\[attention\] preempted at step (\d+)/40 \(([^)]*)\); checkpoint (\S+);", out)
    assert stops, out[-3000:]
    step = int(stops[0][0])
    last_logged = max(int(s) for s in re.findall(r"\[attention\] step (\d+)/40", out))
    assert step == last_logged and 10 <= step < STEPS, out[-3000:]          # 0 steps lost
    assert stops[0][2].endswith(f"ckpt-{step}") and os.path.exists(stops[0][2] + ".index")
    assert not (workdir / "attention" / "done.json").exists()
    assert not (workdir / ".lock").exists()

    resumed = run_ranks(2, *FLAGS, "--data", str(synth_records), "--workdir", str(workdir))
    assert f"resuming from {workdir}/attention/ckpt/ckpt-{step}" in resumed.stdout
    assert f"[attention] step {step + 1}/40" in resumed.stdout
    assert _digest(workdir) == _digest(straight)                           # bit-identical


def test_one_process_exits_with_the_preempted_status(synth_records, tmp_path):
    cmd = [sys.executable, *FLAGS, "--data", str(synth_records), "--workdir", str(tmp_path)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    out = _watch(proc, 5, lambda step: os.kill(proc.pid, signal.SIGTERM))
    assert proc.returncode == 75, out[-3000:]
    assert re.search(r"preempted at step \d+/40 \(SIGTERM\)", out)


def test_resumed_cue_stage_redoes_only_unfinished_shards(tiny_run, synth_records, tmp_path):
    import shutil
    run = tmp_path / "run"
    shutil.copytree(tiny_run[0], run)
    for name in ("done.json", "cues.json"):
        (run / "cues" / name).unlink()
    shards = sorted((run / "cues").glob("*.cues.tfrecord"))
    redo = shards[1]
    (redo.parent / (redo.name + ".json")).unlink()          # as if the stage stopped inside this shard
    redo.unlink()
    before = {p.name: p.stat().st_mtime_ns for p in shards if p != redo}
    proc = run_ranks(2, "-m", "dcsp_dist.train", "--stage", "cues", "--config", "tiny_test",
                     "--data", str(synth_records), "--workdir", str(run))
    after = {p.name: p.stat().st_mtime_ns for p in sorted((run / "cues").glob("*.cues.tfrecord"))}
    assert redo.name in after and {k: after[k] for k in before} == before, proc.stdout[-2000:]
    summary = json.load(open(run / "cues" / "cues.json"))
    original = json.load(open(tiny_run[0] / "cues" / "cues.json"))
    assert summary["confusion_matrix"] == original["confusion_matrix"]      # the same cues, the same figures
