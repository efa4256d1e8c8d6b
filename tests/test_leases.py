"""Leases: at most one worker holds a run whatever the interleaving of claims on a stale lease.

The ground truth is the definition itself: count, per trial, the workers whose ``claim`` returned a
lease while all of them still hold what they got; the count must be exactly one.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import socket
import stat
import time
from pathlib import Path

import pytest

import benchmarks.leases as leases
from benchmarks.leases import Coordinator

TRIALS, PROCESSES, TIME_CAP_S = 500, 4, 20.0


def _write_stale(coord: Coordinator, experiment: str, key: str) -> Path:
    """A lease of a worker that stopped beating 100 s ago (expiry 1 s): stale for everyone."""
    path = coord.lease_path(experiment, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"worker": "crashed:1", "host": "elsewhere", "pid": 1, "started": "t",
                                "expiry_s": 1.0, "nonce": "stale-one"}))
    os.utime(path, (time.time() - 100, time.time() - 100))
    return path


def _claimer(root: str, start, end, results, stop) -> None:
    coord = Coordinator(root, expiry_s=60)
    trial = 0
    while True:
        start.wait()
        if stop.is_set():
            return
        lease, _ = coord.claim("exp", f"k{trial:05d}", f"w{os.getpid()}")
        results.put((trial, lease is not None))
        end.wait()  # every claim of this trial is over before any winner lets go
        if lease is not None:
            lease.release()
        trial += 1


def test_stress_many_processes_claim_one_stale_lease_exactly_one_wins(tmp_path):
    ctx = mp.get_context("fork")
    start, end = ctx.Barrier(PROCESSES + 1), ctx.Barrier(PROCESSES + 1)
    results, stop = ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=_claimer, args=(str(tmp_path), start, end, results, stop), daemon=True)
             for _ in range(PROCESSES)]
    for p in procs:
        p.start()
    coord = Coordinator(tmp_path)
    winners: list[int] = []
    t0 = time.monotonic()
    try:
        for trial in range(TRIALS):
            if time.monotonic() - t0 > TIME_CAP_S:  # a bound on the test's time, not an assertion on speed
                break
            _write_stale(coord, "exp", f"k{trial:05d}")
            start.wait(timeout=60)
            got = [results.get(timeout=60) for _ in range(PROCESSES)]
            end.wait(timeout=60)
            assert all(t == trial for t, _ in got)
            winners.append(sum(won for _, won in got))
        stop.set()
        start.wait(timeout=60)
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    counts = {n: winners.count(n) for n in sorted(set(winners))}
    print(f"lease stress: {len(winners)} trials, {PROCESSES} processes, winners per trial -> trials: {counts}")
    assert winners and counts == {1: len(winners)}


def _pause_after_first_read(monkeypatch, during) -> None:
    """The first ``read_lease`` (the claim's look at the stale lease) returns what it read only after
    ``during()`` ran: a worker paused between reading a lease and taking it over."""
    real, fired = leases.read_lease, []

    def paused(path):
        info = real(path)
        if not fired:
            fired.append(path)
            during()
        return info

    monkeypatch.setattr(leases, "read_lease", paused)


def test_a_worker_paused_between_read_and_takeover_does_not_take_the_new_holders_lease(tmp_path, monkeypatch):
    coord = Coordinator(tmp_path, expiry_s=60)
    _write_stale(coord, "exp", "k")
    other: dict = {}
    _pause_after_first_read(monkeypatch, lambda: other.update(zip(("lease", "was"), coord.claim("exp", "k", "B"))))
    mine, holder = coord.claim("exp", "k", "A")
    assert other["lease"] is not None and other["was"].worker == "crashed:1"  # B took over while A paused
    assert mine is None, "two workers hold one run"
    assert holder.worker == "B"
    other["lease"].release()


def test_a_paused_worker_does_not_take_a_lease_made_after_the_one_it_judged_stale(tmp_path, monkeypatch):
    """A reads the stale lease and pauses; meanwhile B takes it over and finishes, and C claims the
    run afresh. A's stale look must not let it take C's lease (same file names, maybe a recycled inode)."""
    coord = Coordinator(tmp_path, expiry_s=60)
    _write_stale(coord, "exp", "k")
    held: dict = {}

    def meanwhile():
        b, _ = coord.claim("exp", "k", "B")
        b.release()
        held["C"], _ = coord.claim("exp", "k", "C")

    _pause_after_first_read(monkeypatch, meanwhile)
    mine, holder = coord.claim("exp", "k", "A")
    assert held["C"] is not None
    assert mine is None, "two workers hold one run"
    assert holder.worker == "C"
    held["C"].release()


def test_a_live_lease_is_never_taken_and_a_released_one_is_free(tmp_path):
    coord = Coordinator(tmp_path, expiry_s=60)
    a, _ = coord.claim("exp", "k", "A")
    b, holder = coord.claim("exp", "k", "B")
    assert b is None and holder.worker == "A" and holder.host == socket.gethostname()
    a.release()
    c, was = coord.claim("exp", "k", "C")
    assert c is not None and was is None
    c.release()
    assert not list((tmp_path / "_leases" / "exp").glob("*.lease"))


def test_lease_files_and_store_folders_have_explicit_modes_whatever_the_umask(tmp_path):
    from benchmarks.store import ResultStore, RunRecord

    old = os.umask(0)
    try:
        lease, _ = Coordinator(tmp_path / "s", expiry_s=60).claim("exp", "k", "A")
        path = ResultStore(tmp_path / "s").put(RunRecord("exp", "solver", {"m": 1}, {}, {}, "s", "f"))
    finally:
        os.umask(old)
    modes = {p.relative_to(tmp_path).as_posix(): stat.S_IMODE(p.stat().st_mode)
             for p in [lease.path, *lease.path.parents[:3], path, path.parent]}
    lease.release()
    assert modes == {"s/_leases/exp/k.0.lease": 0o644, "s/_leases/exp": 0o755, "s/_leases": 0o755, "s": 0o755,
                     f"s/exp/{path.name}": 0o644, "s/exp": 0o755}


@pytest.mark.parametrize("umask", [0o077, 0o000])
def test_umask_does_not_decide_a_lease_file_mode(tmp_path, umask):
    old = os.umask(umask)
    try:
        lease, _ = Coordinator(tmp_path, expiry_s=60).claim("exp", "k", "A")
    finally:
        os.umask(old)
    assert stat.S_IMODE(lease.path.stat().st_mode) == 0o644
    lease.release()


def test_a_paused_worker_gives_way_to_a_holder_that_beats_again(tmp_path, monkeypatch):
    """A judges the lease stale and pauses; its holder was only frozen and touches the lease again.
    A must not take it: the lease is judged again after A's own generation exists."""
    coord = Coordinator(tmp_path, expiry_s=60)
    path = _write_stale(coord, "exp", "k")
    _pause_after_first_read(monkeypatch, lambda: os.utime(path))
    mine, holder = coord.claim("exp", "k", "A")
    assert mine is None and holder.worker == "crashed:1"
    assert path.is_file() and not coord.lease_path("exp", "k").with_name("k.1.lease").exists()


def test_a_paused_worker_gives_way_to_a_higher_generation_made_meanwhile(tmp_path, monkeypatch):
    """A judges generation 0 stale and pauses; meanwhile generation 2 appears (a live holder whose
    clean-up of the lower generations has not reached generation 0 yet). A may create generation 1,
    but must not count it: the holder is the highest generation."""
    coord = Coordinator(tmp_path, expiry_s=60)
    path = _write_stale(coord, "exp", "k")
    live = {"worker": "C", "host": socket.gethostname(), "pid": os.getpid(), "started": "t", "expiry_s": 60.0,
            "nonce": "c"}
    _pause_after_first_read(monkeypatch, lambda: path.with_name("k.2.lease").write_text(json.dumps(live)))
    mine, holder = coord.claim("exp", "k", "A")
    assert mine is None and holder.worker == "C"
