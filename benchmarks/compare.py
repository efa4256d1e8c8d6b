"""Compare a freshly run record store with the committed reference records, run by run.

    python -m benchmarks.compare runs/reproduce/records results/records --out results/reproduction.md

Records are matched by key (the hash of the full run config, threads included, so like is
compared with like). For each pair the deterministic metrics are compared under the tolerances
of :data:`TOLERANCES`, timings as ratios (reported, never failing). Two tiers:

* the same selection — every layer kept the same groups: floats may differ only by summation
  order (the ``same`` tolerances);
* a different selection in some layer — float summation order on another machine flipped a
  discrete choice, and every later layer sees other inputs (the ``flip`` tolerances, set from
  the spread measured across machines; README "Reproducing").

A run is ``reproduced`` (same selection, within ``same``), ``reproduced (selection drift)``
(within ``flip``), ``DRIFTED`` (beyond its tolerance), ``missing`` (in the reference, not in the
new store) or ``new`` (no reference). Exit status 1 when any run drifted or is missing. The report
names the processors of the new and the reference runs (from their provenance), with a note when they differ.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from benchmarks import record_schema as schema
from benchmarks.store import ResultStore, RunRecord


@dataclass(frozen=True)
class Tolerance:
    """|new − ref| ≤ abs_tol + rel_tol·|ref|."""

    rel: float = 0.0
    abs: float = 0.0

    def holds(self, new: float, ref: float) -> bool:
        return abs(new - ref) <= self.abs + self.rel * abs(ref)

    def __str__(self) -> str:
        parts = ([f"rel {self.rel:g}"] if self.rel else []) + ([f"abs {self.abs:g}"] if self.abs else [])
        return " + ".join(parts) or "exact"


# metric kind -> (same selection, flipped selection). Same selection: a fresh-clone rerun on this
# machine type differed by at most 1.4e-5 (LM layer objectives, float32 H accumulation), 1.4e-4
# (perplexity; MP's 6.7M), 6e-16 (solver objectives), 0 (sizes, zero-shot): ~7x headroom below.
# Flipped selection: set from the spread across machines (README "Reproducing").
TOLERANCES = MappingProxyType({
    "size": (Tolerance(), Tolerance()),                               # params, MACs/FLOPs: integers, exact
    "ppl": (Tolerance(rel=1e-3), Tolerance(rel=0.05)),                # perplexity (and NLL)
    "accuracy": (Tolerance(abs=0.002), Tolerance(abs=0.01)),          # vision top-1 over 10k images
    "zero_shot": (Tolerance(abs=0.011), Tolerance(abs=0.05)),         # lm-eval acc over 100 examples
    "objective": (Tolerance(rel=1e-4, abs=1e-6), Tolerance(rel=0.02)),  # layer objectives Q(W)
})


@dataclass(frozen=True)
class Metric:
    name: str
    kind: str
    value: float


def deterministic_metrics(record: RunRecord) -> Iterator[Metric]:
    """The metrics of a record that must reproduce (per pipeline), read through :mod:`benchmarks.record_schema`."""
    m = record.metrics
    if record.pipeline == "lm":
        for state in schema.STATES:
            for corpus, ppl in schema.perplexities(m, state).items():
                yield Metric(f"{state} ppl {corpus}", "ppl", ppl)
            for task, scores in schema.zero_shot_scores(m, state).items():
                for k, value in scores.items():
                    if value is not None:
                        yield Metric(f"{state} {task} {k}", "zero_shot", value)
        sizes = schema.lm_sizes(m)
        for k in ("params_dense", "params_pruned"):
            if sizes[k] is not None:
                yield Metric(k, "size", sizes[k])
    elif record.pipeline == "vision":
        for state in schema.STATES:
            for k, value in schema.vision_scores(m, state).items():
                if value is not None:
                    yield Metric(f"{state} {k}", "accuracy" if k == "top1" else "size", value)
    elif record.pipeline == "solver":
        if schema.num(m.get("objective")) is not None:
            yield Metric("objective", "objective", schema.num(m["objective"]))
    for name, objective in schema.layer_objectives(m).items():
        yield Metric(f"objective {name}", "objective", objective)


def selections(record: RunRecord) -> dict[str, Any]:
    """Kept groups per layer (the discrete outcome of a run)."""
    return schema.kept_groups(record.pipeline, record.metrics)


def timings(record: RunRecord) -> dict[str, float]:
    """The record's wall seconds and pruning seconds (compared as ratios, never checked)."""
    out = {"wall_seconds": schema.num(record.metrics.get("wall_seconds")),
           "prune_seconds": schema.solver_seconds(record.pipeline, record.metrics)}
    return {k: v for k, v in out.items() if v}


@dataclass
class Comparison:
    experiment: str
    key: str
    label: str
    status: str
    layers_differing: int = 0
    layers: int = 0
    worst: str = ""
    failures: list[str] = field(default_factory=list)
    time_ratio: float | None = None
    machines: tuple[str, str] = ("", "")  # (new, reference): the CPU (and GPU) each run was made on

    @property
    def failed(self) -> bool:
        return self.status in ("DRIFTED", "missing")


def run_label(record: RunRecord) -> str:
    c = record.config
    parts = [str(c.get("method", ""))]
    for k in ("shape", "head_fraction", "neuron_fraction", "attention_unit", "flops_fraction", "n_calib", "p_hat", "t_hat",
              "keep"):
        if c.get(k) is not None:
            parts.append(f"{k}={c[k]}")
    if c.get("method_params"):
        parts.append(str(c["method_params"]))
    return " ".join(parts)


def machine(record: RunRecord) -> str:
    """The processor a record was made on, from its provenance ("" when it names none)."""
    device = record.provenance.get("device") or {}
    if not device:
        return ""
    return str(device.get("cpu") or "unknown CPU") + (f" + {device['gpu']}" if device.get("gpu") else "")


def compare_pair(new: RunRecord, ref: RunRecord) -> Comparison:
    """One run's comparison (see the module docstring for the tiers)."""
    sel_new, sel_ref = selections(new), selections(ref)
    names = sorted(set(sel_new) | set(sel_ref), key=str)
    differing = sum(1 for n in names if sel_new.get(n) != sel_ref.get(n))
    tier = 0 if differing == 0 else 1
    ref_metrics = {x.name: x for x in deterministic_metrics(ref)}
    new_metrics = {x.name: x for x in deterministic_metrics(new)}
    failures, worst, worst_excess = [], "", -1.0
    for name in sorted(set(ref_metrics) | set(new_metrics)):
        if name not in new_metrics or name not in ref_metrics:
            failures.append(f"{name}: only in {'reference' if name in ref_metrics else 'new record'}")
            continue
        a, b = new_metrics[name], ref_metrics[name]
        tol = TOLERANCES[b.kind][tier]
        diff = abs(a.value - b.value)
        bound = tol.abs + tol.rel * abs(b.value)
        excess = diff / bound if bound else (0.0 if diff == 0 else float("inf"))
        if not b.kind == "objective" and excess > worst_excess and diff > 0:
            worst_excess, worst = excess, f"{name}: {a.value:.6g} vs {b.value:.6g} ({tol})"
        if not tol.holds(a.value, b.value):
            failures.append(f"{name}: {a.value:.6g} vs {b.value:.6g} beyond {tol}")
    status = "DRIFTED" if failures else ("reproduced" if tier == 0 else "reproduced (selection drift)")
    t_new, t_ref = timings(new), timings(ref)
    ratios = [t_new[k] / t_ref[k] for k in t_new if k in t_ref and t_ref[k]]
    return Comparison(new.experiment, new.key, run_label(new), status, differing, len(names), worst, failures,
                      statistics.median(ratios) if ratios else None, (machine(new), machine(ref)))


def _index(store: ResultStore) -> dict[tuple[str, str], RunRecord]:
    return {(r.experiment, r.key): r for r in store.records()}


def compare_stores(new_root: str | Path, ref_root: str | Path, experiments: Iterable[str] | None = None) -> list[Comparison]:
    """Every run of either store (or of ``experiments`` only), matched by (experiment, key)."""
    new, ref = _index(ResultStore(new_root)), _index(ResultStore(ref_root))
    if experiments is not None:
        wanted = set(experiments)
        new = {k: v for k, v in new.items() if k[0] in wanted}
        ref = {k: v for k, v in ref.items() if k[0] in wanted}
    out = []
    for ident in sorted(set(new) | set(ref)):
        if ident not in new:
            out.append(Comparison(*ident, run_label(ref[ident]), "missing"))
        elif ident not in ref:
            out.append(Comparison(*ident, run_label(new[ident]), "new"))
        else:
            out.append(compare_pair(new[ident], ref[ident]))
    return out


STATUSES = ("reproduced", "reproduced (selection drift)", "DRIFTED", "missing", "new")


def _machines_line(rows: list[Comparison]) -> list[str]:
    """Which processors made the new and the reference runs, with a note when they differ (a flipped selection is
    then expected: another CPU's kernels sum in another order)."""
    pairs = Counter(r.machines for r in rows if r.machines != ("", ""))
    if not pairs:
        return []
    text = "; ".join(f"{n} run{'s' * (n > 1)} new on {a}, reference on {b}" for (a, b), n in sorted(pairs.items()))
    other = any(a != b for a, b in pairs)
    note = (" Another processor sums floats in another order, so a selection may flip (selection drift)."
            if other else "")
    return [f"**Machines:** {text}.{note}", ""]


def format_report(rows: list[Comparison], new_root: str | Path, ref_root: str | Path) -> str:
    counts = {s: sum(r.status == s for r in rows) for s in STATUSES}
    lines = ["# Reproduction check", "",
             f"New records: `{new_root}`; reference: `{ref_root}`. Runs are matched by config key "
             "(threads included). Tolerances (same selection / a flipped selection): "
             + "; ".join(f"{k} {a} / {b}" for k, (a, b) in TOLERANCES.items()) + ". "
             "Timing ratios (new/reference, median over the record's timings) are reported, never checked.", "",
             "**Summary:** " + ", ".join(f"{counts[s]} {s}" for s in STATUSES) + ".", "", *_machines_line(rows)]
    for exp in sorted({r.experiment for r in rows}):
        lines += [f"## {exp}", "", "| run | status | layers with other kept groups | largest difference | time ratio |",
                  "|---|---|---|---|---|"]
        for r in sorted((r for r in rows if r.experiment == exp), key=lambda r: r.label):
            sel = f"{r.layers_differing}/{r.layers}" if r.layers else "—"
            detail = "; ".join(r.failures[:3]) if r.failures else (r.worst or "identical")
            ratio = f"{r.time_ratio:.2f}" if r.time_ratio else "—"
            lines.append(f"| {r.label} `{r.key}` | {r.status} | {sel} | {detail} | {ratio} |")
        lines.append("")
    return "\n".join(lines)


def update_reference(new_root: str | Path, ref_root: str | Path, experiments: Iterable[str] | None = None) -> int:
    """Make the reference store equal to the new one (per experiment folder); returns records copied."""
    new, ref = ResultStore(new_root), ResultStore(ref_root)
    n = 0
    for exp in experiments or new.experiments():
        target = ref.root / exp
        if target.is_dir():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        for record in new.records(exp):
            ref.put(record)
            n += 1
    return n


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.compare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("new", help="store of the fresh run (e.g. runs/reproduce/records)")
    p.add_argument("reference", help="store of the reference records (e.g. results/records)")
    p.add_argument("--out", help="write the Markdown table here too")
    p.add_argument("--experiments", help="comma-separated experiment names: compare only these (default: all in "
                   "either store)")
    p.add_argument("--update-reference", action="store_true",
                   help="after comparing, replace the reference experiments with the new records")
    args = p.parse_args(argv)
    for flag, path in (("new", args.new), ("reference", args.reference)):
        if not Path(path).is_dir():
            print(f"error: {flag} store {path!r} is not a folder", file=sys.stderr)
            return 2
    experiments = [e for e in args.experiments.split(",") if e] if args.experiments else None
    rows = compare_stores(args.new, args.reference, experiments)
    text = format_report(rows, args.new, args.reference)
    print(text)
    if args.out:
        from osscar.io import atomic_write_text

        atomic_write_text(args.out, text + "\n")
        print(f"written: {args.out}")
    failed = [r for r in rows if r.failed]
    if args.update_reference:
        n = update_reference(args.new, args.reference, experiments)
        print(f"reference updated: {n} record(s) copied into {args.reference}")
        return 0
    if failed:
        print(f"error: {len(failed)} run(s) did not reproduce (DRIFTED or missing); see the table above",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
