"""Run sweeps into the result store; finished runs are skipped, so a killed sweep resumes.

    python -m benchmarks.run benchmarks/sweeps/vision_accuracy.toml [...] [--profile cpu]
    python -m benchmarks.run --all            # every sweep in benchmarks/sweeps/

All sweeps named are expanded and validated before the first run starts.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import sys
import time
from pathlib import Path

from benchmarks.pipelines import get_pipeline
from benchmarks.sweep import PROFILES, RunSpec, SweepError, load_sweep, sweep_files
from results.provenance import provenance
from results.store import ResultStore, RunRecord, config_key

DEFAULT_STORE = Path(__file__).resolve().parent.parent / "results" / "records"


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def execute(spec: RunSpec, store: ResultStore) -> tuple[RunRecord, bool]:
    """Run one spec unless a valid record exists. Returns (record, ran).

    The run and its provenance are read inside one thread scope, so the record states the thread
    count the run used.
    """
    from osscar.devices import torch_threads

    key = config_key(spec.pipeline, spec.key_config)
    if store.has(spec.experiment, key):
        return store.get(spec.experiment, key), False
    started = _now()
    t0 = time.perf_counter()
    threads = getattr(spec.config, "threads", None)
    with torch_threads(threads) if threads else contextlib.nullcontext():
        metrics = dict(get_pipeline(spec.pipeline).run_function()(spec.config))
        prov = provenance()
    metrics["wall_seconds"] = time.perf_counter() - t0
    record = RunRecord(experiment=spec.experiment, pipeline=spec.pipeline, config=spec.key_config,
                       metrics=metrics, provenance=prov, started=started, finished=_now(), key=key)
    store.put(record)
    return record, True


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweeps", nargs="*", help="sweep files (TOML)")
    parser.add_argument("--all", action="store_true", help="run every sweep in benchmarks/sweeps/")
    parser.add_argument("--profile", default="cpu", choices=PROFILES,
                        help="cpu: scaled-down, offline, this machine (default); paper: the full grid")
    parser.add_argument("--store", default=str(DEFAULT_STORE), help=f"result store root (default: {DEFAULT_STORE})")
    parser.add_argument("--dry-run", action="store_true", help="validate and list the runs, run nothing")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    files = [Path(p) for p in args.sweeps] + (sweep_files() if args.all else [])
    if not files:
        parser.error("give sweep files or --all")
    try:
        sweeps = [load_sweep(f, args.profile) for f in files]
        plan = [spec for sw in sweeps for spec in sw.runs()]  # validates everything first
    except SweepError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    store = ResultStore(args.store)
    todo = [s for s in plan if not store.has(s.experiment, config_key(s.pipeline, s.key_config))]
    print(f"{len(plan)} runs in {len(sweeps)} sweep(s) [{args.profile}]: {len(plan) - len(todo)} done, {len(todo)} to run"
          f"; store: {store.root}", flush=True)
    if args.dry_run:
        for s in plan:
            print(f"  {s.experiment}/{config_key(s.pipeline, s.key_config)}  {s.key_config}")
        return 0
    t0 = time.perf_counter()
    for i, spec in enumerate(todo, 1):
        short = {k: v for k, v in spec.key_config.items() if k in ("method", "model", "arch", "shape", "head_fraction",
                                                                     "neuron_fraction", "flops_fraction", "n_calib",
                                                                     "n_samples", "method_params", "p_hat", "t_hat")}
        print(f"[{i}/{len(todo)}] {spec.experiment}: {short}", flush=True)
        r0 = time.perf_counter()
        execute(spec, store)
        print(f"    done in {time.perf_counter() - r0:.1f}s", flush=True)
    print(f"finished {len(todo)} run(s) in {time.perf_counter() - t0:.1f}s ({len(plan) - len(todo)} skipped as done); "
          f"store: {store.root}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
