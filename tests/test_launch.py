"""Every launcher: --help, a dry-run that prints the exact command, safe quoting, clear errors."""
import shlex
import subprocess

import pytest

from tests.support.hvd import ROOT

JOB = ["--stage", "all", "--config", "voc_paper", "--data", "/data/my records", "--workdir", "/runs/voc"]


def launch(script, *args, check=True):
    proc = subprocess.run(["bash", f"launch/{script}", *args], cwd=ROOT, capture_output=True, text=True)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def command_line(stdout):
    """The printed command (last non-comment line), split back into words by a shell."""
    lines = [l for l in stdout.splitlines() if l and not l.startswith("#")]
    return shlex.split(lines[-1])


@pytest.mark.parametrize("script", ["local.sh", "multinode.sh", "mpirun.sh", "slurm.sbatch", "k8s.sh",
                                    "tensorboard.sh", "elastic.sh"])
def test_help(script):
    out = launch(script, "--help").stdout
    assert out.startswith("Usage:")


def test_local_dry_run_quotes_arguments():
    out = launch("local.sh", "-n", "8", *JOB, "--dry-run", "--", "--set", "name=a b;rm -rf /").stdout
    words = command_line(out)
    assert words[1].endswith("launch/horovodrun.py") and words[2:7] == ["--gloo", "-np", "8", "-H", "localhost:8"]
    i = words.index("-m")
    assert words[i:] == ["-m", "dcsp_dist.train", "--stage", "all", "--config", "voc_paper", "--data",
                         "/data/my records", "--workdir", "/runs/voc", "--set", "name=a b;rm -rf /"]


def test_multinode_options():
    words = command_line(launch("multinode.sh", "-H", "n1:8,n2:8", "--network-interface", "ib0",
                                "--ssh-port", "2222", *JOB, "--dry-run").stdout)
    assert words[1].endswith("launch/horovodrun.py") and words[2:5] == ["--gloo", "-np", "16"]
    assert ["-H", "n1:8,n2:8"] == words[5:7]
    assert "--network-interface" in words and "ib0" in words and "2222" in words


def test_mpirun_recommended_flags():
    words = command_line(launch("mpirun.sh", "-n", "16", "-H", "n1:8,n2:8", "--evaluate", "--data", "/d",
                                "--workdir", "/w", "--dry-run").stdout)
    assert words[0].endswith("launch/signal_relay.sh") and words[1:4] == ["mpirun", "-np", "16"]   # TERM -> USR1
    for flag in (["-bind-to", "none"], ["-map-by", "slot"], ["-x", "LD_LIBRARY_PATH"], ["-x", "PATH"]):
        assert any(words[i:i + 2] == flag for i in range(len(words))), flag
    assert words[words.index("-m") + 1] == "dcsp_dist.evaluate"


def test_slurm_prints_sbatch_and_srun():
    out = launch("slurm.sbatch", "--dry-run", "--nodes", "4", "--gpus-per-node", "8", *JOB).stdout
    assert "sbatch --nodes=4 --gpus-per-node=8 --ntasks-per-node=8" in out
    words = command_line(out)
    assert words[0] == "srun" and "--ntasks-per-node=8" in words and "--mpi=pmix" in words
    assert "/data/my records" in words


def test_k8s_manifest_is_an_mpijob_with_launcher_and_workers():
    out = launch("k8s.sh", "--image", "registry/dcsp:1", "--workers", "3", "--gpus-per-worker", "4", *JOB,
                 "--dry-run").stdout
    assert "kind: MPIJob" in out and "Launcher:" in out and "Worker:" in out
    assert "replicas: 3" in out and "nvidia.com/gpu: 4" in out and '"-np", "12"' in out
    assert out.count("terminationGracePeriodSeconds: 300") == 2      # launcher and workers: time to checkpoint
    assert 'command: ["launch/signal_relay.sh", "mpirun"]' in out    # mpirun gets TERM as USR1 for the ranks
    assert 'command: ["launch/signal_relay.sh", "--worker", "/usr/sbin/sshd", "-De"]' in out
    assert "DCSP_RELAY_GRACE, value: \"280\"" in out
    manifest = out.split("---")[0]
    assert "\"/data/my records\"" in manifest and "@" not in manifest.split("kind: MPIJob")[1]


def test_tensorboard_binds_localhost_by_default(tmp_path):
    words = command_line(launch("tensorboard.sh", str(tmp_path), "--dry-run").stdout)
    assert words[words.index("--host") + 1] == "127.0.0.1" and words[words.index("--logdir") + 1] == str(tmp_path)


@pytest.mark.parametrize("script,args,needle", [
    ("local.sh", ["--config", "c", "--data", "d", "--workdir", "w"], "--stage is required"),
    ("local.sh", ["--stage", "everything", "--config", "c", "--data", "d", "--workdir", "w"], "not one of"),
    ("multinode.sh", JOB, "give -H"),
    ("mpirun.sh", JOB, "-n N is required"),
    ("k8s.sh", JOB, "--image is required"),
    ("local.sh", ["--bogus"], "unknown option --bogus"),
    ("local.sh", ["-n", "0", *JOB], "-n 0: expected a positive integer"),
    ("multinode.sh", ["-H", "a:,b:1", *JOB], "'a:' is not host:slots"),
    ("multinode.sh", ["-H", "a:x", *JOB], "'a:x' is not host:slots"),
    ("multinode.sh", ["-H", "a:0", *JOB], "'a:0' has no slots"),
    ("multinode.sh", ["-H", "a:1,,b:1", *JOB], "'' is not host:slots"),
    ("multinode.sh", ["-H", "a:1,b:1", "-n", "0", *JOB], "-n 0: expected a positive integer"),
    ("multinode.sh", ["-H", "a:1,b:1", "-n", "3", *JOB], "more processes than the 2 slots"),
    ("mpirun.sh", ["-n", "0", *JOB], "-n 0: expected a positive integer"),
    ("mpirun.sh", ["-n", "2", "-H", "a:x", *JOB], "'a:x' is not host:slots"),
    ("elastic.sh", ["--min-np", "2", "--max-np", "1", "-H", "a:1", *JOB], "--min-np 2 is more than --max-np 1"),
    ("elastic.sh", ["--min-np", "1", "--max-np", "2", *JOB], "give --host-discovery-script FILE or -H"),
    ("elastic.sh", ["--min-np", "1", "--max-np", "2", "--host-discovery-script", "/nonexistent", *JOB],
     "/nonexistent: no such file"),
    ("slurm.sbatch", ["--nodes", "0", *JOB], "--nodes (SLURM_JOB_NUM_NODES) 0: expected a positive integer"),
    ("slurm.sbatch", ["--gpus-per-node", "8(x2)", *JOB], "expected a positive integer"),
])
def test_bad_arguments_are_one_clear_error(script, args, needle):
    proc = launch(script, *args, "--dry-run", check=False)
    assert proc.returncode == 2 and needle in proc.stderr


@pytest.mark.parametrize("script", ["local.sh", "multinode.sh", "mpirun.sh"])
def test_relative_paths_resolve_where_the_user_stands(script, tmp_path):
    """The launchers run the job from the checkout; a relative --data/--workdir must still
    mean the caller's directory, and the printed command shows the resolved paths."""
    extra = {"local.sh": [], "multinode.sh": ["-H", "a:1,b:1"], "mpirun.sh": ["-n", "2", "-H", "a:1,b:1"]}[script]
    proc = subprocess.run(["bash", f"{ROOT}/launch/{script}", *extra, "--stage", "all", "--config", "voc_paper",
                           "--data", "records/mine", "--workdir", "runs/mine", "--dry-run"],
                          cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    words = command_line(proc.stdout)
    assert words[words.index("--data") + 1] == f"{tmp_path}/records/mine"
    assert words[words.index("--workdir") + 1] == f"{tmp_path}/runs/mine"


def test_multinode_hostfile_needs_slots_on_every_line(tmp_path):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("# the cluster\nnode1 slots=8\n\nnode2\n")
    proc = launch("multinode.sh", "--hostfile", str(hostfile), *JOB, "--dry-run", check=False)
    assert proc.returncode == 2 and f"--hostfile {hostfile}, line 4: 'node2' has no slots=N" in proc.stderr
    assert proc.stdout == ""
    hostfile.write_text("# the cluster\nnode1 slots=8\n\nnode2 slots=4  # smaller\n")
    words = command_line(launch("multinode.sh", "--hostfile", str(hostfile), *JOB, "--dry-run").stdout)
    assert words[2:5] == ["--gloo", "-np", "12"]


def test_slurm_counts_from_the_environment_are_checked():
    proc = subprocess.run(["bash", "launch/slurm.sbatch", "--dry-run", *JOB], cwd=ROOT, capture_output=True,
                          text=True, env={"PATH": "/usr/bin:/bin", "SLURM_NTASKS_PER_NODE": "x"})
    assert proc.returncode == 2 and "SLURM_NTASKS_PER_NODE) x: expected a positive integer" in proc.stderr


def test_slurm_script_finds_its_helpers_from_the_spool_copy(tmp_path):
    """sbatch runs a copy of the script from its spool directory: the helpers are found from
    the submit directory or DCSP_HOME, and without either the error says what to do."""
    spool = tmp_path / "spool" / "job42"
    spool.mkdir(parents=True)
    (spool / "slurm_script").write_text(open(f"{ROOT}/launch/slurm.sbatch").read())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    def run(**env):
        return subprocess.run(["bash", str(spool / "slurm_script"), "--dry-run", *JOB], cwd=elsewhere,
                              capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", **env})
    for env in ({"SLURM_SUBMIT_DIR": ROOT}, {"SLURM_SUBMIT_DIR": str(elsewhere), "DCSP_HOME": ROOT}):
        proc = run(**env)
        assert proc.returncode == 0, proc.stderr
        assert command_line(proc.stdout)[0] == "srun"
    proc = run(SLURM_SUBMIT_DIR=str(elsewhere))
    assert proc.returncode == 2 and "cannot find launch/common.sh" in proc.stderr and "DCSP_HOME" in proc.stderr


def test_elastic_dry_run(tmp_path):
    words = command_line(launch("elastic.sh", "--min-np", "2", "--max-np", "4", "-H", "n1:2,n2:2",
                                "--blacklist-cooldown-range", "10", "20", "--network-interface", "ib0",
                                "--stage", "segmentation", "--config", "voc_paper", "--data", "/d",
                                "--workdir", str(tmp_path), "--dry-run").stdout)
    assert words[2:10] == ["--gloo", "-np", "4", "--min-np", "2", "--max-np", "4", "--host-discovery-script"]
    assert words[10] == f"{tmp_path}/discover_hosts.sh"
    assert ["--blacklist-cooldown-range", "10", "20"] == words[11:14]
    assert words[words.index("-m") + 1] == "dcsp_dist.train"


def test_slurm_batch_script_asks_for_a_warning_signal_and_requeues_on_exit_75():
    text = open(f"{ROOT}/launch/slurm.sbatch").read()
    assert "#SBATCH --signal=B:USR1@" in text and "#SBATCH --requeue" in text
    assert "trap 'forward USR1' USR1" in text and 'scontrol requeue "$SLURM_JOB_ID"' in text
    proc = subprocess.run(["bash", "launch/slurm.sbatch", "--dry-run", "--max-requeues", "x", *JOB], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "--max-requeues x" in proc.stderr
