"""Time tables: solver runtime per layer shape, and measured vs FLOPs speedup of the sliced models."""

from __future__ import annotations

import numpy as np
import pandas as pd

from reports.records import describe, frame
from reports.table import HIGHER, LOWER, Table, relative_margin
from reports.tables_common import (SPEEDUP_NOISE, TIME_NOISE, TIME_NOTE, dedupe, fixture_note, method_labels,
                                   method_sorted)

def runtime_tables(records, experiment: str = "pruning_runtime") -> list[Table]:
    """Rows = shape × method; prune seconds ↓, objective ↓, ratio to one p×p inverse, ZipLM / method time."""
    df = frame(records, experiment, "solver")
    if df.empty:
        return []
    df = df.assign(method_label=method_labels(df))
    df, notes = dedupe(df, ["shape", "keep", "seed", "threads", "method_label"])
    rows = []
    for (shape, _keep), sub in df.groupby(["shape", "keep"], sort=False):
        zip_s = sub.loc[sub["method"] == "ziplm", "prune_seconds"]
        zip_s = zip_s.iloc[-1] if len(zip_s) else np.nan
        inv = sub["inverse_seconds"].median()
        r0 = sub.iloc[0]
        for _, r in method_sorted(sub, []).iterrows():
            rows.append({"shape": f"{shape} (p={r0['p']}, m={r0['m']}, k={r0['k']}/{r0['n_groups']})",
                         "method": r["method_label"], "prune [s]": r["prune_seconds"], "objective": r["objective"],
                         "gap to dense [%]": (100 * (r["objective"] - r["dense_objective"]) / abs(r["dense_objective"])
                                              if r["dense_objective"] else np.nan),
                         "× one inverse": r["prune_seconds"] / inv if inv else np.nan,
                         "ZipLM time / this": zip_s / r["prune_seconds"] if r["prune_seconds"] else np.nan,
                         "one inverse [s]": inv, "_p": r0["p"]})
    data = pd.DataFrame(rows).sort_values(["_p", "shape"], kind="stable")
    vcols = ["prune [s]", "objective", "gap to dense [%]", "× one inverse", "ZipLM time / this", "one inverse [s]"]
    spd = data[data["method"].str.startswith("osscar")]["ZipLM time / this"].dropna()
    if len(spd):
        notes.append(f"OSSCAR's speedup over ZipLM across shapes: {spd.min():.2f}×–{spd.max():.2f}× "
                     "(paper claims 6–8× on OPT layers, V100).")
    return [Table(
        name="pruning_runtime", title="Solver runtime and objective per layer shape",
        caption=(f"One method on one {describe(df['problem'])} OPT-shaped layer problem (seeded): solver wall time; "
                 "objective Q(W) = ½ tr(WᵀHW) − tr(GᵀW), the reconstruction error up to a constant, and its gap "
                 "to the unpruned optimum in % of |Q_dense|; time in units of one p×p float64 Cholesky inverse; "
                 "ZipLM's time divided by the method's. Keep fraction "
                 f"{describe(df['keep'])}, threads {describe(df['threads'])}, device {describe(df['device'])}."),
        data=data, label_cols=["shape", "method"], value_cols=vcols,
        directions={"prune [s]": LOWER, "objective": LOWER, "gap to dense [%]": LOWER, "× one inverse": LOWER},
        formats={"prune [s]": ".3g", "objective": ".6g", "gap to dense [%]": ".3f", "× one inverse": ".2f", "ZipLM time / this": ".2f",
                 "one inverse [s]": ".3g"},
        group_by=["shape"], notes=fixture_note(df) + notes,
        margins={"prune [s]": relative_margin(TIME_NOISE), "× one inverse": relative_margin(TIME_NOISE),
                 "objective": relative_margin(1e-9), "gap to dense [%]": relative_margin(1e-6)},
        margin_note=f"{TIME_NOTE}; objectives: 1e-9 relative (equal solutions tie)")]



def speedup_table(records) -> list[Table]:
    """Every lm / vision run with both a FLOPs speedup and a measured one: the measured vs FLOPs check."""
    rows = []
    for exp in sorted({r.experiment for r in records if r.pipeline in ("lm", "vision")
                       and not r.experiment.startswith("ablation")}):
        for pipeline in ("lm", "vision"):
            df = frame(records, exp, pipeline)
            if df.empty or "latency_speedup" not in df:
                continue
            df = df.assign(method_label=method_labels(df))
            for _, r in df.iterrows():
                target = r["target"] if pipeline == "lm" else f"FLOPs −{r['flops_fraction']:.0%}"
                rows.append({"experiment": exp, "model": r["model"], "target": target, "method": r["method_label"],
                             "FLOPs speedup": r.get("flops_speedup"), "measured speedup": r.get("latency_speedup"),
                             "measured / FLOPs": (r.get("latency_speedup") / r.get("flops_speedup")
                                                  if pd.notna(r.get("latency_speedup")) and r.get("flops_speedup")
                                                  else np.nan),
                             "latency point": r.get("latency_point") or "", "fixture": r.get("fixture", False),
                             "device": r.get("device")})
    data = pd.DataFrame(rows)
    if data.empty or data["measured speedup"].notna().sum() == 0:
        return []
    data = data[data["measured speedup"].notna()].reset_index(drop=True)
    vcols = ["FLOPs speedup", "measured speedup", "measured / FLOPs"]
    return [Table(
        name="speedup_measured_vs_flops", title="Measured vs FLOPs speedup",
        caption=("Speedup of the sliced model over the dense one: FLOPs model (lm: total FLOPs per token incl. the LM "
                 "head; vision: MACs) vs measured wall time (lm: prefill at the largest recorded point; vision: "
                 f"median batch forward). Devices: {describe(data['device'])}. Latency points: "
                 f"{describe(data['latency point'].replace('', np.nan))}."),
        data=data, label_cols=["experiment", "model", "target", "method"], value_cols=vcols,
        directions={"measured speedup": HIGHER}, formats={c: ".2f" for c in vcols}, group_by=["model", "target"],
        notes=fixture_note(data), margins={"measured speedup": relative_margin(SPEEDUP_NOISE)},
        margin_note=f"{SPEEDUP_NOISE:.0%} of the value, the spread of repeated latency medians")]
