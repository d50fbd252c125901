"""Preemption: a signal (SLURM's warning, Kubernetes' SIGTERM, Ctrl-C) stops the job at a
step boundary with nothing lost.

The handler only raises a flag. Training carries the flag in the step's own allreduce (the
rank-averaged losses), so every rank learns at the same step that some rank was signalled,
with no extra collective and no rank left waiting in one; rank 0 then writes a checkpoint
at that step and every rank exits with ``EXIT_PREEMPTED``. The cue stages finish the image
they are on, discard the shard in progress and keep the finished ones.

Clusters signal more than once: srun sends TERM to the other tasks as soon as one task has
exited, SLURM repeats TERM at the end of a grace time, a user presses Ctrl-C twice. So:
- the first signal sets the flag;
- a second is noted and otherwise ignored: the job is already on its way to a safe exit;
- a third ends the process at once (``128 + signal``), the hard way out a user asks for,
  except while a checkpoint or a marker is being written (``critical``): then the process
  ends right after that write completes, never in the middle of it.
"""
from __future__ import annotations

import contextlib
import os
import signal
import time

from dcsp_dist.core import atomic
from dcsp_dist.core.console import say
from dcsp_dist.core.errors import UserError

# "Preempted, resumable": relaunching the same command resumes (EX_TEMPFAIL, sysexits.h).
EXIT_PREEMPTED = 75
DEFAULT_SIGNALS = "TERM,INT,USR1"


class Preempted(Exception):
    """The job stopped on a signal; the message says where it can resume from."""


_state = {"signal": None, "installed": False, "count": 0, "critical": 0, "exit_after": None}
HARD_STOP_SIGNALS = 3     # the signal that ends the process at once (outside a critical write)


def parse_signals(text: str) -> list[signal.Signals]:
    """``"TERM,INT,USR1"`` -> signals; ValueError naming an unknown one."""
    out = []
    for name in (n.strip().upper() for n in text.split(",") if n.strip()):
        try:
            out.append(signal.Signals[name if name.startswith("SIG") else "SIG" + name])
        except KeyError:
            raise UserError(f"preempt_signals: unknown signal {name!r} (e.g. TERM,INT,USR1)") from None
    return out


def install(signals_text: str = DEFAULT_SIGNALS) -> None:
    """Handle ``signals_text`` in this process (the module's docstring says how)."""
    for sig in parse_signals(signals_text):
        signal.signal(sig, _handle)
    _state["installed"] = True


def _handle(signum, frame) -> None:
    name = signal.Signals(signum).name
    _state["count"] += 1
    if _state["signal"] is None:
        _state["signal"] = name
        return
    if _state["count"] < HARD_STOP_SIGNALS:
        say(f"signal {name} again: already stopping at a safe point (a third signal stops at once)", err=True)
        return
    if _state["critical"]:
        say(f"signal {name} ({_state['count']}): stopping once the write in progress is complete", err=True)
        _state["exit_after"] = 128 + signum
        return
    say(f"signal {name} ({_state['count']}): stopping now", err=True)
    os._exit(128 + signum)


@contextlib.contextmanager
def critical(what: str = "a checkpoint", safe_exit: int | None = None):
    """A write that a signal must not cut short (a checkpoint, a marker, a rename into place):
    a hard stop asked for during it happens right after it, with ``safe_exit`` as the status
    when the write leaves the job resumable (the preemption checkpoint and its marker: 75)."""
    _state["critical"] += 1
    try:
        yield
    finally:
        _state["critical"] -= 1
        if not _state["critical"] and _state["exit_after"] is not None:
            say(f"{what} written; stopping now", err=True)
            os._exit(safe_exit if safe_exit is not None else _state["exit_after"])


def requested() -> bool:
    """Whether this process has been signalled."""
    return _state["signal"] is not None


def signal_name() -> str | None:
    return _state["signal"]


def reset() -> None:
    _state.update(signal=None, count=0, exit_after=None)


MARKER = "preempted.json"


def record(workdir: str | None, where: str) -> None:
    """Rank 0 leaves ``<workdir>/preempted.json`` (or ``$DCSP_PREEMPT_MARKER``, which the
    batch script sets) once the job's state is safe on disk. A scheduler's script reads it
    when the tasks' exit statuses are mixed (srun's --kill-on-bad-exit kills the ranks still
    exiting once one has exited 75)."""

    path = os.environ.get("DCSP_PREEMPT_MARKER") or (os.path.join(workdir, MARKER) if workdir else None)
    if path is None:
        return
    with critical("the preemption marker"):
        atomic.write_json(path, {"where": where, "signal": _state["signal"], "time": time.strftime("%Y-%m-%d %H:%M:%S"),
                                 "slurm_job_id": os.environ.get("SLURM_JOB_ID")})
