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

from tests.parallel.test_elastic import _watch, _worker_pids
from tests.support.hvd import ROOT, run_ranks, spawned_workers

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
    # through launch/local.sh (horovodrun, Gloo): the launcher ends 75 too, with one line and
    # no traceback of Horovod's launcher (launch/horovodrun.py)
    cmd = [os.path.join(ROOT, "launch", "local.sh"), "-n", "2", "--stage", "attention", "--config", "tiny_test",
           "--data", str(synth_records), "--workdir", str(workdir), "--", *FLAGS[6:]]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=dict(_env(), PYTHON=sys.executable), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    out = _watch(proc, 10, lambda step: [os.kill(pid, signal.SIGUSR1) for pid in _worker_pids(workdir, 1)])
    assert proc.returncode == 75, out[-3000:]
    assert "Traceback" not in out and out.strip().splitlines()[-1].startswith("horovodrun: the job stopped resumably")
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


def test_term_to_the_mpirun_wrapper_checkpoints_the_last_step_and_exits_75(synth_records, tmp_path):
    """launch/mpirun.sh (as the k8s launcher runs mpirun): TERM to it becomes USR1 to the
    ranks through mpirun, instead of mpirun's own TERM handling that kills them."""
    workdir = tmp_path / "run"
    cmd = [os.path.join(ROOT, "launch", "mpirun.sh"), "-n", "2", "--stage", "attention", "--config", "tiny_test",
           "--data", str(synth_records), "--workdir", str(workdir), "--", *FLAGS[6:]]
    env = dict(_env(), DCSP_TF_LOGS="1")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    out = _watch(proc, 10, lambda step: os.kill(proc.pid, signal.SIGTERM))
    assert proc.returncode == 75, out[-3000:]
    stops = re.findall(r"\[attention\] preempted at step (\d+)/40 \(SIGUSR1\); checkpoint (\S+);", out)
    assert stops, out[-3000:]
    step = int(stops[0][0])
    assert step == max(int(s) for s in re.findall(r"\[attention\] step (\d+)/40", out))   # the last step
    assert stops[0][1].endswith(f"ckpt-{step}") and os.path.exists(stops[0][1] + ".index")
    assert json.load(open(workdir / "preempted.json"))["where"].startswith(f"attention step {step}")


def test_evaluate_and_predict_stop_on_a_signal_with_their_crf_workers_alive(tiny_run, synth_records, tmp_path):
    """TERM to the whole process group (rank and CRF workers, as SLURM and terminals send it)
    while the CRF pool runs: the workers ignore it, the rank stops between images, nothing is
    written, the marker is left, exit 75; a relaunch redoes all of it."""
    import time
    workdir, _ = tiny_run
    for module, extra in (("dcsp_dist.evaluate", ["--split", "val"]), ("dcsp_dist.predict", ["--split", "val"])):
        out_dir, marker = tmp_path / module, tmp_path / f"{module}.preempted.json"
        cmd = [sys.executable, "-m", module, "--checkpoint", str(workdir), "--data", str(synth_records), *extra,
               "--out", str(out_dir), "--crf-workers", "1"]
        env = dict(_env(), DCSP_PREEMPT_MARKER=str(marker))
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        deadline = time.time() + 300
        while not spawned_workers(proc.pid) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGSTOP)          # the rank holds still while the pool is up
        assert spawned_workers(proc.pid), "the CRF pool never started"
        os.killpg(proc.pid, signal.SIGTERM)        # rank and workers alike
        os.kill(proc.pid, signal.SIGCONT)
        out = proc.communicate(timeout=300)[0]
        assert proc.returncode == 75, out[-3000:]
        assert "BrokenProcessPool" not in out and "Traceback" not in out, out[-3000:]
        assert "nothing written; relaunch the same command to redo all of it" in out
        assert not out_dir.exists() and json.load(open(marker))["signal"] == "SIGTERM"
        again = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
        assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
        assert (out_dir / ("results.json" if module.endswith("evaluate") else "predict.json")).exists()


def test_signals_during_a_resnet101_save_never_cut_it_short(synth_records, tmp_path):
    """Real ResNet-101 (voc_paper, random init, 97-pixel crops): TERM at a step, then two more
    TERMs 50 ms apart while rank 0 writes its 180 MB checkpoint (its files appear about 0.4 s
    before the write ends here). A signal's Python handler cannot run while TensorFlow's C++
    writes, and when it runs the job is inside its critical write or past it: the
    checkpoint is complete, the marker is there, exit 75, and the relaunch resumes from
    exactly it. (That a hard stop waits for a critical write: tests/test_preemption_signals.py.)"""
    import threading
    import time
    workdir = tmp_path / "run"
    flags = ["-m", "dcsp_dist.train", "--stage", "attention", "--config", "voc_paper", "--data", str(synth_records),
             "--workdir", str(workdir), "--set", "init_weights=none", "--set", "crop_size=97", "--set",
             "global_batch=1", "--set", "attention_steps=30", "--set", "checkpoint_every=1000", "--set", "log_every=1",
             "--set", "image_summary_every=1000", "--set", "require_gpu=false"]
    proc = subprocess.Popen([sys.executable, *flags], cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    ckpt_dir, sent = workdir / "attention" / "ckpt", []

    def during_the_save():
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if ckpt_dir.is_dir() and any("_temp" in p.name for p in ckpt_dir.iterdir()):
                for _ in range(2):         # the write's visible part lasts about 0.4 s on this CPU
                    os.kill(proc.pid, signal.SIGTERM)
                    sent.append(time.time())
                    time.sleep(0.05)
                return
            time.sleep(0.005)
    watcher = threading.Thread(target=during_the_save, daemon=True)
    out = _watch(proc, 2, lambda step: (os.kill(proc.pid, signal.SIGTERM), watcher.start()))
    watcher.join(timeout=60)
    assert len(sent) == 2, out[-3000:]
    assert proc.returncode == 75, out[-3000:]
    assert "signal SIGTERM again: already stopping at a safe point" in out
    step = int(re.search(r"\[attention\] preempted at step (\d+)/30", out).group(1))
    from dcsp_dist.rundir import checkpoints
    assert checkpoints.problem(str(ckpt_dir / f"ckpt-{step}")) is None                 # complete, reads back
    assert json.load(open(workdir / "preempted.json"))["where"].startswith(f"attention step {step}")
    resumed = subprocess.run([sys.executable, *flags], cwd=ROOT, env=_env(), capture_output=True, text=True,
                             timeout=900)
    assert resumed.returncode == 0 and f"resuming from {ckpt_dir}/ckpt-{step}" in resumed.stdout, resumed.stdout[-2000:]


def _rank_pids(workdir, rank):
    """This job's processes of ``rank`` under Horovod's Gloo (HOROVOD_RANK) or Open MPI."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = open(f"/proc/{pid}/cmdline", "rb").read()
            env = dict(e.split(b"=", 1) for e in open(f"/proc/{pid}/environ", "rb").read().split(b"\0") if b"=" in e)
        except OSError:
            continue
        mine = env.get(b"HOROVOD_RANK", env.get(b"OMPI_COMM_WORLD_RANK"))
        if b"dcsp_dist.train" in cmd and str(workdir).encode() in cmd and mine == str(rank).encode():
            pids.append(int(pid))
    return pids


def test_a_job_preempted_under_horovodrun_with_mpi_ends_75_with_one_line(synth_records, tmp_path):
    """launch/local.sh --mpi (horovodrun replaces itself with mpirun): after the ranks
    checkpoint and exit 75, the launcher ends 75 too, with one line: no traceback, no Open
    MPI report of a non-zero exit. (Gloo: the first test of this file.)"""
    workdir = tmp_path / "run"
    cmd = [os.path.join(ROOT, "launch", "local.sh"), "-n", "2", "--mpi", "--stage", "attention", "--config",
           "tiny_test", "--data", str(synth_records), "--workdir", str(workdir), "--", *FLAGS[6:]]
    env = dict(_env(), PYTHON=sys.executable)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    out = _watch(proc, 10, lambda step: [os.kill(pid, signal.SIGUSR1) for pid in _rank_pids(workdir, 1)])
    assert proc.returncode == 75, out[-3000:]
    assert "Traceback" not in out and "mpirun detected" not in out, out[-3000:]
    assert out.strip().splitlines()[-1].startswith("horovodrun: the job stopped resumably"), out[-3000:]
    assert re.search(r"preempted at step \d+/40", out) and (workdir / "preempted.json").exists()


def test_a_failed_rank_under_the_horovodrun_launcher_ends_with_its_own_line(synth_records, tmp_path):
    cmd = [os.path.join(ROOT, "launch", "local.sh"), "-n", "2", "--stage", "attention", "--config", "tiny_test",
           "--data", str(tmp_path / "no-records"), "--workdir", str(tmp_path / "run")]
    proc = subprocess.run(cmd, cwd=ROOT, env=dict(_env(), PYTHON=sys.executable), capture_output=True, text=True,
                          timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "Traceback" not in out, out[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("horovodrun: rank ") and "exited with status 1: error: " in last and "no-records" in last, \
        out[-3000:]
