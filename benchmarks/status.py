"""Where a shared record store stands: every run of the given sweeps (or every run the store knows).

    python -m benchmarks.status STORE [SWEEP.toml ...] [--profile cpu|paper] [--all]

Each run is ``done``, ``running`` (lease holder and heartbeat age), ``stale`` (a lease whose holder
stopped beating; the next submission takes it over), ``failed`` (first line of the error, log
path) or ``not started``, followed by the counts.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from benchmarks.sweep import PROFILES, SweepError, load_sweep, sweep_files
from benchmarks.leases import Coordinator
from benchmarks.store import ResultStore, UnreadableRecord, config_key

STATES = ("done", "running", "stale", "failed", "not started")


def run_states(store_root: str | Path, plan: list[tuple[str, str, str]] | None = None) -> list[dict[str, str]]:
    """[{experiment, key, label, state, detail}] for ``plan`` [(experiment, key, label)], or for every
    run the store has a record, lease or failure entry of."""
    store, coord = ResultStore(store_root), Coordinator(store_root)
    leases = coord.leases()
    failures = {(f.get("experiment"), f.get("key")): f for f in coord.failures()}
    if plan is None:
        bad: list = []  # unreadable or invalid record files are listed too (as failed, with the reason)
        known = {(r.experiment, r.key): "" for r in store.records(on_bad=bad.append)}
        known.update({(b.path.parent.name, b.path.stem): "" for b in bad})
        known.update({k: "" for k in leases})
        known.update({k: "" for k in failures})
        plan = [(e, k, label) for (e, k), label in sorted(known.items())]
    rows = []
    for exp, key, label in plan:
        path = store.root / exp / f"{key}.json"
        lease = leases.get((exp, key))
        if path.is_file():
            try:
                store.read(path)
                state, detail = "done", ""
            except UnreadableRecord as exc:
                state, detail = "failed", f"unreadable record: {exc}"
            except ValueError as exc:
                state, detail = "failed", f"bad record (quarantined on the next run): {exc}"
        elif lease is not None:
            state = "stale" if lease.stale() else "running"
            detail = f"{lease.worker}, heartbeat {lease.heartbeat_age_s:.0f}s ago, since {lease.started}"
        elif (exp, key) in failures:
            f = failures[(exp, key)]
            state = "failed"
            detail = str(f.get("error", "")).splitlines()[0] + (f" (log: {f['log']})" if f.get("log") else "")
        else:
            state, detail = "not started", ""
        rows.append({"experiment": exp, "key": key, "label": label, "state": state, "detail": detail})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.status", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("store", help="result store root")
    p.add_argument("sweeps", nargs="*", help="sweep files whose runs to list (default: what the store holds)")
    p.add_argument("--all", action="store_true", help="every sweep in benchmarks/sweeps/")
    p.add_argument("--profile", default="cpu", choices=PROFILES, help="profile of the sweeps (default: cpu)")
    args = p.parse_args(argv)
    if not Path(args.store).is_dir():
        print(f"error: store {args.store!r} is not a folder", file=sys.stderr)
        return 2
    files = [Path(f) for f in args.sweeps] + (sweep_files() if args.all else [])
    plan = None
    if files:
        try:
            specs = [s for f in files for s in load_sweep(f, args.profile).runs()]
        except SweepError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        plan = [(s.experiment, config_key(s.pipeline, s.key_config), s.label()) for s in specs]
    rows = run_states(args.store, plan)
    for r in rows:
        print(f"{r['state']:<12} {r['experiment']}/{r['key']}  {r['label']}" + (f"  — {r['detail']}" if r["detail"] else ""))
    counts = Counter(r["state"] for r in rows)
    print(f"{len(rows)} run(s): " + ", ".join(f"{counts.get(s, 0)} {s}" for s in STATES))
    return 0


if __name__ == "__main__":
    sys.exit(main())
