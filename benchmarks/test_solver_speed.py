"""OSSCAR vs ZipLM vs MP+ on OPT-shaped layer problems, beside one p×p float64 inverse.

Run: ``nox -s bench`` (or ``pytest benchmarks -p no:cacheprovider --benchmark-only -s``);
``-- --solver-device cuda`` runs the same problems on a GPU (float64), ``--threads N`` sets the
CPU threads (default 1). Not part of the default test run. Each timing is the median of 3 rounds
(1 for ffn-8192, which takes minutes on a CPU); ``seconds_each`` (wall) and ``cpu_seconds_each``
(this process's CPU time, which other load on a shared machine does not inflate; the summary's
ratios use it on a CPU, wall time on a GPU) in the JSON list them all.
"""

from __future__ import annotations

import statistics
import time

import pytest
import torch

from benchmarks.conftest import SHAPES, opt_like_problem
from osscar.devices import synchronize
from osscar.methods import make_method

# label -> (registry name, parameters). "ziplm-deferred" is ZipLM's one-at-a-time selection on
# OSSCAR's deferred-downdate engine: it separates what p̂ buys from what the engine buys.
METHODS = {"osscar": ("osscar", {}), "ziplm": ("ziplm", {}), "ziplm-deferred": ("ziplm", {"deferred": True}),
           "mp+": ("mp+", {})}


def rounds(shape: str) -> int:
    """Timed rounds per shape: 3 (the summary reports medians), 1 for the minutes-long ffn-8192."""
    return 1 if shape == "ffn-8192" else 3


@pytest.fixture(scope="module", params=[s for s in SHAPES if s != "ffn-1536"])
def problem(request, solver_device):
    return request.param, opt_like_problem(request.param, device=solver_device)


def test_inverse(benchmark, problem, summary, solver_device):
    shape, P = problem
    if solver_device.type == "cuda":  # the first linalg call on a GPU pays for library start-up
        torch.cholesky_inverse(torch.linalg.cholesky(P.H[:64, :64]))
        synchronize(solver_device)

    seconds: list[float] = []
    cpu: list[float] = []

    def inverse():
        start, cpu_start = time.perf_counter(), time.process_time()
        out = torch.cholesky_inverse(torch.linalg.cholesky(P.H))
        synchronize(solver_device)
        seconds.append(time.perf_counter() - start)
        cpu.append(time.process_time() - cpu_start)
        return out

    benchmark.pedantic(inverse, rounds=rounds(shape), iterations=1)
    benchmark.extra_info.update({"device": str(solver_device), "threads": torch.get_num_threads(),
                                 "seconds_each": seconds, "cpu_seconds_each": cpu})
    summary.append({"shape": shape, "what": "inverse", "seconds": statistics.median(seconds),
                    "cpu_seconds": statistics.median(cpu), "objective": None})


@pytest.mark.parametrize("label", METHODS)
def test_method(benchmark, problem, summary, label):
    shape, P = problem
    name, params = METHODS[label]
    method = make_method(name, **params)
    seconds: list[float] = []
    cpu: list[float] = []

    def prune():
        cpu_start = time.process_time()  # CPU time of the whole prune() call (validation and Q included)
        result = method.prune(P)
        cpu.append(time.process_time() - cpu_start)
        seconds.append(result.seconds)  # wall time of the solve alone (prune() also validates and evaluates Q)
        return result

    result = benchmark.pedantic(prune, rounds=rounds(shape), iterations=1)
    benchmark.extra_info.update({"objective": result.objective, "k": P.k, "p": P.p, "m": P.m,
                                 "device": str(P.device), "threads": torch.get_num_threads(), "seconds_each": seconds,
                                 "cpu_seconds_each": cpu,
                                 "info": {k: v for k, v in result.info.items() if k != "local_search_objective"}})
    summary.append({"shape": shape, "what": label, "seconds": statistics.median(seconds),
                    "cpu_seconds": statistics.median(cpu), "objective": result.objective})
