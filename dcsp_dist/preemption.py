"""Preemption: a signal (SLURM's warning, Kubernetes' SIGTERM, Ctrl-C) stops the job at a
step boundary with nothing lost.

The handler only raises a flag. Training carries the flag in the step's own allreduce (the
rank-averaged losses), so every rank learns at the same step that some rank was signalled,
with no extra collective and no rank left waiting in one; rank 0 then writes a checkpoint
at that step and every rank exits with ``EXIT_PREEMPTED``. The cue stages finish the image
they are on, discard the shard in progress and keep the finished ones. A second signal ends
the process at once.
"""
from __future__ import annotations

import os
import signal

from dcsp_dist import atomic
from dcsp_dist.console import say

# "Preempted, resumable": relaunching the same command resumes (EX_TEMPFAIL, sysexits.h).
EXIT_PREEMPTED = 75
DEFAULT_SIGNALS = "TERM,INT,USR1"


class Preempted(Exception):
    """The job stopped on a signal; the message says where it can resume from."""


_state = {"signal": None, "installed": False}


def parse_signals(text: str) -> list[signal.Signals]:
    """``"TERM,INT,USR1"`` -> signals; ValueError naming an unknown one."""
    out = []
    for name in (n.strip().upper() for n in text.split(",") if n.strip()):
        try:
            out.append(signal.Signals[name if name.startswith("SIG") else "SIG" + name])
        except KeyError:
            raise ValueError(f"preempt_signals: unknown signal {name!r} (e.g. TERM,INT,USR1)") from None
    return out


def install(signals_text: str = DEFAULT_SIGNALS) -> None:
    """Handle ``signals_text`` in this process: the first sets the flag, a second exits at once."""
    for sig in parse_signals(signals_text):
        signal.signal(sig, _handle)
    _state["installed"] = True


def _handle(signum, frame) -> None:
    if _state["signal"] is not None:
        say(f"second signal {signal.Signals(signum).name}: stopping now", err=True)
        os._exit(128 + signum)
    _state["signal"] = signal.Signals(signum).name


def requested() -> bool:
    """Whether this process has been signalled."""
    return _state["signal"] is not None


def signal_name() -> str | None:
    return _state["signal"]


def reset() -> None:
    _state["signal"] = None


MARKER = "preempted.json"


def record(workdir: str, where: str) -> None:
    """Rank 0 leaves ``<workdir>/preempted.json`` once the job's state is safe on disk. A
    scheduler's script reads it when the tasks' exit statuses are mixed (srun's
    --kill-on-bad-exit kills the ranks still exiting once one has exited 75)."""
    import time

    atomic.write_json(os.path.join(workdir, MARKER), {"where": where, "signal": _state["signal"],
                                                      "time": time.strftime("%Y-%m-%d %H:%M:%S"),
                                                      "slurm_job_id": os.environ.get("SLURM_JOB_ID")})
