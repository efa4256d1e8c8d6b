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
