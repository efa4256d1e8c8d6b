"""Peak memory of the layer solvers on the benchmark's OPT-shaped problems, against (2p² + 3pm)·8 bytes.

``python -m benchmarks.solver_memory [--shapes ffn-3072,ffn-8192] [--methods osscar,ziplm] [--out PATH]``
(``nox -s bench_solver_memory``). Each (shape, method) runs in a fresh subprocess: it builds the problem
of :func:`benchmarks.conftest.opt_like_problem` (H, G, Ŵ: p² + 2pm float64), drops everything the
construction needed, then solves under ``memray.Tracker``, which records every allocation and free of
the solve (native allocations included: torch's tensors are malloc'd). The solver's peak is the
problem's bytes plus memray's high-water mark of the solve — the bytes of all tensors alive at the
solve's high point, not an RSS estimate — and is compared with the budget (2p² + 3pm)·8 bytes that
issue #11 states (H and one inverse; G, Ŵ and W). Beside it: the solve's wall time (with the
machine's 1-minute load average: other jobs inflate it), its objective and a hash of its kept
groups, so that a memory change can be checked to change no result. Writes
``results/solver_memory.json`` with the versions and thread count used.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from osscar.provenance import git_state, versions

DEFAULT_SHAPES = ("heads-12x64", "heads-32x64", "gqa-32x64-kv8", "ffn-3072", "ffn-8192")
DEFAULT_METHODS = ("osscar", "ziplm")


def budget_bytes(p: int, m: int) -> int:
    """(2p² + 3pm)·8: H and one p×p inverse, G, Ŵ and W, in float64."""
    return (2 * p * p + 3 * p * m) * 8


def measure_one(shape: str, method: str, threads: int) -> dict[str, Any]:
    """Solve one problem in this process under memray; the problem is built before tracking starts."""
    import memray
    import torch

    from benchmarks.conftest import opt_like_problem
    from osscar.methods import make_method

    torch.set_num_threads(threads)
    P = opt_like_problem(shape)
    gc.collect()
    problem_bytes = sum(t.numel() * t.element_size() for t in (P.H, P.G, P.W_dense))
    solver = make_method(method)
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "solve.memray"
        with memray.Tracker(trace, native_traces=False, follow_fork=False):
            start = time.perf_counter()
            result = solver.prune(P)
            seconds = time.perf_counter() - start
        tracked = memray.FileReader(trace).metadata.peak_memory
    kept = result.kept.tolist()
    peak = problem_bytes + tracked
    budget = budget_bytes(P.p, P.m)
    return {"shape": shape, "method": method, "p": P.p, "m": P.m, "group_size": P.group_size, "k": P.k,
            "blocks": P.blocks, "threads": threads, "problem_bytes": problem_bytes, "solve_peak_bytes": tracked,
            "peak_bytes": peak, "budget_bytes": budget, "peak_over_budget": peak / budget,
            "seconds": seconds, "load_average_1min": os.getloadavg()[0], "objective": result.objective,
            "kept_sha1": hashlib.sha1(json.dumps(kept).encode()).hexdigest()[:16]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.solver_memory", description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default=",".join(DEFAULT_SHAPES),
                    help=f"comma-separated benchmark shapes (default: {','.join(DEFAULT_SHAPES)})")
    ap.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                    help=f"comma-separated registry names (default: {','.join(DEFAULT_METHODS)})")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    ap.add_argument("--out", default="results/solver_memory.json", help="JSON to write (default: %(default)s)")
    ap.add_argument("--one", nargs=2, metavar=("SHAPE", "METHOD"), help=argparse.SUPPRESS)  # the subprocess
    args = ap.parse_args(argv)
    from benchmarks.conftest import SHAPES
    from osscar.methods import available_methods

    shapes = [s for s in args.shapes.split(",") if s]
    methods = [m for m in args.methods.split(",") if m]
    for s in shapes:
        if s not in SHAPES:
            ap.error(f"--shapes: unknown shape {s!r}; allowed: {', '.join(SHAPES)}")
    for m in methods:
        if m not in available_methods():
            ap.error(f"--methods: unknown method {m!r}; allowed: {', '.join(available_methods())}")
    if args.threads < 1:
        ap.error(f"--threads must be ≥ 1, got {args.threads}")
    if args.one:
        print(json.dumps(measure_one(args.one[0], args.one[1], args.threads)))
        return 0
    rows = []
    for shape in shapes:
        for method in methods:
            out = subprocess.run([sys.executable, "-m", "benchmarks.solver_memory", "--one", shape, method,
                                  "--threads", str(args.threads)], capture_output=True, text=True)
            if out.returncode:
                sys.stderr.write(out.stderr)
                return out.returncode
            row = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(f"{shape:>14} {method:>7}: peak {row['peak_bytes'] / 2**20:8.1f} MiB = "
                  f"{row['peak_over_budget']:.3f} x (2p²+3pm)·8 ({row['budget_bytes'] / 2**20:.1f} MiB); "
                  f"{row['seconds']:.2f} s, objective {row['objective']:.6f}", flush=True)
    doc = {"what": "peak bytes of the tensors a layer solve holds (problem + memray high-water mark of the solve)",
           "budget": "(2p² + 3pm)·8 bytes", "machine": {"cpu": platform.processor() or platform.machine(),
                                                     "cpu_count": os.cpu_count()},
           "versions": {**versions(("torch", "numpy", "memray", "osscar-harness")), "git": git_state()}, "rows": rows}
    Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
