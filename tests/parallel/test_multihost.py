"""Two real hosts on one machine, through the real launchers.

Each "host" is a Linux network namespace with its own UTS namespace (so its own host name,
hostA / hostB), joined to the other by a veth pair named ``dcsp0`` on both sides, and runs a
real ``sshd`` (Debian's openssh-server) with a host key and a login key made for the test.
The filesystem is shared, as a cluster's NFS would be. The launchers run on hostA:

- ``launch/multinode.sh -H hostA:1,hostB:1 --network-interface dcsp0`` trains ``--stage all``
  with the tiny preset over Gloo, then evaluates with ``--evaluate``; every training stage
  must end with bit-identical weights on both hosts, and the evaluation's confusion matrix
  must equal a 1-rank evaluation's;
- ``launch/mpirun.sh -n 2 -H hostA:1,hostB:1`` runs a short training over Open MPI.

Needs root and ``ip netns``; otherwise the test is skipped and says why. Namespaces, sshd
processes and /etc/netns entries are removed when the test ends, also when it fails.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.support.hvd import ROOT, run_ranks

SSHD = "/usr/sbin/sshd"
PORT = 2222
NIC = "dcsp0"


def _run(*cmd, check=True, **kwargs):
    proc = subprocess.run(list(cmd), capture_output=True, text=True, **kwargs)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited with {proc.returncode}: {proc.stderr.strip()}")
    return proc


def _why_impossible() -> str | None:
    """None when two namespaced hosts with sshd can be made here, else the reason."""
    if os.geteuid() != 0:
        return "needs root (network namespaces and sshd)"
    if shutil.which("ip") is None or _run("ip", "netns", "list", check=False).returncode != 0:
        return "`ip netns` is not available (iproute2)"
    if shutil.which("unshare") is None:
        return "`unshare` (util-linux) is not available"
    if not os.path.exists(SSHD):
        # openssh-server is a test-only need (users' nodes bring their own sshd), so the test
        # installs it rather than `make setup`.
        if shutil.which("apt-get") is None:
            return f"{SSHD} is missing and there is no apt-get to install openssh-server"
        proc = _run("apt-get", "install", "-y", "-qq", "--no-install-recommends", "openssh-server", check=False,
                    env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
        if proc.returncode != 0:
            _run("apt-get", "update", "-qq", check=False)
            proc = _run("apt-get", "install", "-y", "-qq", "--no-install-recommends", "openssh-server",
                        check=False, env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
        if proc.returncode != 0 or not os.path.exists(SSHD):
            return f"could not install openssh-server: {proc.stderr.strip()[-300:]}"
    probe = f"dcspprobe{os.getpid()}"
    proc = _run("ip", "netns", "add", probe, check=False)
    _run("ip", "netns", "del", probe, check=False)
    if proc.returncode != 0:
        return f"cannot create a network namespace: {proc.stderr.strip()}"
    return None


class TwoHosts:
    """hostA and hostB: namespaces, veth, /etc/netns/<ns>/hosts, keys and one sshd each."""

    def __init__(self, tmp):
        tag = os.getpid() % 100000
        self.tmp = tmp
        self.ns = {"hostA": f"dcspA{tag}", "hostB": f"dcspB{tag}"}
        subnet = f"10.77.{tag % 250}"
        self.addr = {"hostA": f"{subnet}.1", "hostB": f"{subnet}.2"}
        self.sshd = []
        self.key = tmp / "id_ed25519"
        self.bin = tmp / "bin"

    def up(self):
        for ns in self.ns.values():
            _run("ip", "netns", "add", ns)
            _run("ip", "-n", ns, "link", "set", "lo", "up")
        a = self.ns["hostA"]
        _run("ip", "link", "add", f"va{a[5:]}", "type", "veth", "peer", "name", f"vb{a[5:]}")
        for host, end in (("hostA", f"va{a[5:]}"), ("hostB", f"vb{a[5:]}")):
            ns = self.ns[host]
            _run("ip", "link", "set", end, "netns", ns)
            _run("ip", "-n", ns, "link", "set", end, "name", NIC)
            _run("ip", "-n", ns, "addr", "add", f"{self.addr[host]}/24", "dev", NIC)
            _run("ip", "-n", ns, "link", "set", NIC, "up")
            # `ip netns exec` bind-mounts these over /etc/hosts: the names resolve on both hosts.
            os.makedirs(f"/etc/netns/{ns}", exist_ok=True)
            with open(f"/etc/netns/{ns}/hosts", "w") as fh:
                fh.write("127.0.0.1 localhost\n" + "".join(f"{ip} {h}\n" for h, ip in self.addr.items()))
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.key))
        shutil.copy(f"{self.key}.pub", self.tmp / "authorized_keys")
        # The client side: ssh reads its options from a config file, as from ~/.ssh/config,
        # so the test neither writes root's known_hosts nor needs the user's keys.
        ssh_config = self.tmp / "ssh_config"
        ssh_config.write_text(f"Host *\n  UserKnownHostsFile /dev/null\n  StrictHostKeyChecking no\n"
                              f"  LogLevel ERROR\n  BatchMode yes\n  Port {PORT}\n  IdentityFile {self.key}\n")
        self.bin.mkdir()
        wrapper = self.bin / "ssh"
        wrapper.write_text(f"#!/bin/sh\nexec /usr/bin/ssh -F {ssh_config} \"$@\"\n")
        wrapper.chmod(0o755)
        os.makedirs("/run/sshd", exist_ok=True)   # sshd's privilege separation directory
        for host in self.ns:
            self._start_sshd(host)
        for host in self.ns:
            self._wait_for_ssh(host)

    def _start_sshd(self, host):
        host_key = self.tmp / f"host_key_{host}"
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key))
        config = self.tmp / f"sshd_config_{host}"
        config.write_text(f"Port {PORT}\nListenAddress {self.addr[host]}\nHostKey {host_key}\n"
                          f"AuthorizedKeysFile {self.tmp}/authorized_keys\nPermitRootLogin yes\nStrictModes no\n"
                          f"PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
                          f"PidFile {self.tmp}/sshd_{host}.pid\nSubsystem sftp internal-sftp\n")
        log = open(self.tmp / f"sshd_{host}.log", "w")
        self.sshd.append(subprocess.Popen(
            self.on(host, SSHD, "-D", "-e", "-f", str(config)), stdout=log, stderr=subprocess.STDOUT))

    def on(self, host, *cmd):
        """The argv running ``cmd`` on ``host``: its network namespace and its own host name."""
        script = 'hostname "$0" && exec "$@"'
        return ["ip", "netns", "exec", self.ns[host], "unshare", "--uts", "sh", "-c", script, host, *cmd]

    def _wait_for_ssh(self, host, timeout=30):
        deadline = time.time() + timeout
        while True:
            proc = _run(*self.on("hostA", str(self.bin / "ssh"), host, "hostname"), check=False)
            if proc.returncode == 0 and proc.stdout.strip() == host:
                return
            if time.time() > deadline:
                log = (self.tmp / f"sshd_{host}.log").read_text()
                raise RuntimeError(f"ssh to {host} failed: {proc.stderr.strip()}\nsshd log:\n{log}")
            time.sleep(0.3)

    def down(self):
        for proc in self.sshd:
            proc.terminate()
        for ns in self.ns.values():
            pids = _run("ip", "netns", "pids", ns, check=False).stdout.split()
            for pid in pids:   # anything the test left running on a host (ranks, orted)
                _run("kill", "-9", pid, check=False)
        for proc in self.sshd:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        for ns in self.ns.values():
            _run("ip", "netns", "del", ns, check=False)
            shutil.rmtree(f"/etc/netns/{ns}", ignore_errors=True)


@pytest.fixture
def two_hosts(tmp_path):
    reason = _why_impossible()
    if reason:
        print(f"test_multihost skipped: {reason}", file=sys.stderr)
        pytest.skip(reason)
    hosts = TwoHosts(tmp_path)
    try:
        hosts.up()
        yield hosts
    finally:
        hosts.down()
        assert not any(ns in _run("ip", "netns", "list").stdout for ns in hosts.ns.values())


def _launch(hosts, script, *args, timeout=1200):
    """Run launch/<script> on hostA, as a user on the cluster's first node would."""
    env = dict(os.environ, PATH=f"{hosts.bin}:{os.environ['PATH']}", TF_CPP_MIN_LOG_LEVEL="2",
               HOROVOD_CYCLE_TIME="1", DCSP_THREADS="1")
    proc = subprocess.run(hosts.on("hostA", "bash", f"{ROOT}/launch/{script}", *args), cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{script} exited with {proc.returncode}\n--- stdout ---\n" \
        f"{proc.stdout[-6000:]}\n--- stderr ---\n{proc.stderr[-6000:]}"
    # The launchers drop TensorFlow's start-up lines, which every rank on every host repeats.
    for noise in ("absl::InitializeLog", "oneDNN custom operations", "cpu_feature_guard"):
        assert noise not in proc.stdout + proc.stderr, f"{script} let through {noise!r}:\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


DIGEST_LINE = re.compile(r"\[(\w+)\] rank (\d+) on ([\w.-]+): weights sha256 ([0-9a-f]{64})")


def _digests(output):
    """{stage: {host: weight digest}} from the end-of-stage lines rank 0 prints for every rank.

    Matched anywhere in the output, not line by line: mpirun forwards each rank's output in
    pieces, and another rank's warnings may land on the same line."""
    found = {}
    for stage, _, host, digest in DIGEST_LINE.findall(output):
        found.setdefault(stage, {})[host] = digest
    return found


def test_two_hosts_gloo_then_mpi(two_hosts, synth_voc, synth_records, tmp_path):
    workdir = tmp_path / "run"
    out = _launch(two_hosts, "multinode.sh", "-H", "hostA:1,hostB:1", "--network-interface", NIC,
                  "--ssh-port", str(PORT), "--ssh-identity", str(two_hosts.key),
                  "--stage", "all", "--config", "tiny_test", "--data", str(synth_records), "--workdir", str(workdir))
    digests = _digests(out)
    assert set(digests) == {"attention", "segmentation", "segmentation_adapted"}, out[-3000:]
    for stage, by_host in digests.items():
        assert set(by_host) == {"hostA", "hostB"}, (stage, by_host)
        assert len(set(by_host.values())) == 1, (stage, by_host)
    done = json.loads((workdir / "segmentation_adapted" / "done.json").read_text())
    assert done["hosts"] == ["hostA", "hostB"]

    _launch(two_hosts, "multinode.sh", "-H", "hostA:1,hostB:1", "--network-interface", NIC,
            "--ssh-port", str(PORT), "--ssh-identity", str(two_hosts.key),
            "--evaluate", "--data", str(synth_records), "--workdir", str(workdir))
    two = json.loads((workdir / "eval_val" / "results.json").read_text())
    run_ranks(1, "-m", "dcsp_dist.evaluate", "--checkpoint", str(workdir), "--data", str(synth_records),
              "--out", str(tmp_path / "one_rank"))
    one = json.loads((tmp_path / "one_rank" / "results.json").read_text())
    assert two["ranks"] == 2 and one["ranks"] == 1
    np.testing.assert_array_equal(np.array(two["confusion_matrix"]), np.array(one["confusion_matrix"]))

    # saliency over the two hosts: every map written once, by the rank whose share it is; a rerun writes none
    photos, maps = tmp_path / "photos", tmp_path / "maps"
    photos.mkdir()
    for name in sorted(os.listdir(synth_voc / "JPEGImages"))[:7]:
        shutil.copy(synth_voc / "JPEGImages" / name, photos / name)
    wanted = sorted(os.path.splitext(n)[0] + ".png" for n in os.listdir(photos))
    for attempt in ("first", "rerun"):
        out = _launch(two_hosts, "multinode.sh", "-H", "hostA:1,hostB:1", "--network-interface", NIC,
                      "--ssh-port", str(PORT), "--ssh-identity", str(two_hosts.key), "--saliency", "--",
                      "--images", str(photos), "--out-dir", str(maps), "--detector", "frequency-tuned")
        lines = re.findall(r"\[saliency\] rank (\d) of 2 on (host[AB]): wrote (\d+), kept (\d+)", out)
        assert sorted((r, h) for r, h, _, _ in lines) == [("0", "hostA"), ("1", "hostB")], out[-3000:]
        wrote = {r: int(w) for r, _, w, _ in lines}
        kept = {r: int(k) for r, _, _, k in lines}
        if attempt == "first":
            assert wrote == {"0": 4, "1": 3} and sum(wrote.values()) == len(wanted)     # each map once
        else:
            assert wrote == {"0": 0, "1": 0} and kept == {"0": 4, "1": 3}
    assert sorted(n for n in os.listdir(maps) if n.endswith(".png")) == wanted

    mpi_workdir = tmp_path / "mpi"
    out = _launch(two_hosts, "mpirun.sh", "-n", "2", "-H", "hostA:1,hostB:1", "--network-interface", NIC,
                  "--stage", "attention", "--config", "tiny_test", "--data", str(synth_records),
                  "--workdir", str(mpi_workdir))
    by_host = _digests(out).get("attention", {})
    assert set(by_host) == {"hostA", "hostB"} and len(set(by_host.values())) == 1, out[-3000:]
