"""Vision tables: top-1 accuracy of the sliced network vs the fraction of FLOPs removed."""

from __future__ import annotations

import pandas as pd

from reports.records import describe, frame
from reports.table import HIGHER, Table, binomial_margin
from reports.tables_common import (BINOMIAL_NOTE, config_groups, dedupe, eval_n, fixture_note, method_labels,
                                   method_rank, provenance_caption, slug)

def vision_accuracy_tables(records, experiment: str = "vision_accuracy") -> list[Table]:
    """Per (model, checkpoint, n_calib): rows = method (dense first), columns = FLOPs fraction removed; top-1 % ↑."""
    df = frame(records, experiment, "vision")
    tables = []
    if df.empty:
        return tables
    for g, sub in config_groups(df, ["arch", "dataset", "checkpoint", "n_calib"]):
        sub = sub.assign(method_label=method_labels(sub))
        sub, notes = dedupe(sub, ["flops_fraction", "method_label"])
        fracs = sorted(sub["flops_fraction"].dropna().unique())
        col = {f: f"FLOPs −{f:.0%}" for f in fracs}
        pivot = sub.pivot_table(index="method_label", columns="flops_fraction", values="top1", aggfunc="last",
                                dropna=False).reindex(columns=fracs)
        pivot = pivot.loc[sorted(pivot.index, key=method_rank)]
        data = pd.DataFrame({"method": pivot.index, **{col[f]: 100 * pivot[f].to_numpy() for f in fracs}})
        ref = [False] * len(data)
        dense = sub["dense_top1"].dropna()
        if len(dense):
            if dense.nunique() > 1:
                notes.append(f"dense top-1 differs between records ({describe(100 * dense.unique())} %); last shown.")
            data = pd.concat([pd.DataFrame({"method": ["dense"], **{col[f]: [100 * dense.iloc[-1]] for f in fracs}}),
                              data], ignore_index=True)
            ref = [True] + ref
        achieved = sub.groupby("flops_fraction")["flops_reduction"].agg(["min", "max"])
        if len(achieved):
            notes.append("Achieved FLOPs reduction per target: " + ", ".join(
                f"{f:.0%} → {achieved.loc[f, 'min']:.1%}" + (f"–{achieved.loc[f, 'max']:.1%}" if
                                                             achieved.loc[f, 'max'] != achieved.loc[f, 'min'] else "")
                for f in fracs
                if f in achieved.index and pd.notna(achieved.loc[f, 'min'])) + ".")
        missing = int(sub["top1"].isna().sum())
        if missing:
            notes.append(f"top-1 missing in {missing} record(s).")
        vcols = [col[f] for f in fracs]
        tables.append(Table(
            name=slug("vision_accuracy", g["arch"], g["dataset"], g["n_calib"]),
            title=f"Top-1 accuracy (%) vs FLOPs removed — {g['arch']} on {g['dataset']}",
            caption=("Top-1 test accuracy (%) of the sliced model, no fine-tuning, per method and target fraction "
                     "of FLOPs removed; dense = the unpruned checkpoint. " + provenance_caption(sub, "vision")),
            data=data, label_cols=["method"], value_cols=vcols, directions={c: HIGHER for c in vcols},
            formats={c: ".2f" for c in vcols}, reference=pd.Series(ref), notes=fixture_note(sub) + notes,
            margins={c: binomial_margin(eval_n(sub)) for c in vcols},
            margin_note=BINOMIAL_NOTE.format(n=eval_n(sub))))
    return tables
