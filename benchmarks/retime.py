"""Time the decoder blocks of finished LM runs again, one at a time, on a quiet machine.

    python -m benchmarks.retime claim_lm allocation_lm            # into results/records/<experiment>_retimed/

A sweep times each run's dense and sliced prefill inside the run, interleaved (``compare_latency``), but other
workers of the sweep share the machine: on 2 cores with two one-thread workers the dense backbone of SmolLM2-135M
at 1×256 took 0.99 s in one run and 1.31 s in another, while the sliced one took 0.63 s in both, so two runs with
the same predicted 2.0× measured 1.57× and 2.08×. This tool gives every finished run of the named experiments one
more measurement with nothing else running: the sliced architecture is rebuilt from the record's per-block widths
(:func:`osscar.lm.slicing.slice_shapes` on a copy of the dense model: latency depends on the shapes, not on the
weights), and its backbone is timed against the dense backbone (interleaved, medians) at the record's latency
points and thread count. Runs with the same widths share one measurement (uniform widths do not depend on the
method or the seed).

Each measurement is a record of pipeline ``retime`` in experiment ``<experiment>_retimed``, keyed by its config
(the source record's key, widths, points, repeats, threads): the source records are never rewritten, a rerun
resumes (``--fresh`` measures again), and the report uses these speedups for the claim's pairing rule where
they exist. Nothing else may run on the machine meanwhile; the tool says so and records the load average.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

from benchmarks.record_schema import dig
from benchmarks.store import ResultStore, RunRecord, config_key

PIPELINE = "retime"
SUFFIX = "_retimed"


@dataclass(frozen=True)
class Target:
    """One source record to time: its widths per block and its latency setting."""

    record: RunRecord
    attention_unit: str
    kept_attn: tuple[int, ...]
    kept_mlp: tuple[int, ...]
    points: tuple[tuple[int, int], ...]
    threads: int


def target_of(record: RunRecord) -> Target | None:
    """The widths and latency setting of a finished LM run; None when it was not sliced or timed."""
    m, cfg = record.metrics or {}, record.config or {}
    applied = m.get("applied") or {}
    if record.pipeline != "lm" or not cfg.get("latency_points") or not dig(m, "slicing", "sliced"):
        return None
    n_blocks = len(m.get("layers") or []) // 2
    attn = applied.get("attn_groups_kept_per_block") or [applied.get("attn_groups_kept")] * n_blocks
    mlp = applied.get("neurons_kept_per_block") or [applied.get("neurons_kept")] * n_blocks
    if not attn or None in attn or None in mlp or len(attn) != len(mlp):
        return None
    return Target(record, applied.get("attention_unit") or cfg.get("attention_unit") or "kv-group",
                  tuple(map(int, attn)), tuple(map(int, mlp)),
                  tuple((int(b), int(s)) for b, s in cfg["latency_points"]), int(cfg.get("threads") or 1))


def retime_config(t: Target, repeats: int, warmup: int) -> dict[str, Any]:
    """The key-defining config of one measurement."""
    return {"source_experiment": t.record.experiment, "source_key": t.record.key, "model": t.record.config["model"],
            "dtype": t.record.config.get("dtype", "float32"), "attention_unit": t.attention_unit,
            "kept_attn": list(t.kept_attn), "kept_mlp": list(t.kept_mlp), "points": [list(p) for p in t.points],
            "threads": t.threads, "repeats": repeats, "warmup": warmup}


def _time(dense: Any, t: Target, repeats: int, warmup: int) -> list[dict[str, Any]]:
    """The backbone of ``dense`` against a copy sliced to ``t``'s widths, at ``t``'s points and threads."""
    from osscar.devices import torch_threads
    from osscar.lm.adapters import get_adapter
    from osscar.lm.evaluation.measure import compare_latency
    from osscar.lm.slicing import slice_shapes

    sliced = copy.deepcopy(dense)
    adapter = get_adapter(sliced, t.attention_unit)
    slice_shapes(adapter, adapter.layers(sliced), list(zip(t.kept_attn, t.kept_mlp)))
    with torch_threads(t.threads):
        return compare_latency(dense, sliced, list(t.points), repeats, warmup, blocks_only=True)


def retime(store_root: str, experiments: list[str], repeats: int = 7, warmup: int = 2, fresh: bool = False) -> int:
    """Time every finished, sliced run of ``experiments`` not yet timed; returns how many measurements ran."""
    from osscar.lm.sources.models import load_model
    from osscar.provenance import environment

    store = ResultStore(store_root)
    targets = [t for e in experiments for r in store.records(e) if (t := target_of(r)) is not None]
    shared: dict[tuple, list[dict[str, Any]]] = {}
    dense_models: dict[tuple[str, str], Any] = {}
    ran = 0
    for i, t in enumerate(targets, 1):
        config = retime_config(t, repeats, warmup)
        experiment = t.record.experiment + SUFFIX
        if store.has(experiment, config_key(PIPELINE, config)) and not fresh:
            continue
        model_key = (config["model"], config["dtype"])
        if model_key not in dense_models:
            print(f"loading {config['model']} ({config['dtype']})", flush=True)
            dense_models[model_key] = load_model(config["model"], dtype=config["dtype"]).model.eval()
        same = (model_key, t.attention_unit, t.kept_attn, t.kept_mlp, t.points, t.threads)
        started = time.strftime("%Y-%m-%dT%H:%M:%S")
        if same not in shared:
            print(f"[{i}/{len(targets)}] timing {t.record.experiment}/{t.record.key} "
                  f"(load average {os.getloadavg()[0]:.2f})", flush=True)
            shared[same] = _time(dense_models[model_key], t, repeats, warmup)
        rows = shared[same]
        store.put(RunRecord(experiment=experiment, pipeline=PIPELINE, config=config,
                            metrics={"rows": rows, "load_average_1min": os.getloadavg()[0]},
                            provenance=environment(), started=started, finished=time.strftime("%Y-%m-%dT%H:%M:%S")))
        ran += 1
    return ran


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.retime", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("experiments", nargs="+", help="experiments of the store whose runs to time again (e.g. claim_lm)")
    p.add_argument("--store", default="results/records", help="the record store (default: results/records)")
    p.add_argument("--repeats", type=int, default=7, help="timed rounds per point (medians; default 7)")
    p.add_argument("--warmup", type=int, default=2, help="untimed rounds first (default 2)")
    p.add_argument("--fresh", action="store_true", help="time again runs already timed")
    args = p.parse_args(argv)
    store = ResultStore(args.store)
    unknown = [e for e in args.experiments if e not in store.experiments()]
    if unknown:
        print(f"error: experiments {unknown} not in {args.store}; it has: {', '.join(store.experiments())}",
              file=sys.stderr)
        return 2
    if args.repeats < 1 or args.warmup < 0:
        print("error: --repeats must be ≥ 1 and --warmup ≥ 0", file=sys.stderr)
        return 2
    print(f"timing the decoder blocks again: nothing else should run on this machine (load average now "
          f"{os.getloadavg()[0]:.2f})", flush=True)
    n = retime(args.store, args.experiments, args.repeats, args.warmup, args.fresh)
    print(f"{n} measurement(s) written to {args.store}/<experiment>{SUFFIX}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
