"""A real SLURM cluster on this machine: munge, slurmctld and one slurmd with two stand-in
GPUs (character devices), started by the fixture. Through the real `sbatch
launch/slurm.sbatch`: `--stage all` reaches done.json after a preemption in the middle of
the attention stage (USR1 to the batch script, forwarded to the tasks, exit 75, requeue,
resume from the checkpoint at the signal's step), with the weights of every stage identical
to an uninterrupted local run; `--evaluate` gives the confusion matrix of a local 1-rank
evaluation.

Needs root and Debian's slurm-wlm + munge (installed here when missing; `make setup`
installs neither); skipped with the reason otherwise.
"""
import json
import os
import re
import shutil
import socket
import subprocess
import time

import pytest

from tests.hvd import ROOT, run_ranks

STEPS = 60
FLAGS = ["--set", f"attention_steps={STEPS}", "--set", "checkpoint_every=1000", "--set", "log_every=1",
         "--set", "image_summary_every=1000", "--set", "require_gpu=false"]


def _run(cmd, env=None, check=True, timeout=120, cwd=None):
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=cwd)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)}: exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return proc


def _install_or_skip():
    if os.geteuid() != 0:
        pytest.skip("a real SLURM needs root (munge, slurmd)")
    if all(shutil.which(b) for b in ("slurmctld", "slurmd", "munged", "sbatch")):
        return
    proc = subprocess.run(["apt-get", "install", "-y", "-qq", "slurm-wlm", "munge"], capture_output=True, text=True,
                          timeout=900, env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
    if proc.returncode != 0:
        pytest.skip(f"could not install slurm-wlm and munge: {proc.stderr.strip().splitlines()[-1:]}")


def _munge_works() -> bool:
    return subprocess.run("munge -n | unmunge", shell=True, capture_output=True).returncode == 0


def _start_munge():
    key = "/etc/munge/munge.key"
    for d in ("/etc/munge", "/var/log/munge", "/run/munge", "/var/lib/munge"):
        os.makedirs(d, exist_ok=True)
        shutil.chown(d, "munge", "munge")
    if not os.path.exists(key):
        with open(key, "wb") as fh:
            fh.write(os.urandom(1024))
    shutil.chown(key, "munge", "munge")
    os.chmod(key, 0o400)
    if not _munge_works():
        subprocess.run(["runuser", "-u", "munge", "--", "munged", "--force"], capture_output=True)
    if not _munge_works():
        subprocess.run(["munged", "--force"], capture_output=True)
    if not _munge_works():
        pytest.skip("munged did not start")


def _write_conf(base, host: str):
    for d in ("spool", "state", "log"):
        (base / d).mkdir()
    gres = []
    for i in range(2):
        dev = base / f"fakegpu{i}"
        subprocess.run(["mknod", str(dev), "c", "1", "3"], check=True)
        gres.append(f"Name=gpu File={dev}")
    (base / "gres.conf").write_text("\n".join(gres) + "\n")
    conf = base / "slurm.conf"
    conf.write_text(f"""ClusterName=dcsptest
SlurmctldHost={host}
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SlurmctldPort=6817
SlurmdPort=6818
SlurmdSpoolDir={base}/spool
StateSaveLocation={base}/state
SlurmctldLogFile={base}/log/ctld.log
SlurmdLogFile={base}/log/d.log
SlurmctldPidFile={base}/ctld.pid
SlurmdPidFile={base}/d.pid
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
SlurmUser=root
GresTypes=gpu
NodeName={host} CPUs=2 Gres=gpu:2 State=UNKNOWN
PartitionName=main Nodes={host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
""")
    return conf


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    _install_or_skip()
    _start_munge()
    base = tmp_path_factory.mktemp("slurm")
    conf = _write_conf(base, socket.gethostname().split(".")[0])
    env = dict(os.environ, SLURM_CONF=str(conf))
    _run(["slurmctld", "-f", str(conf)], env=env)
    _run(["slurmd", "-f", str(conf)], env=env)
    deadline, state = time.time() + 90, ""
    while time.time() < deadline:
        state = _run(["sinfo", "-h", "-o", "%t"], env=env, check=False).stdout.strip()
        if state in ("idle", "mix", "alloc"):
            break
        time.sleep(1)
    else:
        pytest.fail(f"slurmd never became idle ({state}): {(base / 'log' / 'd.log').read_text()[-2000:]}")
    yield env
    for pid_file in ("d.pid", "ctld.pid"):
        try:
            os.kill(int((base / pid_file).read_text()), 15)
        except (OSError, ValueError):
            pass


def _job_state(env, job):
    out = _run(["scontrol", "show", "job", "-o", job], env=env, check=False).stdout
    state, restarts = re.search(r"JobState=(\S+)", out), re.search(r"Restarts=(\d+)", out)
    return (state.group(1) if state else "GONE"), (int(restarts.group(1)) if restarts else 0), out


def _sbatch(env, out_file, *args):
    proc = _run(["sbatch", "--parsable", "--nodes=1", "--gpus-per-node=2", "--ntasks-per-node=2",
                 "--cpus-per-task=1", "--open-mode=append", f"--output={out_file}",
                 f"--export=ALL,DCSP_HOME={ROOT}", "launch/slurm.sbatch", *args], env=env, cwd=ROOT)
    return proc.stdout.strip().split(";")[0]


def _wait(env, job, until, timeout=900):
    deadline, text = time.time() + timeout, ""
    while time.time() < deadline:
        state, restarts, text = _job_state(env, job)
        if until(state, restarts):
            return state, restarts, text
        time.sleep(1)
    raise AssertionError(f"job {job} did not get there: {text}")


def _slurmd_log(env) -> str:
    log = os.path.join(os.path.dirname(env["SLURM_CONF"]), "log", "d.log")
    return "\n--- slurmd log ---\n" + (open(log).read()[-3000:] if os.path.exists(log) else "(none)")


def _steps(path):
    text = path.read_text() if path.exists() else ""
    return [int(s) for s in re.findall(r"\[attention\] step (\d+)/", text)], text


def test_preempted_job_requeues_and_resumes_to_the_same_weights(slurm, synth_records, tmp_path):
    env = slurm
    reference = tmp_path / "reference"
    run_ranks(2, "-m", "dcsp_dist.train", "--stage", "all", "--config", "tiny_test", "--data", str(synth_records),
              "--workdir", str(reference), *FLAGS)

    workdir, out = tmp_path / "slurm_run", tmp_path / "job.out"
    start = time.time()
    job = _sbatch(env, out, "--stage", "all", "--config", "tiny_test", "--data", str(synth_records),
                  "--workdir", str(workdir), "--", *FLAGS)
    deadline, text = time.time() + 600, ""
    while time.time() < deadline:
        steps, text = _steps(out)
        if steps and max(steps) >= 10:
            break
        assert _job_state(env, job)[0] in ("PENDING", "RUNNING", "CONFIGURING"), text[-3000:]
        time.sleep(0.2)
    signalled = time.time()
    # TERM to the batch shell alone, as #SBATCH --signal=B:TERM@N delivers it: the script must pass it on as USR1
    # (srun answers TERM by killing the tasks). USR1 from --signal=B:USR1 takes the same path.
    _run(["scancel", "--batch", "--signal=TERM", job], env=env)
    _wait(env, job, lambda state, restarts: restarts >= 1 or state in ("COMPLETED", "FAILED", "CANCELLED"))
    requeued = time.time()
    # As if rank 0 had been killed on another node and left its lock: the requeued run of the same job takes it over.
    (workdir / ".lock").write_text(json.dumps({"host": "node-elsewhere", "pid": 1, "started": "earlier",
                                               "token": "from-before-the-requeue", "slurm_job_id": job,
                                               "slurm_restart": 0}))

    # SLURM holds a requeued job for about two minutes (Reason=BeginTime) before it starts it again. The test
    # keeps the hold: releasing the job early raced SLURM's own clean-up of the old step, which has the same
    # name in the requeued job (its PMIx socket still bound; a late kill of "step 1.0" landing on the new one).
    state, restarts, info = _wait(env, job, lambda state, restarts: state in ("COMPLETED", "FAILED", "CANCELLED")
                                  and restarts >= 1)
    text = out.read_text()
    assert state == "COMPLETED" and restarts >= 1, info + text[-4000:] + _slurmd_log(env)
    assert "requeueing job" in text and "got SIGTERM; passing it to the tasks as USR1" in text
    assert f"took over the stale lock of host node-elsewhere pid 1 (left by SLURM job {job} before its requeue" in text
    # Every preemption (ours; and any SLURM adds, e.g. a node briefly unresponsive under load) checkpoints at its
    # step, requeues, and the next run resumes from exactly that checkpoint.
    stops = re.findall(r"\[(\w+)\] preempted at step (\d+)/\d+ \(([^)]*)\); checkpoint (\S+);", text)
    assert stops and stops[0][0] == "attention" and stops[0][2] == "SIGUSR1", text[-4000:]
    assert len(stops) <= restarts, (stops, restarts)     # a cue stage stops between images, without a step line
    for stage, step, _, checkpoint in stops:
        assert checkpoint == f"{workdir}/{stage}/ckpt/ckpt-{step}"
        assert f"[{stage}] resuming from {checkpoint}" in text, text[-4000:] + _slurmd_log(env)  # exactly that step
    step = int(stops[0][1])
    assert f"[attention] step {step + 1}/{STEPS}" in text
    for stage in ("attention", "segmentation", "segmentation_adapted"):
        done = json.load(open(workdir / stage / "done.json"))
        assert done["weights_sha256"] == json.load(open(reference / stage / "done.json"))["weights_sha256"], stage
    print(f"SLURM: sbatch to COMPLETED {time.time() - start:.0f} s (with SLURM's requeue hold); signal to requeue "
          f"{requeued - signalled:.1f} s; stopped at step {step}; {restarts} requeue(s)")

    # --evaluate through sbatch: the confusion matrix of a local 1-rank evaluation
    eval_out = tmp_path / "eval.out"
    job = _sbatch(env, eval_out, "--evaluate", "--data", str(synth_records), "--workdir", str(workdir), "--",
                  "--split", "val", "--no-crf", "--out", str(tmp_path / "eval_slurm"))
    state, _, info = _wait(env, job, lambda state, restarts: state in ("COMPLETED", "FAILED", "CANCELLED"))
    assert state == "COMPLETED", info + eval_out.read_text()[-3000:]
    run_ranks(1, "-m", "dcsp_dist.evaluate", "--checkpoint", str(workdir), "--data", str(synth_records),
              "--split", "val", "--no-crf", "--out", str(tmp_path / "eval_local"))
    slurm_matrix = json.load(open(tmp_path / "eval_slurm" / "results.json"))["confusion_matrix"]
    assert slurm_matrix == json.load(open(tmp_path / "eval_local" / "results.json"))["confusion_matrix"]

    # srun exits 0 when its tasks never trained (here: an interpreter that does nothing): not COMPLETED
    none_out = tmp_path / "none.out"
    job = _sbatch(env, none_out, "--python", "/bin/true", "--stage", "attention", "--config", "tiny_test",
                  "--data", str(synth_records), "--workdir", str(tmp_path / "never_trained"))
    state, _, info = _wait(env, job, lambda state, restarts: state in ("COMPLETED", "FAILED", "CANCELLED"))
    assert state == "FAILED", info + none_out.read_text()[-3000:]
    assert "srun exited 0 but " in none_out.read_text() and "attention/done.json is missing" in none_out.read_text()
