"""Where OSSCAR's and ZipLM's time goes on the solver benchmark's shapes (a benchmark, not a test).

    python -m benchmarks.solver_phases [--shapes heads-32x64,...] [--repeats 3] [--out results/solver_phases.json]

Per shape, CPU time (this process's, one thread by default) of each phase of the two solvers,
driven through :class:`osscar.obs.SupportState` as the methods drive it: the p×p inverse (building
the state), Stage A (gradual removal; ZipLM: its whole removal phase), building the pruned-set
matrix K and residuals R, Stage B's trials, and the refit. Then whole ``prune()`` calls of ZipLM and
of OSSCAR variants side by side (default; the OPT code's stop-at-first-failure rule; no local
search), with their objectives. Medians over ``repeats``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.conftest import SHAPES, opt_like_problem
from osscar.methods import make_method
from osscar.obs import SupportState, refit
from osscar.problem import LayerProblem
from osscar.solver import OSSCAR, default_p_hat, default_t_hat, gradual_removal, local_search
from osscar.provenance import cpu_model, git_state, versions

HEAD_SHAPES = ("heads-9x64", "heads-12x64", "heads-32x64", "gqa-32x64-kv8")
VARIANTS = {"ziplm": ("ziplm", {}), "osscar": ("osscar", {}),
            "osscar (OPT stop rule)": ("osscar", {"min_swap": None, "patience": 1}),
            "osscar (t_hat=0)": ("osscar", {"t_hat": 0})}


def osscar_phases(P: LayerProblem) -> dict[str, float]:
    """CPU seconds of each phase of one default OSSCAR solve (as :meth:`OSSCAR.solve` runs it)."""
    s, n, k = P.group_size, P.n_groups, P.k
    method = OSSCAR()
    p_hat, swap = default_p_hat(s, n - k), default_t_hat(s, k, n) // 2
    marks = [time.process_time()]
    state = SupportState(P, deferred=True, track_pruned=True)
    marks.append(time.process_time())
    gradual_removal(state, k, p_hat)
    marks.append(time.process_time())
    state.track_pruned()
    marks.append(time.process_time())
    state, info = local_search(state, swap, method.max_iter, method.min_swap, method.patience)
    marks.append(time.process_time())
    kept = torch.nonzero(state.kept).flatten()
    del state
    refit(P, kept)
    marks.append(time.process_time())
    names = ("inverse", "stage A", "K and R", "stage B trials", "refit")
    return {**{name: b - a for name, a, b in zip(names, marks, marks[1:])}, "trials": info["swaps_tried"]}


def ziplm_phases(P: LayerProblem) -> dict[str, float]:
    """CPU seconds of each phase of one ZipLM solve."""
    marks = [time.process_time()]
    state = SupportState(P)
    marks.append(time.process_time())
    gradual_removal(state, P.k, 1)
    marks.append(time.process_time())
    kept = torch.nonzero(state.kept).flatten()
    del state
    refit(P, kept)
    marks.append(time.process_time())
    return {name: b - a for name, a, b in zip(("inverse", "stage A", "refit"), marks, marks[1:])}


def prune_cpu_seconds(method, P: LayerProblem) -> tuple[float, float]:
    """(CPU seconds, objective) of one ``method.prune(P)``."""
    start = time.process_time()
    result = method.prune(P)
    return time.process_time() - start, result.objective


def _median(rows: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(r[key] for r in rows) for key in rows[0]}


def measure(shape: str, repeats: int) -> dict[str, Any]:
    P = opt_like_problem(shape)
    out: dict[str, Any] = {"shape": shape, "p": P.p, "m": P.m, "k": P.k, "blocks": P.blocks}
    out["phases"] = {"osscar": _median([osscar_phases(P) for _ in range(repeats)]),
                     "ziplm": _median([ziplm_phases(P) for _ in range(repeats)])}
    out["prune"] = {}
    for label, (name, params) in VARIANTS.items():
        method = make_method(name, **params)
        method.prune(P)  # warm-up
        runs = [prune_cpu_seconds(method, P) for _ in range(repeats)]
        out["prune"][label] = {"cpu_seconds": statistics.median(r[0] for r in runs), "objective": runs[-1][1]}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.solver_phases", description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default=",".join(HEAD_SHAPES),
                    help=f"comma-separated benchmark shapes (default: {','.join(HEAD_SHAPES)}; all: {','.join(SHAPES)})")
    ap.add_argument("--repeats", type=int, default=3, help="repeats per measurement, median reported (default: 3)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    ap.add_argument("--out", default="results/solver_phases.json", help="JSON to write (default: %(default)s)")
    args = ap.parse_args(argv)
    shapes = [s for s in args.shapes.split(",") if s]
    bad = [s for s in shapes if s not in SHAPES]
    if bad or not shapes:
        print(f"error: --shapes: unknown shape(s) {', '.join(bad) or '(none)'}; allowed: {', '.join(SHAPES)}",
              file=sys.stderr)
        return 2
    if args.repeats < 1 or args.threads < 1:
        print(f"error: --repeats and --threads must be ≥ 1, got {args.repeats} and {args.threads}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    rows = []
    for shape in shapes:
        r = measure(shape, args.repeats)
        rows.append(r)
        o, z = r["phases"]["osscar"], r["phases"]["ziplm"]
        print(f"{shape}: osscar " + ", ".join(f"{k} {v:.3f}" for k, v in o.items() if k != "trials")
              + f" ({o['trials']:.0f} trials) | ziplm " + ", ".join(f"{k} {v:.3f}" for k, v in z.items()))
        print("  prune() cpu s: " + ", ".join(f"{label} {v['cpu_seconds']:.3f} (Q {v['objective']:.6g})"
                                               for label, v in r["prune"].items()), flush=True)
    meta = {"threads": torch.get_num_threads(), "repeats": args.repeats, "cpu": cpu_model(),
            "versions": versions(), "git": git_state(), "load_average_1min": os.getloadavg()[0]}
    Path(args.out).write_text(json.dumps({"meta": meta, "shapes": rows}, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
