"""Run sweeps into the result store; finished runs are skipped, so a killed sweep resumes.

    python -m benchmarks.run benchmarks/sweeps/vision_accuracy.toml [...] [--profile cpu]
    python -m benchmarks.run --all            # every sweep in benchmarks/sweeps/
    python -m benchmarks.run benchmarks/sweeps/lm_perplexity.toml --profile paper --only model=facebook/opt-2.7b --list
    python -m benchmarks.run --all --profile paper --executor slurm --store /shared/osscar/records
    python -m benchmarks.run --all --executor ray --ray-address HEAD:6379 --store /shared/osscar/records

All sweeps named are expanded and validated before the first run starts. Every run is claimed
with a lease in the store (benchmarks.leases), so several submissions on one store, from any
executor, run each config once; a run that fails leaves a failure entry that --retry-failed
reruns. `python -m benchmarks.status STORE [SWEEP...]` shows where a store stands.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from benchmarks.executors import EXECUTORS, ExecutorError, Options, default_job_dir, make_executor, summarize
from benchmarks.resources import resources_for
from benchmarks.selection import listing, parse_filter, select
from benchmarks.sweep import PROFILES, RunSpec, Sweep, SweepError, load_sweep, sweep_files
from benchmarks.worker import execute  # noqa: F401  (re-exported: one run without a lease)
from benchmarks.leases import DEFAULT_EXPIRY_S, Coordinator
from benchmarks.store import ResultStore, config_key, store_problem

DEFAULT_STORE = Path(__file__).resolve().parent.parent / "results" / "records"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweeps", nargs="*", help="sweep files (TOML)")
    parser.add_argument("--all", action="store_true", help="run every sweep in benchmarks/sweeps/")
    parser.add_argument("--profile", default="cpu", choices=PROFILES,
                        help="cpu: scaled-down, offline, this machine (default); paper: the full grid")
    parser.add_argument("--store", default=str(DEFAULT_STORE), help=f"result store root (default: {DEFAULT_STORE}); "
                        "for a cluster, a folder every worker mounts")
    parser.add_argument("--executor", default="local", choices=EXECUTORS,
                        help="local: this process, one run after another (default); ray: Ray tasks; slurm: SLURM "
                             "job arrays via submitit; submitit-local: submitit with local processes")
    parser.add_argument("--ray-address", default=None,
                        help="with --executor ray: the cluster to join (e.g. HEAD:6379 or 'auto'; default: start a "
                             "local one)")
    parser.add_argument("--lease-expiry", type=float, default=DEFAULT_EXPIRY_S,
                        help=f"seconds without a heartbeat after which a run's lease is stale and taken over "
                             f"(default: {DEFAULT_EXPIRY_S:g}; a dead process on this host is stale at once)")
    parser.add_argument("--job-dir", default="",
                        help=f"with --executor slurm / submitit-local: a private folder (made 0700) for the jobs' "
                             f"pickled calls and logs (default: {default_job_dir()}); never inside a shared store")
    parser.add_argument("--retry-failed", action="store_true", help="rerun runs that have a failure entry")
    parser.add_argument("--dry-run", action="store_true", help="validate and list the runs, run nothing")
    parser.add_argument("--only", action="append", default=[], metavar="KEY=V1,V2",
                        help="keep the runs whose field KEY (any key the sweep sets) is one of the values, read as the "
                             "sweep types them; repeatable, all must hold (e.g. --only model=facebook/opt-2.7b "
                             "--only method=ziplm,osscar)")
    parser.add_argument("--list", action="store_true",
                        help="print the selected runs' keys and fields and exit (no store access, nothing runs)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    return parser


def _plan(sweeps: list[Sweep], listing_only: bool) -> tuple[list[RunSpec], set[str]]:
    """Every run of ``sweeps``, validated, and the models checked only in part. ``listing_only``: a hub
    model whose config cannot be read here (offline, not cached) is listed without the checks that
    need its config (then named in the set, for a note); otherwise that is an error."""
    if not listing_only or all(sw.pipeline != "lm" for sw in sweeps):
        return [spec for sw in sweeps for spec in sw.runs()], set()
    from osscar.lm.run_config import hub_checks_deferred

    with hub_checks_deferred() as skipped:
        plan = [spec for sw in sweeps for spec in sw.runs()]
    return plan, skipped


def _note_unchecked(plan: list[RunSpec], skipped: set[str]) -> None:
    models = sorted({s.config.model for s in plan if getattr(s.config, "model", None) in skipped})
    if models:
        print(f"note: no config readable here for {', '.join(models)} (hub, offline or not cached): their runs are "
              "listed without the checks that need it (architecture, max positions, layers)", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    files = [Path(p) for p in args.sweeps] + (sweep_files() if args.all else [])
    if not files:
        parser.error("give sweep files or --all")
    try:
        filters = [parse_filter(text) for text in args.only]
        sweeps = [load_sweep(f, args.profile) for f in files]
        if not args.list:
            problem = store_problem(args.store, not args.dry_run, tuple(sw.name for sw in sweeps))
            if problem:
                raise SweepError(problem)
        plan, unchecked = _plan(sweeps, listing_only=args.dry_run or args.list)  # validates everything first
        plan = select(plan, filters)
        _note_unchecked(plan, unchecked)
        if args.list:
            for s in plan:
                print(listing(s, config_key(s.pipeline, s.key_config)))
            return 0
        if not args.lease_expiry > 0:
            raise SweepError(f"--lease-expiry must be > 0 seconds, got {args.lease_expiry:g}")
        store, coord = ResultStore(args.store), Coordinator(args.store, args.lease_expiry)
        done = [s for s in plan  # --dry-run changes nothing on disk: bad records are named, not quarantined
                if store.has(s.experiment, config_key(s.pipeline, s.key_config), quarantine=not args.dry_run)]
        rest = [s for s in plan if s not in done]
        failed = [s for s in rest if coord.failure(s.experiment, config_key(s.pipeline, s.key_config)) is not None]
        todo = rest if args.retry_failed else [s for s in rest if s not in failed]
        print(f"{len(plan)} runs in {len(sweeps)} sweep(s) [{args.profile}]: {len(done)} done, {len(todo)} to run"
              + (f", {len(failed)} failed earlier" + ("" if args.retry_failed else " (not retried; --retry-failed)")
                 if failed else "") + f"; store: {store.root}", flush=True)
        if args.dry_run:
            for s in plan:
                print(f"  {s.experiment}/{config_key(s.pipeline, s.key_config)}  {s.key_config}")
            return 0
        work = [(s, resources_for(s, s.resources)) for s in todo]
        if args.executor in ("local", "submitit-local"):  # runs execute here: their devices must exist here
            from osscar.devices import resolve_device

            for s, _ in work:
                if hasattr(s.config, "device"):
                    resolve_device(s.config.device, f"{s.experiment}: device")
        executor = make_executor(args.executor, Options(store=str(store.root), expiry_s=args.lease_expiry,
                                                        ray_address=args.ray_address, log_dir=args.job_dir,
                                                        report=lambda m: print(m, flush=True)))
        if work:
            executor.check(work)
    except (SweepError, ExecutorError, ValueError) as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    outcomes = executor.run(work) if work else []
    for note in executor.notes:
        print(f"  {note}", flush=True)
    print(summarize(executor.name, outcomes, len(done), 0 if args.retry_failed else len(failed), time.perf_counter() - t0)
          + f"; store: {store.root}", flush=True)
    bad = [o for o in outcomes if o.status == "failed"]
    for o in bad:
        print(f"  failed: {o.experiment}/{o.key}: {o.error}" + (f" (log: {o.log})" if o.log else ""), file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
