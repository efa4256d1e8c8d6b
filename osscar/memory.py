"""Memory of one run, measured for that run alone: a sampled host RSS peak and device peaks per phase.

``ru_maxrss`` only grows over a process's life, so in a sweep it reports the largest run so far.
:class:`MemoryMonitor` samples the resident set size (``/proc/self/statm``) in a background
thread every ``interval_s`` and keeps the peak since its last :meth:`~MemoryMonitor.phase`; on a
CUDA device it also resets and reads ``torch.cuda.max_memory_allocated`` per phase. Short spikes
between two samples can be missed (20 ms by default): the peaks are lower bounds.

One monitor per run: CUDA has one peak counter per device, and every monitor resets it, so a monitor
opened inside another would erase the outer one's peak. :func:`run_monitor` therefore joins the
monitor already open in this context (a sweep worker's) and opens a new one only where there is none;
the run's phases and the worker's summary then come from the same monitor.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def current_rss_mb() -> float | None:
    """Resident set size of this process now (MiB), or None where /proc is unavailable."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * _PAGE / 2**20
    except (OSError, ValueError, IndexError):
        return None


_ACTIVE: contextvars.ContextVar[MemoryMonitor | None] = contextvars.ContextVar("osscar_memory_monitor", default=None)


class MemoryMonitor:
    """Peak RSS per phase of one run (see the module docstring). Use as a context manager, or through
    :func:`run_monitor`; opening one while another is open in this context is an error."""

    def __init__(self, interval_s: float = 0.02, device: Any = None) -> None:
        self.interval_s = interval_s
        self.device = device
        self.phases: dict[str, dict[str, float | None]] = {}
        self._lock = threading.Lock()
        self._peak = self._start = current_rss_mb()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._token: contextvars.Token | None = None

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            rss = current_rss_mb()
            if rss is not None:
                with self._lock:
                    self._peak = rss if self._peak is None else max(self._peak, rss)

    def __enter__(self) -> MemoryMonitor:
        if _ACTIVE.get() is not None:
            raise RuntimeError("a MemoryMonitor is already open in this context; join it with run_monitor()")
        self._token = _ACTIVE.set(self)
        self._reset_device()
        self._thread = threading.Thread(target=self._sample, name="rss-monitor", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._token is not None:
            _ACTIVE.reset(self._token)
            self._token = None
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _cuda(self) -> Any:
        import torch

        d = torch.device(self.device) if self.device is not None else None
        if d is None or d.type != "cuda" or not torch.cuda.is_available():
            return None  # an unavailable device is reported by the run itself (resolve_device)
        return d

    def _reset_device(self) -> None:
        d = self._cuda()
        if d is not None:
            import torch

            torch.cuda.reset_peak_memory_stats(d)

    def phase(self, name: str) -> dict[str, float | None]:
        """Close a phase: its host RSS peak and (CUDA) device peak since the previous phase; start the next."""
        rss = current_rss_mb()
        with self._lock:
            peak = max(p for p in (self._peak, rss) if p is not None) if (self._peak or rss) else None
            self._peak = rss
        entry: dict[str, float | None] = {"peak_rss_mb": peak, "device_peak_mb": None}
        d = self._cuda()
        if d is not None:
            import torch

            entry["device_peak_mb"] = torch.cuda.max_memory_allocated(d) / 2**20
            torch.cuda.reset_peak_memory_stats(d)
        self.phases[name] = entry
        return entry

    def summary(self) -> dict[str, Any]:
        """{"start_rss_mb", "peak_rss_mb" (max over phases), "device_peak_mb", "phases", "method"}."""
        peaks = [p["peak_rss_mb"] for p in self.phases.values() if p["peak_rss_mb"] is not None]
        dev = [p["device_peak_mb"] for p in self.phases.values() if p["device_peak_mb"] is not None]
        return {"start_rss_mb": self._start, "peak_rss_mb": max(peaks) if peaks else None,
                "device_peak_mb": max(dev) if dev else None, "phases": dict(self.phases),
                "method": f"host RSS sampled every {self.interval_s * 1e3:.0f} ms from /proc/self/statm, peak since "
                          "the previous phase; device: torch.cuda.max_memory_allocated reset per phase"}


@contextlib.contextmanager
def run_monitor(device: Any = None, interval_s: float = 0.02) -> Iterator[MemoryMonitor]:
    """The monitor open in this context if there is one (its counters untouched), else a new one for
    ``device`` that closes with the block."""
    active = _ACTIVE.get()
    if active is not None:
        yield active
        return
    with MemoryMonitor(interval_s=interval_s, device=device) as mem:
        yield mem
