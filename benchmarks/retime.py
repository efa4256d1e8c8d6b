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
method or the seed). Every distinct architecture is timed once per round, all in turn, for three rounds; per point
the median round is kept: a single pass let one burst of load move a width's speedup by 10% between sessions
(uniform at 1.5×: 1.43× in one quiet pass, 1.27× in the next).

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


def retime_config(t: Target, repeats: int, warmup: int, rounds: int = 1) -> dict[str, Any]:
    """The key-defining config of one measurement (``rounds`` only when more than one, so earlier keys stay)."""
    config = {"source_experiment": t.record.experiment, "source_key": t.record.key, "model": t.record.config["model"],
              "dtype": t.record.config.get("dtype", "float32"), "attention_unit": t.attention_unit,
              "kept_attn": list(t.kept_attn), "kept_mlp": list(t.kept_mlp), "points": [list(p) for p in t.points],
              "threads": t.threads, "repeats": repeats, "warmup": warmup}
    return {**config, "rounds": rounds} if rounds > 1 else config


def median_rows(rounds: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per latency point, the round whose block speedup is the median (lower median for an even count), with
    every round's block speedup beside it (``rounds_blocks_speedup``)."""
    out = []
    for per_point in zip(*rounds):
        ordered = sorted(per_point, key=lambda row: row["blocks_speedup"])
        out.append({**ordered[(len(ordered) - 1) // 2], "rounds_blocks_speedup": [r["blocks_speedup"] for r in per_point]})
    return out


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


def retime(store_root: str, experiments: list[str], repeats: int = 7, warmup: int = 2, fresh: bool = False,
           rounds: int = 3) -> int:
    """Time every finished, sliced run of ``experiments`` not yet timed; returns how many measurements ran. Each
    distinct architecture (runs with the same widths share it) is timed once per round, all of them in turn, for
    ``rounds`` rounds: a burst of load hits one round of several architectures, and the median round drops it."""
    from osscar.lm.sources.models import load_model
    from osscar.provenance import environment

    store = ResultStore(store_root)
    todo = []  # (target, its config, the architecture it shares with every run of the same widths)
    for t in (t for e in experiments for r in store.records(e) if (t := target_of(r)) is not None):
        config = retime_config(t, repeats, warmup, rounds)
        if fresh or not store.has(t.record.experiment + SUFFIX, config_key(PIPELINE, config)):
            model_key = (config["model"], config["dtype"])
            todo.append((t, config, (model_key, t.attention_unit, t.kept_attn, t.kept_mlp, t.points, t.threads)))
    dense_models: dict[tuple[str, str], Any] = {}
    by_shape: dict[tuple, Target] = {}
    for t, config, shape in todo:
        if shape[0] not in dense_models:
            print(f"loading {config['model']} ({config['dtype']})", flush=True)
            dense_models[shape[0]] = load_model(config["model"], dtype=config["dtype"]).model.eval()
        by_shape.setdefault(shape, t)
    timings: dict[tuple, list[list[dict[str, Any]]]] = {shape: [] for shape in by_shape}
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    for k in range(rounds):
        for i, (shape, t) in enumerate(by_shape.items(), 1):
            print(f"round {k + 1}/{rounds}, architecture {i}/{len(by_shape)}: {t.record.experiment}/{t.record.key} "
                  f"(load average {os.getloadavg()[0]:.2f})", flush=True)
            timings[shape].append(_time(dense_models[shape[0]], t, repeats, warmup))
    for t, config, shape in todo:
        store.put(RunRecord(experiment=t.record.experiment + SUFFIX, pipeline=PIPELINE, config=config,
                            metrics={"rows": median_rows(timings[shape]), "load_average_1min": os.getloadavg()[0]},
                            provenance=environment(), started=started, finished=time.strftime("%Y-%m-%dT%H:%M:%S")))
    return len(todo)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.retime", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("experiments", nargs="+", help="experiments of the store whose runs to time again (e.g. claim_lm)")
    p.add_argument("--store", default="results/records", help="the record store (default: results/records)")
    p.add_argument("--repeats", type=int, default=7, help="timed passes per point in each round (median; default 7)")
    p.add_argument("--warmup", type=int, default=2, help="untimed passes first (default 2)")
    p.add_argument("--rounds", type=int, default=3,
                   help="rounds over every architecture; per point the median round is kept (default 3)")
    p.add_argument("--fresh", action="store_true", help="time again runs already timed")
    args = p.parse_args(argv)
    store = ResultStore(args.store)
    unknown = [e for e in args.experiments if e not in store.experiments()]
    if unknown:
        print(f"error: experiments {unknown} not in {args.store}; it has: {', '.join(store.experiments())}",
              file=sys.stderr)
        return 2
    if args.repeats < 1 or args.warmup < 0 or args.rounds < 1:
        print("error: --repeats and --rounds must be ≥ 1 and --warmup ≥ 0", file=sys.stderr)
        return 2
    print(f"timing the decoder blocks again: nothing else should run on this machine (load average now "
          f"{os.getloadavg()[0]:.2f})", flush=True)
    n = retime(args.store, args.experiments, args.repeats, args.warmup, args.fresh, args.rounds)
    print(f"{n} measurement(s) written to {args.store}/<experiment>{SUFFIX}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
