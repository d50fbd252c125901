"""The signal policy of dcsp_dist.core.preemption with real signals to a real process: the first
sets the flag, the second is ignored, the third stops at once, except inside a critical
write, which it never cuts short (the process ends right after it, 75 when resumable)."""
import json
import subprocess
import sys

from tests.support.hvd import ROOT

SCRIPT = """
import json, os, signal, sys, time
from dcsp_dist.core import preemption
preemption.install("TERM")
mode, out = sys.argv[1], sys.argv[2]
os.kill(os.getpid(), signal.SIGTERM)
os.kill(os.getpid(), signal.SIGTERM)
assert preemption.requested() and preemption.signal_name() == "SIGTERM"
if mode == "critical":
    with preemption.critical("the test's file", safe_exit=preemption.EXIT_PREEMPTED):
        with open(out, "w") as fh:
            fh.write("[")
            os.kill(os.getpid(), signal.SIGTERM)          # the third, in the middle of the write
            for i in range(1000):
                fh.write(f"{i},")
            fh.write("1000]")
    print("unreachable")
else:
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5)
    print("unreachable")
"""


def _run(mode, tmp_path):
    out = tmp_path / "written.json"
    proc = subprocess.run([sys.executable, "-c", SCRIPT, mode, str(out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env={"PYTHONPATH": ROOT, "PATH": "/usr/bin:/bin"})
    return proc, out


def test_a_third_signal_inside_a_critical_write_waits_for_it(tmp_path):
    proc, out = _run("critical", tmp_path)
    assert proc.returncode == 75, proc.stderr
    assert json.loads(out.read_text()) == list(range(1001))                    # the whole write
    assert "signal SIGTERM again: already stopping at a safe point" in proc.stderr
    assert "signal SIGTERM (3): stopping once the write in progress is complete" in proc.stderr
    assert "the test's file written; stopping now" in proc.stderr and "unreachable" not in proc.stdout


def test_a_third_signal_elsewhere_stops_at_once(tmp_path):
    proc, _ = _run("plain", tmp_path)
    assert proc.returncode == 128 + 15, proc.stderr
    assert "signal SIGTERM (3): stopping now" in proc.stderr and "unreachable" not in proc.stdout
