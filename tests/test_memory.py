"""Memory measured for one run alone: sampled RSS peaks per phase."""

from __future__ import annotations

import time

import pytest

from osscar.memory import MemoryMonitor, current_rss_mb

pytestmark = pytest.mark.skipif(current_rss_mb() is None, reason="needs /proc/self/statm")


def test_phase_peaks_see_an_allocation_and_reset_after_it():
    import numpy as np

    with MemoryMonitor(interval_s=0.005) as mem:
        mem.phase("warmup")
        block = np.ones(400 * 2**20 // 8)  # 400 MiB, touched
        time.sleep(0.05)
        del block
        big = mem.phase("allocate")
        time.sleep(0.05)
        small = mem.phase("after")
    assert big["peak_rss_mb"] - mem.summary()["start_rss_mb"] > 350
    assert small["peak_rss_mb"] < big["peak_rss_mb"] - 300  # the next phase does not inherit the peak
    s = mem.summary()
    assert s["peak_rss_mb"] == big["peak_rss_mb"] and set(s["phases"]) == {"warmup", "allocate", "after"}
    assert s["device_peak_mb"] is None and "sampled" in s["method"]


class FakeCuda:
    """One device's allocator as CUDA counts it: bytes allocated now and the peak since the last reset."""

    def __init__(self) -> None:
        self.allocated = 0
        self.peak = 0

    def alloc(self, mib: int) -> None:
        self.allocated += mib * 2**20
        self.peak = max(self.peak, self.allocated)

    def free(self, mib: int) -> None:
        self.allocated -= mib * 2**20

    def reset_peak_memory_stats(self, device=None) -> None:
        self.peak = self.allocated

    def max_memory_allocated(self, device=None) -> int:
        return self.peak


@pytest.fixture
def fake_cuda(monkeypatch):
    import torch

    fake = FakeCuda()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", fake.reset_peak_memory_stats)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", fake.max_memory_allocated)
    return fake


def test_a_run_inside_a_worker_keeps_the_workers_device_peak(fake_cuda):
    """A worker's monitor, then a run that opens its own: one CUDA peak counter, so the run must join the
    worker's monitor; phases reset it only at their own boundaries. Ground truth: the allocations below."""
    from osscar.memory import run_monitor

    with run_monitor("cuda:0") as worker:
        fake_cuda.alloc(500)  # before the run's first step (e.g. a cached model loaded by the worker)
        fake_cuda.free(500)
        with run_monitor("cuda:0") as run:
            assert run is worker
            fake_cuda.alloc(100)
            first = run.phase("load")
            fake_cuda.alloc(50)
            fake_cuda.free(50)
            second = run.phase("prune")
        assert worker.phases is run.phases
    assert first["device_peak_mb"] == 500 and second["device_peak_mb"] == 150
    assert worker.summary()["device_peak_mb"] == 500


def test_monitors_cannot_nest(fake_cuda):
    with MemoryMonitor(device="cuda:0"):
        with pytest.raises(RuntimeError, match="already open"):
            with MemoryMonitor(device="cuda:0"):
                pass
    with MemoryMonitor(device="cuda:0") as again:  # closed monitors leave nothing behind
        fake_cuda.alloc(10)
        assert again.phase("x")["device_peak_mb"] == 10
