"""The ``solver`` pipeline: one method on one OPT-shaped synthetic layer problem.

It measures solver wall time and objective without a model (the pruning-runtime experiment);
the problem comes from seeded random calibration-like inputs (:func:`benchmarks.conftest`'s
``opt_like_problem``), and every record says so (``problem: synthetic``).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from benchmarks.conftest import SHAPES, opt_like_problem
from osscar.devices import check_device_name, device_label, resolve_device, synchronize, torch_threads


@dataclass(frozen=True)
class SolverRunConfig:
    """shape: one of SHAPES; keep: fraction of groups kept; method + method_params; seed; threads;
    device: where the problem (and so the solver) lives (cpu, cuda, cuda:N)."""

    shape: str = "ffn-3072"
    keep: float = 0.5
    method: str = "osscar"
    method_params: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    threads: int = 1
    device: str = "cpu"

    def __post_init__(self) -> None:
        from osscar.methods import make_method

        check_device_name(self.device, "device")  # availability: where the run executes
        if self.shape not in SHAPES:
            raise ValueError(f"shape={self.shape!r} is unknown; allowed: {', '.join(SHAPES)}")
        if not (isinstance(self.keep, (int, float)) and 0 < self.keep < 1):
            raise ValueError(f"keep must be a fraction in (0, 1), got {self.keep!r}")
        make_method(self.method, **self.method_params)  # unknown method / parameter -> ValueError
        if not isinstance(self.threads, int) or self.threads < 1:
            raise ValueError(f"threads must be a positive integer, got {self.threads!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def run_solver(config: SolverRunConfig, progress: bool = False) -> dict[str, Any]:
    with torch_threads(config.threads):
        return _run_solver(config)


def _run_solver(config: SolverRunConfig) -> dict[str, Any]:
    from osscar.methods import make_method

    device = resolve_device(config.device, "device")
    problem = opt_like_problem(config.shape, keep=config.keep, seed=config.seed, device=device)
    torch.cholesky_inverse(torch.linalg.cholesky(problem.H[:64, :64]))  # library start-up, untimed
    synchronize(device)
    start = time.perf_counter()
    torch.cholesky_inverse(torch.linalg.cholesky(problem.H))
    synchronize(device)
    inverse_seconds = time.perf_counter() - start
    result = make_method(config.method, **config.method_params).prune(problem)
    info = {k: v for k, v in result.info.items() if isinstance(v, (int, float, str))}
    return {
        "problem": "synthetic",
        "p": problem.p, "m": problem.m, "n_groups": problem.n_groups, "group_size": problem.group_size,
        "k": problem.k,
        "objective": result.objective,
        "dense_objective": problem.dense_objective(),
        "prune_seconds": result.seconds,
        "inverse_seconds": inverse_seconds,
        "kept": result.kept.tolist(),
        "info": info,
        "device": device_label(device),
        "threads_used": torch.get_num_threads(),
    }
