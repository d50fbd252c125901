"""A real SLURM cluster on this machine: munge, slurmctld and one slurmd with six stand-in
GPUs (character devices) and two partitions, started by the fixture. Through the real `sbatch
launch/slurm.sbatch`, three jobs preempted side by side, each its own way (partition
preemption, TERM to the batch shell, TERM to a ResNet-101 job's tasks), each requeued and
resumed from the checkpoint at its signal's step, the tiny ones with the weights of an
uninterrupted run; `--evaluate` gives the confusion matrix of a local 1-rank evaluation; a
training job whose srun exits 0 without training ends FAILED.

Needs root and Debian's slurm-wlm + munge (installed here when missing; `make setup`
installs neither); skipped with the reason otherwise.
"""
import concurrent.futures
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time

import pytest

from tests.support.hvd import ROOT, run_ranks

STEPS = 200          # the tiny jobs: signalled after their step 10, they stopped at steps 13-41 (once 102)
RESNET_STEPS = 75    # still training when B has been preempted (it was at step 37-55 then; 97-pixel crops are fast)
GPUS = 8            # stand-in GPUs (and CPUs, config_overrides): the three 2-task jobs and, after their
                    # requeue, the 2-task job that never trains fit at once: nothing preempts B's second run
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
    for i in range(GPUS):
        dev = base / f"fakegpu{i}"
        subprocess.run(["mknod", str(dev), "c", "1", "3"], check=True)
        gres.append(f"Name=gpu File={dev}")
    (base / "gres.conf").write_text("\n".join(gres) + "\n")
    conf = base / "slurm.conf"
    conf.write_text(f"""ClusterName=dcsptest
SlurmctldHost={host}
AuthType=auth/munge
AuthInfo=cred_expire=30
MessageTimeout=60
# a finished job stays visible to scontrol for the test's later waits (300 s by default: a job that
# ended early was purged before the test looked, and the wait ran out)
MinJobAge=3600
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
SchedulerParameters=sched_interval=3,bf_interval=3
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
SlurmUser=root
GresTypes=gpu
SlurmdParameters=config_overrides
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
NodeName={host} CPUs={GPUS} Gres=gpu:{GPUS} State=UNKNOWN
PartitionName=main Nodes={host} Default=YES MaxTime=INFINITE State=UP PriorityTier=2
PartitionName=low Nodes={host} MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=REQUEUE GraceTime=60
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


def _sbatch(env, out_file, *args, partition="main"):
    proc = _run(["sbatch", "--parsable", f"--partition={partition}", "--nodes=1", "--gpus-per-node=2",
                 "--ntasks-per-node=2", "--cpus-per-task=1", "--open-mode=append", f"--output={out_file}",
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


def _ended(state, restarts):
    return state in ("COMPLETED", "FAILED", "CANCELLED")


def _slurmd_log(env) -> str:
    """The end of slurmd's log, and slurmctld's lines on requeues, starts and retried RPCs."""
    logs = os.path.join(os.path.dirname(env["SLURM_CONF"]), "log")
    text = ["\n--- slurmd log ---\n", open(f"{logs}/d.log").read()[-3000:] if os.path.exists(f"{logs}/d.log") else "(none)"]
    if os.path.exists(f"{logs}/ctld.log"):
        text += ["\n--- slurmctld log (requeues, starts, retries) ---\n"] + [
            line for line in open(f"{logs}/ctld.log")
            if re.search(r"Requeuing|Allocate|_start_job|retry|timed out|not responding|kill_job", line)][-40:]
    return "".join(text)


def _steps(path):
    text = path.read_text() if path.exists() else ""
    return [int(s) for s in re.findall(r"\[attention\] step (\d+)/", text)], text


def _wait_for_step(env, jobs, step, timeout=600):
    """Until every job's log shows an attention step >= ``step``."""
    deadline, text = time.time() + timeout, ""
    while time.time() < deadline:
        behind = []
        for job, out in jobs:
            steps, text = _steps(out)
            assert _job_state(env, job)[0] in ("PENDING", "RUNNING", "CONFIGURING"), text[-3000:] + _slurmd_log(env)
            if not steps or max(steps) < step:
                behind.append(job)
        if not behind:
            return
        time.sleep(0.2)
    raise AssertionError(f"jobs {behind} never reached step {step}: {text[-3000:]}")


def _exit_seconds(env, signalled, on_left=None, timeout=300):
    """Seconds from each job's signal until its tasks have exited ("exited with exit code"
    in its log) and until it left RUNNING (requeued, or ended): {name: (exit, left)}.
    ``on_left`` ({name: callable}) runs the moment that job is seen to have left RUNNING,
    while SLURM still holds it (requeued jobs are held at least cred_expire, 30 s)."""
    on_left, deadline, found = on_left or {}, time.time() + timeout, {}
    while len(found) < 2 * len(signalled) and time.time() < deadline:
        for name, (job, out, t0) in signalled.items():
            if (name, "exit") not in found and re.search(r"srun: error: \S+: tasks? [\d-]+: (Exited|Terminated|Killed)",
                                                        out.read_text() if out.exists() else ""):
                found[name, "exit"] = time.time() - t0
            state, restarts, _ = _job_state(env, job)
            if (name, "left") not in found and (restarts >= 1 or state not in ("RUNNING", "CONFIGURING")):
                found[name, "left"] = time.time() - t0
                if name in on_left:
                    on_left[name]()
        time.sleep(0.2)
    return {name: (found.get((name, "exit"), float("nan")), found.get((name, "left"), float("nan")))
            for name in signalled}


def _stops_and_resumes(text, workdir):
    """Every preemption checkpoints at its step and the next run resumes from exactly it."""
    stops = re.findall(r"\[(\w+)\] preempted at step (\d+)/\d+ \(([^)]*)\); checkpoint (\S+);", text)
    assert stops and stops[0][0] == "attention", text[-4000:]
    for stage, step, _, checkpoint in stops:
        assert checkpoint == f"{workdir}/{stage}/ckpt/ckpt-{step}"
        assert f"[{stage}] resuming from {checkpoint}" in text, text[-4000:]
    return stops


def test_preempted_jobs_requeue_and_resume_on_every_path(slurm, synth_records, tmp_path):
    """Three jobs at once on the one node, each preempted its own way:

    - A (tiny, --stage all): TERM to the batch shell alone (#SBATCH --signal=B:TERM), which the
      script passes on as USR1; a lock left "on another node" by the same job is taken over;
    - B (tiny, attention, partition "low"): partition preemption (PreemptMode=REQUEUE,
      GraceTime=60) by a job in the higher partition that needs its GPUs;
    - R (real ResNet-101, voc_paper with init_weights=none, 97-pixel crops, one image per rank;
      a 180 MB checkpoint): `scancel --signal=TERM`, TERM to every task of the job.
    Each checkpoints at its step, exits 75, is requeued and resumes from exactly that
    checkpoint; the tiny ones end with the weights of an uninterrupted run."""
    env = slurm
    start = time.time()
    resnet_dir, resnet_out = tmp_path / "resnet", tmp_path / "resnet.out"
    resnet = _sbatch(env, resnet_out, "--stage", "attention", "--config", "voc_paper", "--data", str(synth_records),
                     "--workdir", str(resnet_dir), "--", "--set", "init_weights=none", "--set", "crop_size=97",
                     "--set", "global_batch=2", "--set", f"attention_steps={RESNET_STEPS}", *FLAGS[2:])
    _wait_for_step(env, [(resnet, resnet_out)], 1)       # its start-up is the longest: the others start after it
    workdir, out = tmp_path / "slurm_run", tmp_path / "job.out"
    job = _sbatch(env, out, "--stage", "all", "--config", "tiny_test", "--data", str(synth_records),
                  "--workdir", str(workdir), "--", *FLAGS)
    low_dir, low_out = tmp_path / "low", tmp_path / "low.out"
    low = _sbatch(env, low_out, "--stage", "attention", "--config", "tiny_test", "--data", str(synth_records),
                  "--workdir", str(low_dir), "--", *FLAGS, partition="low")
    # B first, at its step 10, while six of the eight GPUs are held (A's and R's jobs hold theirs from their start):
    # the higher partition's job asks for four, so it can only start with B's. R right after, then A at its own
    # step 10: each still training when signalled.
    _wait_for_step(env, [(low, low_out)], 10)
    low_start = time.time()
    _run(["sbatch", "--parsable", "--partition=main", "--nodes=1", "--gpus-per-node=4", "--ntasks=1",
          f"--output={tmp_path / 'preemptor.out'}", "--wrap", "sleep 2"], env=env)
    deadline = time.time() + 60
    while "CANCELLED AT" not in low_out.read_text() and time.time() < deadline:
        time.sleep(0.2)
    resnet_steps, _ = _steps(resnet_out)
    assert max(resnet_steps) < RESNET_STEPS - 5, f"the ResNet-101 job got too far before its signal: {resnet_steps[-1:]}"
    resnet_start = time.time()
    _run(["scancel", "--signal=TERM", resnet], env=env)           # TERM to every task of the job
    # TERM to the batch shell alone, as #SBATCH --signal=B:TERM@N delivers it: the script must pass it on as USR1
    # (srun answers TERM by killing the tasks). USR1 from --signal=B:USR1 takes the same path.
    _wait_for_step(env, [(job, out)], 10)
    job_start = time.time()
    _run(["scancel", "--batch", "--signal=TERM", job], env=env)

    def leave_a_stale_lock():
        """As if rank 0 had been killed on another node and left its lock: the requeued run of the same job
        takes it over. Written the moment A is requeued, while SLURM holds it (R may take a minute more to
        save, and A would have restarted by then)."""
        (workdir / ".lock").write_text(json.dumps({"host": "node-elsewhere", "pid": 1, "started": "earlier",
                                                   "token": "from-before-the-requeue", "slurm_job_id": job,
                                                   "slurm_restart": 0, "beat": 5}))   # watched 2 x 5 s
        state, _, info = _job_state(env, job)
        restarted = state in ("RUNNING", "CONFIGURING") or out.read_text().count("srun --mpi") > 1
        assert not restarted, "A restarted before its lock was written: " + info

    seconds = _exit_seconds(env, {"partition preemption (tiny)": (low, low_out, low_start),
                                  "TERM to the batch shell (tiny)": (job, out, job_start),
                                  "TERM to the job's tasks (ResNet-101)": (resnet, resnet_out, resnet_start)},
                            on_left={"TERM to the batch shell (tiny)": leave_a_stale_lock})
    # While SLURM holds the requeued jobs: the uninterrupted reference run, and a job whose srun exits 0 without
    # training (an interpreter that does nothing), which must not end COMPLETED.
    pool = concurrent.futures.ThreadPoolExecutor(2)
    reference = tmp_path / "reference"
    reference_run = pool.submit(run_ranks, 2, "-m", "dcsp_dist.train", "--stage", "all", "--config", "tiny_test",
                                "--data", str(synth_records), "--workdir", str(reference), *FLAGS)
    none_out = tmp_path / "none.out"
    none_job = _sbatch(env, none_out, "--python", "/bin/true", "--stage", "attention", "--config", "tiny_test",
                       "--data", str(synth_records), "--workdir", str(tmp_path / "never_trained"))

    # SLURM holds a requeued job (Reason=BeginTime) until the old run's step credentials have expired
    # (AuthInfo=cred_expire, 120 s by default, 30 s here); then it starts at the scheduler's next pass
    # (sched_interval, 60 s by default, 3 s here: nothing else wakes it). The test keeps the hold:
    # the requeued job's step has the old step's name (job 1, step 0), and SLURM's clean-up of the old
    # one can land on it. srun's own end of the old step (--kill-on-bad-exit) is a signal RPC that
    # slurmctld retries 60 s after it timed out (MessageTimeout): with ranks that lingered to KillWait
    # (30 s) it timed out, and the retry killed the requeued job 10 s into its start. The ranks now leave
    # together; MessageTimeout=60 (10 by default) keeps a slow slurmd on this loaded machine from
    # starting a retry that the shortened hold would not cover. The three jobs wait out their holds side
    # by side.
    finals = {name: _wait(env, j, lambda state, restarts: _ended(state, restarts) and restarts >= 1)
              for name, j in (("A", job), ("B", low), ("R", resnet))}
    logs = {"A": out.read_text(), "B": low_out.read_text(), "R": resnet_out.read_text()}
    reference_run.result()
    for name, (state, restarts, info) in finals.items():
        assert state == "COMPLETED" and restarts >= 1, name + info + logs[name][-4000:] + _slurmd_log(env)
        assert "requeueing job" in logs[name], name + logs[name][-4000:]
        # every rank of the stopped run left with 75 by itself: none was still tearing down when srun ended them
        assert not re.search(r"srun: error: \S+: tasks? [\d-]+: (Killed|Terminated)", logs[name]), logs[name][-4000:]

    text = logs["A"]
    assert "got SIGTERM; passing it to the tasks as USR1" in text
    assert f"took over the stale lock of host node-elsewhere pid 1 (left by SLURM job {job} before its requeue" in text
    stops = _stops_and_resumes(text, workdir)
    assert stops[0][2] == "SIGUSR1" and len(stops) <= finals["A"][1], text[-4000:]  # a cue stage stops without one
    step = int(stops[0][1])
    assert f"[attention] step {step + 1}/{STEPS}" in text
    for stage in ("attention", "segmentation", "segmentation_adapted"):
        done = json.load(open(workdir / stage / "done.json"))
        assert done["weights_sha256"] == json.load(open(reference / stage / "done.json"))["weights_sha256"], stage

    low_stops = _stops_and_resumes(logs["B"], low_dir)
    assert low_stops[0][2] == "SIGTERM" and "got SIGTERM" not in logs["B"]     # the tasks got it, not the script
    assert (json.load(open(low_dir / "attention" / "done.json"))["weights_sha256"]
            == json.load(open(reference / "attention" / "done.json"))["weights_sha256"])

    resnet_stops = _stops_and_resumes(logs["R"], resnet_dir)
    resnet_step = int(resnet_stops[0][1])
    assert resnet_stops[0][2] == "SIGTERM" and resnet_step < RESNET_STEPS
    assert f"[attention] step {resnet_step + 1}/{RESNET_STEPS}" in logs["R"]     # the count goes on from it
    assert json.load(open(resnet_dir / "attention" / "done.json"))["checkpoint"] == f"ckpt/ckpt-{RESNET_STEPS}"
    print(f"SLURM: three jobs from sbatch to COMPLETED {time.time() - start:.0f} s (with SLURM's requeue hold); "
          + "; ".join(f"{path}: signal to exit {e:.1f} s, to requeue {q:.1f} s" for path, (e, q) in seconds.items())
          + f"; steps at the signal: A {step}, B {low_stops[0][1]}, ResNet-101 {resnet_step}")

    # --evaluate through sbatch: the confusion matrix of a local 1-rank evaluation
    eval_out = tmp_path / "eval.out"
    job = _sbatch(env, eval_out, "--evaluate", "--data", str(synth_records), "--workdir", str(workdir), "--",
                  "--split", "val", "--no-crf", "--out", str(tmp_path / "eval_slurm"))
    local = pool.submit(run_ranks, 1, "-m", "dcsp_dist.evaluate", "--checkpoint", str(workdir), "--data",
                        str(synth_records), "--split", "val", "--no-crf", "--out", str(tmp_path / "eval_local"))
    state, _, info = _wait(env, job, _ended)
    assert state == "COMPLETED", info + eval_out.read_text()[-3000:]
    local.result()
    slurm_matrix = json.load(open(tmp_path / "eval_slurm" / "results.json"))["confusion_matrix"]
    assert slurm_matrix == json.load(open(tmp_path / "eval_local" / "results.json"))["confusion_matrix"]

    # srun exited 0 when its tasks never trained: not COMPLETED
    state, _, info = _wait(env, none_job, _ended)
    assert state == "FAILED", info + none_out.read_text()[-3000:]
    assert "srun exited 0 but " in none_out.read_text() and "attention/done.json is missing" in none_out.read_text()


def test_a_batch_script_of_two_tasks_without_srun_does_every_image(slurm, tmp_path):
    """#SBATCH -n 2 and data_tools.saliency run by the batch shell itself (no srun): one
    process, so it does all the images (it did half: the job's SLURM_NTASKS=2 was read as
    its own world); beside it, the same under srun: two ranks, half each, every image once."""
    from PIL import Image
    env = slurm
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(4):
        Image.new("RGB", (40, 30), (60 * i, 90, 200 - 40 * i)).save(photos / f"p{i}.jpg")
    jobs = {}
    for how in ("shell", "srun"):
        run = f"{sys.executable} -m data_tools.saliency --images {photos} --out-dir {tmp_path / how} --workers 1"
        jobs[how] = _run(["sbatch", "--parsable", "--partition=main", "--nodes=1", "--ntasks=2", "--cpus-per-task=1",
                          f"--output={tmp_path / how}.out", f"--export=ALL,PYTHONPATH={ROOT}",
                          f"--wrap={'srun ' if how == 'srun' else ''}{run}"], env=env, cwd=ROOT).stdout.strip()
    for how, job in jobs.items():
        state, _, info = _wait(env, job, _ended, timeout=300)
        out = (tmp_path / f"{how}.out").read_text()
        assert state == "COMPLETED", info + out
        assert sorted(p.name for p in (tmp_path / how).glob("*.png")) == [f"p{i}.png" for i in range(4)], out
        summaries = re.findall(r"\[saliency\] (?:rank (\d) of (\d) on \S+: )?wrote (\d)", out)
        if how == "shell":
            assert summaries == [("", "", "4")], out
        else:
            assert sorted(summaries) == [("0", "2", "2"), ("1", "2", "2")], out
