"""Where a run executes: check a device name before any work, find a model's device, synchronise.

A run's ``device`` ("cpu", "cuda", "cuda:N") holds the model, its calibration forwards, the
second moments H and the layer problems, so the solvers run there too (float64; methods follow
``LayerProblem.device``).
"""

from __future__ import annotations

import contextlib
import os
import platform
from collections.abc import Iterator
from typing import Any
from pathlib import Path

import torch
from torch import nn
from osscar.options import MODEL_DTYPES  # noqa: F401  (re-exported)


def check_device_name(value: str | torch.device, name: str = "device") -> torch.device:
    """``value`` as a torch.device when it names cpu or cuda[:N]; ValueError naming ``name`` otherwise.

    Does not ask whether the device exists here: a sweep validated on a login node runs on GPU
    workers. :func:`resolve_device` checks availability where the run executes.
    """
    try:
        device = torch.device(value)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"{name} must be 'cpu', 'cuda' or 'cuda:N', got {value!r}") from e
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"{name} must be 'cpu', 'cuda' or 'cuda:N', got {value!r}")
    return device


def resolve_device(value: str | torch.device, name: str = "device") -> torch.device:
    """``value`` as a torch.device; ValueError naming ``name`` unless it is cpu or an available cuda[:N]."""
    device = check_device_name(value, name)
    if device.type == "cpu":
        return device
    if not torch.cuda.is_available():
        raise ValueError(f"{name}={value!r}: torch.cuda.is_available() is False on this machine; use 'cpu'")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"{name}={value!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    return device


def check_model_dtype(value: str, name: str = "dtype") -> torch.dtype:
    """A model dtype name of ``MODEL_DTYPES`` as a torch.dtype; ValueError otherwise."""
    if value not in MODEL_DTYPES:
        raise ValueError(f"{name} must be one of {', '.join(MODEL_DTYPES)}, got {value!r}")
    return getattr(torch, value)


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[int]:
    """Run the block with ``torch.set_num_threads(n)``; the previous count is restored on exit.

    The one place every pipeline sets its thread count, so that what a record states
    (read inside the block) is what the run used.
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"threads must be a positive integer, got {n!r}")
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(previous)


def add_device_arguments(parser: Any, threads: int = 1, device_help: str = "cpu, cuda or cuda:N") -> None:
    """``--device`` and ``--threads`` of a small CLI (read back with :func:`device_from_arguments`)."""
    parser.add_argument("--threads", type=int, default=threads, help="torch threads")
    parser.add_argument("--device", default="cpu", help=device_help)


def device_from_arguments(parser: Any, args: Any) -> torch.device:
    """The device of :func:`add_device_arguments`' flags, and the thread count checked; a bad value is the
    parser's one-line error (exit 2). Run the work inside ``torch_threads(args.threads)``."""
    if isinstance(args.threads, bool) or not isinstance(args.threads, int) or args.threads < 1:
        parser.error(f"--threads must be a positive integer, got {args.threads!r}")
    try:
        return resolve_device(args.device, "--device")
    except ValueError as e:
        parser.error(str(e))
        raise  # parser.error exits; this is for a parser that does not


def model_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s first parameter (CPU for a model without parameters)."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels on ``device`` (no-op on the CPU), so that wall times cover the work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_accelerator_mb(device: torch.device) -> float | None:
    """Peak memory allocated by torch on ``device`` in MiB (None on the CPU)."""
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**20


def available_bytes(device: str) -> tuple[int, str]:
    """(bytes, what) free for a run on ``device``: CUDA: ``torch.cuda.mem_get_info``; CPU: the host's
    available memory (``MemAvailable`` of /proc/meminfo; elsewhere free pages, ``os.sysconf``)."""
    if str(device).startswith("cuda"):
        return int(torch.cuda.mem_get_info(torch.device(device))[0]), f"free on {device}"
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, "available host memory"
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "free host memory"


def cublas_workspace_bytes(env: str | None = None, capability_major: int | None = None) -> int:
    """Bytes of the cuBLAS workspace PyTorch allocates on a CUDA device at the first matrix product; it comes
    from the caching allocator, so ``torch.cuda.max_memory_allocated`` counts it in every later peak.

    ``env``: ``CUBLAS_WORKSPACE_CONFIG`` (``:SIZE_KiB:COUNT`` pairs, summed); else PyTorch's default, 32 MiB on
    Hopper (compute capability 9) and ``:4096:2:16:8`` (8.1 MiB) before it. ``capability_major`` None: this
    machine's first GPU, or 32 MiB (the larger default) where there is none — a plan made on a login node.
    Seen on an H200 (benchmarks/gpu_check.sh): every phase's measured peak was 20–30 MiB over a plan without it.
    """
    env = os.environ.get("CUBLAS_WORKSPACE_CONFIG") if env is None else env
    if env:
        parts = [int(x) for x in env.strip(":").split(":")]
        return sum(parts[i] * parts[i + 1] for i in range(0, len(parts) - 1, 2)) * 2**10
    if capability_major is None:
        capability_major = torch.cuda.get_device_capability()[0] if torch.cuda.is_available() else 9
    return 32 * 2**20 if capability_major == 9 else (4096 * 2 + 16 * 8) * 2**10


def device_label(device: str | torch.device = "cpu") -> str:
    """A readable name of a device for records and cache keys: ``cpu:<CPU model>`` or ``cuda:<GPU name>``."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"cpu:{name}"
