"""horovodrun as the launch scripts run it: Horovod's own launcher (``run_commandline``, the
installed ``horovodrun``'s code), ending with the ranks' status instead of a traceback.

Horovod's launcher raises ``RuntimeError`` when a rank exits non-zero ("Horovod detected that
one or more processes exited with non-zero status...", or "mpirun failed with exit code N"
under ``--mpi``) and Python prints its traceback and exits 1, so a script or scheduler that
wraps the launcher could not tell a preemption (every rank exits 75 after its checkpoint)
from a failure. Here the launcher ends with the status of the first rank that stopped: 75
with one line when the job stopped resumably, and on a failure one line that repeats that
rank's own error line (the last line of the log is the failing rank's). Open MPI's own
multi-line "mpirun detected that one or more processes exited..." block is left out: it
says the same. Anything else (a bug in Horovod's launcher) keeps its traceback.

    python launch/horovodrun.py --gloo -np 2 -H localhost:2 python -m dcsp_dist.train ...
"""
import re
import sys
import threading

EXIT_PREEMPTED = 75     # dcsp_dist.core.preemption.EXIT_PREEMPTED (not imported: no TensorFlow here)
# a rank's line as horovodrun (Gloo: "[1]<stderr>:...") or mpirun's tags ("[1,1]<stderr>:...") show it
_RANK_LINE = re.compile(r"^\[(?:\d+,)?(\d+)\]<std(?:out|err)>:(.*)$")


class _Output:
    """The launcher's stderr or stdout: passed on line by line (whole lines: the ranks'
    lines are forwarded by several threads), remembering each rank's last error line, and
    without Open MPI's multi-line report of a non-zero exit."""

    def __init__(self, stream, errors: dict):
        self.stream, self.errors = stream, errors
        self._partial, self._lock, self._block = "", threading.Lock(), None

    def write(self, text: str) -> int:
        with self._lock:
            self._partial += text
            *lines, self._partial = self._partial.split("\n")
            for line in lines:
                self._line(line)
        return len(text)

    def _line(self, line: str) -> None:
        match = _RANK_LINE.match(line)
        if not match and line.startswith("-" * 20):     # Open MPI frames its reports in dashed lines
            if self._block is None:
                self._block = [line]
                return
            block, self._block = self._block + [line], None
            text = "\n".join(block)
            if "non-zero" not in text and "Exit code" not in text:
                self.stream.write(text + "\n")      # another report: kept as it is
                self.stream.flush()
            return
        if self._block is not None:
            self._block.append(line)
            return
        if match and "error:" in match.group(2):
            self.errors[int(match.group(1))] = match.group(2).strip()
        self.stream.write(line + "\n")
        self.stream.flush()

    def flush(self) -> None:
        with self._lock:
            if self._block is not None:          # a dashed line that opened no report
                self.stream.write("\n".join(self._block) + "\n")
                self._block = None
            if self._partial:
                self._line(self._partial)
                self._partial = ""
        self.stream.flush()

    def __getattr__(self, name):
        return getattr(self.stream, name)


def status_line(message: str, errors: dict) -> tuple[int, str]:
    """(exit status, one line) for Horovod's launcher error ``message``."""
    code = re.search(r"Exit code: (\d+)", message) or re.search(r"exit code (\d+)", message)
    status = int(code.group(1)) if code else 1
    rank = re.search(r"Process name: (\d+)", message)
    rank = int(rank.group(1)) if rank else (min(errors) if errors else None)
    if status == EXIT_PREEMPTED:
        return status, ("horovodrun: the job stopped resumably at a checkpoint (exit 75); relaunch the same command "
                        "to resume")
    who = f"rank {rank}" if rank is not None else "a rank"
    said = errors.get(rank) if rank is not None else None
    return status, f"horovodrun: {who} exited with status {status}" + (f": {said}" if said else "")


class _Exec(Exception):
    """horovodrun --mpi replaces itself with mpirun (``os.execve``): run it as a child instead."""

    def __init__(self, args, env):
        super().__init__("exec")
        self.args, self.env = list(args), env


def _raise_exec(path, args, env):
    raise _Exec(args, env)


def _run_child(args: list, env: dict, out: _Output, err: _Output) -> int:
    """``args`` (``/bin/sh -c "mpirun ..."``) with its output through ``out``/``err`` and the
    signals a scheduler sends passed on to it (sh execs mpirun, so they reach mpirun itself)."""
    import signal
    import subprocess
    if args[:2] == ["/bin/sh", "-c"]:
        args = args[:2] + ["exec " + args[2]] + args[3:]
    child = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2, signal.SIGHUP):
        signal.signal(sig, lambda signum, frame: child.send_signal(signum))
    pumps = [threading.Thread(target=lambda src=src, dst=dst: [dst.write(line) for line in src], daemon=True)
             for src, dst in ((child.stdout, out), (child.stderr, err))]
    for pump in pumps:
        pump.start()
    status = child.wait()
    for pump in pumps:
        pump.join()
    return status


def main(argv=None) -> int:
    import os

    from horovod.runner import launch
    errors: dict = {}
    sys.argv = ["horovodrun"] + (sys.argv[1:] if argv is None else list(argv))
    real_out, real_err = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = out, err = _Output(real_out, errors), _Output(real_err, errors)
    os.execve = _raise_exec
    try:
        try:
            launch.run_commandline()
            return 0
        except _Exec as exc:
            status = _run_child(exc.args, exc.env, out, err)
            message = "" if status == 0 else f"mpirun failed with exit code {status}"
        except RuntimeError as exc:
            message = str(exc)
            if "non-zero status" not in message and "mpirun failed with exit code" not in message:
                raise
        if not message:
            return 0
        out.flush()
        err.flush()
        status, line = status_line(message, errors)
        print(line, file=real_err, flush=True)
        return status
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        sys.stdout, sys.stderr = real_out, real_err


if __name__ == "__main__":
    sys.exit(main())
