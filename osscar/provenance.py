"""The one source of a run's environment: package versions, device, git commit, python, platform.

:func:`environment` is written once per result: a sweep record's ``provenance`` (benchmarks.worker) or
the ``environment`` of the metrics JSON a CLI writes. Runs return only their own inputs under
``metrics.provenance`` (model, corpora, seed, device, method parameters), never versions. Records made
before this module carried ``metrics.provenance.versions`` as well (module names, e.g. ``lm_eval``);
they are read as they are.
"""

from __future__ import annotations

import importlib.metadata as metadata
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

# distribution names (importlib.metadata), not module names
PACKAGES = ("torch", "torchvision", "transformers", "timm", "lm-eval", "datasets", "gensim", "numpy", "pandas",
            "osscar-harness")


def versions(packages: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """Installed version of each distribution in ``packages`` (None: not installed)."""
    out: dict[str, str | None] = {}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else what platform reports."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_info() -> dict[str, Any]:
    """CPU, core count, torch threads now, CUDA and the first GPU's name."""
    import torch

    info: dict[str, Any] = {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                            "cuda": torch.cuda.is_available()}
    if info["cuda"]:
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def git_state(root: Path | None = None) -> dict[str, Any]:
    """{"commit", "dirty"} of the checkout holding this package (None where git cannot tell). ``dirty``: a tracked
    file differs from the commit, the committed record store (``results/records``: data a rerun replaces, never
    read by a run) left out."""
    root = root or Path(__file__).resolve().parent.parent
    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None
    status = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results/records")
    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(status) if status is not None else None}


def environment() -> dict[str, Any]:
    """Versions, device, git commit, python and platform, for one result."""
    return {"versions": versions(), "device": device_info(), "git": git_state(),
            "python": platform.python_version(), "platform": platform.platform()}
