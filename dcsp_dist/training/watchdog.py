"""No hang when a rank stalls: a heartbeat per rank and a watchdog that ends the job.

While a fixed-size job of two or more ranks trains, each rank runs one thread that, every
``interval`` seconds, writes ``<stage dir>/heartbeat/rank-<r>.json`` (host, pid, a beat
counter, and the rank's progress: ``2*step`` once ``step`` steps are done, ``2*step + 1``
while the rank is inside the next step and its collective) and reads every rank's file.
A rank has stalled when

- its file has not changed for ``stall_timeout`` seconds: the process is stopped, frozen or
  gone (SIGSTOP, a dead node), so even its heartbeat thread is silent; or
- no rank has progressed for ``stall_timeout`` seconds and it is behind the others: it never
  reached the step's collective (a hung read of a shard, say) while they wait in it.

The lowest rank that has not stalled prints one line naming the stalled rank(s), with host
and pid; every rank that sees the stall exits with ``EXIT_STALLED``, and the launcher
(horovodrun, mpirun, ``srun --kill-on-bad-exit``) ends the rest. So the job ends at most
``stall_timeout + 2 * interval`` seconds after the last step any rank finished.

Why not Horovod's stall inspector (HOROVOD_STALL_CHECK_TIME_SECONDS): it compares the tensors
the ranks have submitted, in Horovod's background loop, and that loop's own negotiation
waits for every rank, so a stopped rank stops the inspector too (docs/running.md, "A rank
that stalls", has the measurement). Files in the run directory need nothing but the shared
filesystem the checkpoints already need, and they say which host to look at.

Under the defaults a collective's own timeout may fire first (Gloo's is 30 s): the rank
whose collective failed then reads the heartbeats (``blame``) and its error line names the
rank that went silent or fell behind. With MPI, which has no such timeout, the watchdog's
bound applies. A job that was suspended as a whole (``scontrol suspend``, PreemptMode=SUSPEND,
SIGSTOP to every rank) is not a stall: a watchdog whose own gap between two checks is far
longer than its interval was stopped itself, and it starts its view of the others afresh.

The bound must exceed the longest legitimate silence: a step (the first one traces),
and rank 0's checkpoint write while the others wait in the next step's collective. The
default, 300 s, is sized for ResNet-101 on GPUs (a step is about a second; its 353 MB
checkpoint takes 7 s at the 49 MB/s measured here, 35 s at 10 MB/s).
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid

from dcsp_dist.core.console import say
from dcsp_dist.core.errors import first_line

EXIT_STALLED = 76
FRESH_SECONDS = 1.0      # a finished step is written at once when the heartbeat file is older than this
SUSPENDED_AFTER = 3      # a gap of this many intervals between two checks: the watchdog itself was stopped


class StalledPeer(RuntimeError):
    """A collective failed and the heartbeats say which rank stalled (one line)."""


def interval_for(timeout: float) -> float:
    """Seconds between heartbeats: a tenth of the bound, within 0.5..10."""
    return min(10.0, max(0.5, timeout / 10))


class Watchdog:
    """One rank's heartbeat and watch over every rank's (see the module doc)."""

    def __init__(self, directory: str, rank: int, size: int, timeout: float, token: str,
                 exit=os._exit, clock=time.monotonic):
        self.directory, self.rank, self.size, self.timeout, self.token = directory, rank, size, timeout, token
        self.interval = interval_for(timeout)
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.progress, self.beats = 0, 0
        self._exit, self._clock = exit, clock
        self._write_lock, self._written = threading.Lock(), 0.0
        self._stop = threading.Event()
        self._seen: dict[int, tuple] = {}          # rank -> (beat, progress) last read
        self._changed: dict[int, float] = {}       # rank -> when its file last changed (our clock)
        self._moved: dict[int, float] = {}         # rank -> when its progress last changed
        self._thread = threading.Thread(target=self._run, name="dcsp-watchdog", daemon=True)

    def path(self, rank: int) -> str:
        return os.path.join(self.directory, f"rank-{rank}.json")

    def start(self) -> Watchdog:
        os.makedirs(self.directory, exist_ok=True)
        now = self._clock()
        for r in range(self.size):
            self._changed[r] = self._moved[r] = now
        self._write()
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop watching and say so in this rank's file (the others stop counting on it)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self._write(finished=True)

    def beat(self, progress: int) -> None:
        """The rank's progress; a finished step is also written at once when the file is
        over a second old, so that a stall names the step the rank really reached."""
        self.progress = progress
        if progress % 2 == 0 and self._clock() - self._written >= FRESH_SECONDS:
            self._write()

    def _write(self, finished: bool = False) -> None:
        with self._write_lock:
            self.beats += 1
            self._written = self._clock()
            record = {"token": self.token, "rank": self.rank, "host": self.host, "pid": self.pid,
                      "beat": self.beats, "progress": self.progress, "finished": finished}
            tmp = f"{self.path(self.rank)}.{self.host}.{self.pid}.tmp"
            try:
                with open(tmp, "w") as fh:
                    json.dump(record, fh)
                os.replace(tmp, self.path(self.rank))
            except OSError:
                pass               # a full or flaky disk: the others see no change, as for a stall

    def _read(self, rank: int) -> dict | None:
        try:
            with open(self.path(rank)) as fh:
                record = json.load(fh)
        except (OSError, ValueError):
            return None
        return record if record.get("token") == self.token else None    # an earlier launch's file

    def _run(self) -> None:
        last = self._clock()
        while not self._stop.wait(self.interval):
            now = self._clock()
            self._write()
            if now - last > SUSPENDED_AFTER * self.interval:   # this process was stopped: suspend, not stall
                self._restart_view(now)
            last = now
            stalled = self.check()
            if stalled:
                self._report(stalled)
                self._exit(EXIT_STALLED)
                return

    def _restart_view(self, now: float) -> None:
        """Forget what was seen before a suspension: every rank starts afresh from ``now``."""
        self._seen.clear()
        for r in range(self.size):
            self._changed[r] = self._moved[r] = now

    def blame(self) -> str | None:
        """After a collective failed: the ranks that went silent or fell behind, by their
        heartbeats, as one phrase; None when every rank looks alive."""
        stalled = self.check(self.interval * 2)
        if not stalled:
            return None
        return "; ".join(f"rank {rec['rank']} (host {rec.get('host', '?')}, pid {rec.get('pid', '?')}) {why}, "
                         f"{_last_report(rec)}" for rec, why in stalled)

    def check(self, timeout: float | None = None) -> list[tuple[dict, str]]:
        """Read every rank's file once; the ranks stalled for ``timeout`` seconds (default:
        the watchdog's bound), each with why (empty: none)."""
        timeout = self.timeout if timeout is None else timeout
        now, records = self._clock(), {}
        for r in range(self.size):
            record = self._read(r)
            if record is not None:
                records[r] = record
                key = (record["beat"], record["progress"])
                if self._seen.get(r) != key:
                    if self._seen.get(r, (None, None))[1] != record["progress"]:
                        self._moved[r] = now
                    self._seen[r], self._changed[r] = key, now
        live = [r for r in range(self.size) if not records.get(r, {}).get("finished")]
        silent = [r for r in live if now - self._changed[r] > timeout]
        if silent:
            return [(records.get(r) or {"rank": r}, f"no heartbeat for {now - self._changed[r]:.0f} s")
                    for r in silent]
        if live and now - max(self._moved[r] for r in live) > timeout:
            progress = {r: records[r]["progress"] for r in live if r in records}
            if progress and min(progress.values()) < max(progress.values()):
                low = min(progress.values())
                return [(records[r], f"no step for {now - self._moved[r]:.0f} s while the others wait for it "
                                     f"in step {max(progress.values()) // 2 + 1}")
                        for r in progress if progress[r] == low]
        return []

    def _report(self, stalled: list[tuple[dict, str]]) -> None:
        stalled_ranks = {record["rank"] for record, _ in stalled}
        reporter = min(r for r in range(self.size) if r not in stalled_ranks) if len(stalled_ranks) < self.size \
            else self.rank
        if self.rank != reporter:
            return
        parts = [f"rank {rec['rank']} (host {rec.get('host', '?')}, pid {rec.get('pid', '?')}) stalled: {why}, "
                 f"{_last_report(rec)}" for rec, why in stalled]
        say(f"dcsp_dist: error: {'; '.join(parts)}; ending the job (stall_timeout={self.timeout:g} s, "
            f"exit {EXIT_STALLED})", err=True)


def _where(progress) -> str:
    step, inside = divmod(progress, 2)
    return f"step {step + 1} (in its collective)" if inside else f"step {step} done"


def _last_report(record: dict) -> str:
    """What the rank's last heartbeat said: its progress when written (a heartbeat is written
    every interval, so a rank that went on before it stopped may be further than this)."""
    if record.get("progress") is None:
        return "never heard from"
    return f"its last heartbeat reported {_where(record['progress'])}"


@contextlib.contextmanager
def watching(directory: str, ctx, timeout: float):
    """Heartbeat and watchdog around a fixed job's step loop; yields ``beat(progress)``.
    Off (a no-op) for one rank or ``timeout`` 0. One broadcast at the start gives the ranks
    a shared token, so files left by an earlier launch are not read as this one's."""
    if ctx.size < 2 or not timeout:
        yield lambda progress: None
        return

    from dcsp_dist import distributed
    token = distributed.broadcast_object(uuid.uuid4().hex if ctx.is_chief else None)
    dog = Watchdog(directory, ctx.rank, ctx.size, timeout, token).start()
    try:
        yield dog.beat
    except Exception as exc:
        # A collective that failed because a peer stopped (Gloo's timeout fires before the
        # watchdog's bound): name the rank the heartbeats show, not "another rank".
        blame = dog.blame() if distributed.peer_failed(exc) or distributed.collective_failed(exc) else None
        if blame:
            raise StalledPeer(f"a collective failed ({first_line(exc)}); by the heartbeats: {blame}") \
                from None
        raise
    finally:
        dog.stop()
