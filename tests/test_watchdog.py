"""The watchdog's verdicts from real heartbeat files (dcsp_dist.training.watchdog), on a clock the
test moves; the real stopped rank is tests/parallel/test_stall.py."""
import json

import pytest

from dcsp_dist.training.watchdog import EXIT_STALLED, Watchdog, interval_for


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def _dogs(tmp_path, size=3, timeout=30, token="t1"):
    clock = Clock()
    tmp_path.mkdir(parents=True, exist_ok=True)
    dogs = [Watchdog(str(tmp_path), r, size, timeout, token, clock=clock) for r in range(size)]
    for dog in dogs:
        dog._changed = {r: clock.now for r in range(size)}
        dog._moved = dict(dog._changed)
        dog._write()
    for dog in dogs:
        dog.check()                 # the first sight of a file counts as a change
    return clock, dogs


def _tick(clock, dogs, seconds, progress=None, silent=()):
    """Every rank not in ``silent`` beats (at ``progress[rank]`` when given); rank 0 reads."""
    clock.now += seconds
    for dog in dogs:
        if dog.rank in silent:
            continue
        if progress and dog.rank in progress:
            dog.beat(progress[dog.rank])
        dog._write()
    return dogs[0].check()


def test_ranks_that_step_together_are_not_stalled(tmp_path):
    clock, dogs = _dogs(tmp_path)
    for step in range(1, 20):
        assert _tick(clock, dogs, 10, {r: 2 * step for r in range(3)}) == []


def test_a_silent_rank_is_named_after_the_timeout_and_not_before(tmp_path):
    clock, dogs = _dogs(tmp_path)
    _tick(clock, dogs, 5, {r: 7 for r in range(3)})
    assert _tick(clock, dogs, 29, silent=(2,)) == []
    stalled = _tick(clock, dogs, 2, silent=(2,))
    assert [(rec["rank"], rec["progress"]) for rec, _ in stalled] == [(2, 7)]
    assert stalled[0][1].startswith("no heartbeat for 31 s")


def test_a_rank_behind_the_others_is_named_when_nothing_moves(tmp_path):
    """Rank 1 beats (its heartbeat thread lives) but never reaches step 5's collective."""
    clock, dogs = _dogs(tmp_path)
    _tick(clock, dogs, 1, {0: 9, 1: 8, 2: 9})
    assert _tick(clock, dogs, 20) == []
    stalled = _tick(clock, dogs, 11)
    assert [rec["rank"] for rec, _ in stalled] == [1]
    assert "while the others wait for it in step 5" in stalled[0][1]


def test_a_slow_step_everyone_is_in_is_not_a_stall(tmp_path):
    clock, dogs = _dogs(tmp_path)
    _tick(clock, dogs, 1, {r: 9 for r in range(3)})
    for _ in range(10):
        assert _tick(clock, dogs, 30) == []           # five minutes in one step: all alive, none behind


def test_finished_ranks_and_earlier_launches_files(tmp_path):
    clock, dogs = _dogs(tmp_path, size=2)
    dogs[1].stop()                                     # finished its loop: no longer counted on
    assert _tick(clock, dogs, 100, silent=(1,)) == []
    # a file from an earlier launch (another token) is not this launch's heartbeat
    clock2, fresh = _dogs(tmp_path / "other", size=2, token="new")
    (tmp_path / "other" / "rank-1.json").write_text(json.dumps(dict(json.load(open(fresh[1].path(1))), token="old")))
    assert [rec["rank"] for rec, _ in _tick(clock2, fresh, 31, silent=(1,))] == [1]


def test_the_lowest_healthy_rank_says_it_once_and_every_rank_exits(tmp_path, capsys):
    clock, dogs = _dogs(tmp_path, size=3)
    exits = []
    for dog in dogs:
        dog._exit = exits.append
    clock.now += 31
    dogs[1]._write()
    dogs[2]._write()
    for dog in dogs[1:]:
        stalled = dog.check()
        dog._report(stalled)
        dog._exit(EXIT_STALLED)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dcsp_dist: error: rank 0 (host ") and "stalled: no heartbeat" in err[0]
    assert "exit 76" in err[0] and exits == [EXIT_STALLED, EXIT_STALLED]


@pytest.mark.parametrize("timeout,interval", [(300, 10), (30, 3), (2, 0.5)])
def test_heartbeat_interval(timeout, interval):
    assert interval_for(timeout) == interval
