"""Ablation tables of the paper: calibration size (lm and vision) and OSSCAR's t̂/p̂ grid."""

from __future__ import annotations

from typing import Any

import pandas as pd

from reports.records import describe, frame
from reports.table import HIGHER, LOWER, Table, binomial_margin, relative_margin
from reports.tables_common import (BINOMIAL_NOTE, TIME_NOISE, TIME_NOTE, config_groups, dedupe, eval_n, fixture_note,
                                   method_labels, present_cols, provenance_caption, slug)

def calibration_tables(records, experiment: str = "ablation_calibration") -> list[Table]:
    """Calibration-size ablation: rows = method (× target), columns = calibration size."""
    tables = []
    lm = frame(records, experiment, "lm")
    if not lm.empty:
        for g, sub in config_groups(lm, ["model", "calib_corpus", "seqlen"]):
            sub = sub.assign(method_label=method_labels(sub))
            sub, notes = dedupe(sub, ["target", "method_label", "n_samples"])
            for c in [c.split(":", 1)[1] for c in present_cols(sub, "ppl:")]:
                sizes = sorted(sub["n_samples"].dropna().unique())
                pv = sub.pivot_table(index=["target", "method_label"], columns="n_samples", values=f"ppl:{c}",
                                     aggfunc="last", dropna=False).reindex(columns=sizes)
                vcols = [f"n={int(s)}" for s in sizes]
                data = pd.DataFrame({"target": [i[0] for i in pv.index], "method": [i[1] for i in pv.index],
                                     **{v: pv[s].to_numpy() for v, s in zip(vcols, sizes)}})
                tables.append(Table(
                    name=slug("ablation_calibration", g["model"], c), title=f"Calibration size — {g['model']}, {c}",
                    caption=(f"Perplexity on {c} vs the number of calibration segments n "
                             f"({describe(sub['seqlen'])} tokens each, from {describe(sub['calib_corpus'])}). "
                             + provenance_caption(sub, "lm")),
                    data=data, label_cols=["target", "method"], value_cols=vcols,
                    directions={v: LOWER for v in vcols}, formats={v: ".2f" for v in vcols}, group_by=["target"],
                    notes=fixture_note(sub) + notes))
    vis = frame(records, experiment, "vision")
    if not vis.empty:
        for g, sub in config_groups(vis, ["arch", "dataset", "checkpoint"]):
            sub = sub.assign(method_label=method_labels(sub))
            sub, notes = dedupe(sub, ["flops_fraction", "method_label", "n_calib"])
            sizes = sorted(sub["n_calib"].dropna().unique())
            pv = sub.pivot_table(index=["flops_fraction", "method_label"], columns="n_calib", values="top1",
                                 aggfunc="last", dropna=False).reindex(columns=sizes)
            vcols = [f"n={int(s)}" for s in sizes]
            data = pd.DataFrame({"target": [f"FLOPs −{i[0]:.0%}" for i in pv.index],
                                 "method": [i[1] for i in pv.index],
                                 **{v: 100 * pv[s].to_numpy() for v, s in zip(vcols, sizes)}})
            tables.append(Table(
                name=slug("ablation_calibration", g["arch"], g["dataset"]),
                title=f"Calibration size — {g['arch']} on {g['dataset']}",
                caption=("Top-1 accuracy (%) vs the number of calibration images n. "
                         + provenance_caption(sub, "vision")),
                data=data, label_cols=["target", "method"], value_cols=vcols,
                directions={v: HIGHER for v in vcols}, formats={v: ".2f" for v in vcols}, group_by=["target"],
                notes=fixture_note(sub) + notes, margins={v: binomial_margin(eval_n(sub)) for v in vcols},
                margin_note=BINOMIAL_NOTE.format(n=eval_n(sub))))
    return tables


def tp_frame(records, experiment: str) -> list[tuple[str, pd.DataFrame]]:
    out = []
    for pipeline in ("lm", "vision", "solver"):
        df = frame(records, experiment, pipeline)
        if not df.empty:
            out.append((pipeline, df[df["p_hat"].notna() | df["t_hat"].notna()]))
    return out


TP_METRICS = {  # pipeline -> [(column, label, direction, scale, fmt)]
    "lm": [("ppl:*", "perplexity", LOWER, 1.0, ".2f"), ("prune_seconds", "prune time [s]", LOWER, 1.0, ".3g")],
    "vision": [("top1", "top-1 (%)", HIGHER, 100.0, ".2f"), ("prune_seconds", "prune time [s]", LOWER, 1.0, ".3g")],
    "solver": [("objective", "objective", LOWER, 1.0, ".6g"), ("prune_seconds", "prune time [s]", LOWER, 1.0, ".3g")],
}


def tp_margin(column: str, sub: pd.DataFrame) -> tuple[Any, str]:
    if column == "top1":
        return binomial_margin(eval_n(sub)), BINOMIAL_NOTE.format(n=eval_n(sub))
    if column == "prune_seconds":
        return relative_margin(TIME_NOISE), TIME_NOTE
    if column == "objective":
        return relative_margin(1e-9), "objectives: 1e-9 relative (equal solutions tie)"
    return None, ""


def tp_tables(records, experiment: str = "ablation_tp") -> list[Table]:
    """t̂/p̂ grid: rows = p̂, columns = t̂, one table per metric; the best cell of the grid in bold."""
    tables = []
    for pipeline, df in tp_frame(records, experiment):
        if df.empty:
            continue
        keys = {"lm": ["model", "calib_corpus", "n_samples", "target"], "vision": ["arch", "dataset", "n_calib",
                                                                                  "flops_fraction"],
                "solver": ["shape", "keep"]}[pipeline]
        for g, sub in config_groups(df, keys):
            sub, notes = dedupe(sub, ["p_hat", "t_hat"])
            metrics = []
            for col, label, d, scale, fmt in TP_METRICS[pipeline]:
                cols = present_cols(sub, col[:-1]) if col.endswith("*") else [col]
                for c in cols:
                    if c in sub and sub[c].notna().any():
                        metrics.append((c, f"{label} on {c.split(':', 1)[1]}" if ":" in c else label, d, scale, fmt))
            what = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in g.items())
            for c, label, d, scale, fmt in metrics:
                margin, note = tp_margin(c, sub)
                pv = sub.pivot_table(index="p_hat", columns="t_hat", values=c, aggfunc="last", dropna=False)
                pv = pv.sort_index().sort_index(axis=1)
                vcols = [f"t̂={t:g}" for t in pv.columns]
                data = pd.DataFrame({"p̂": [f"{p:g}" for p in pv.index],
                                     **{v: scale * pv[t].to_numpy() for v, t in zip(vcols, pv.columns)}})
                tables.append(Table(
                    name=slug("ablation_tp", pipeline, *g.values(), c.replace("ppl:", "ppl-")),
                    title=f"t̂/p̂ ablation — {label} ({what})",
                    caption=(f"OSSCAR {label} over its p̂ (groups removed per stage-A step, rows) and t̂ (groups "
                             f"changed per local-search step, columns). {provenance_caption(sub, pipeline)}"),
                    data=data, label_cols=["p̂"], value_cols=vcols, directions={v: d for v in vcols},
                    formats={v: fmt for v in vcols}, scope="table", notes=fixture_note(sub) + notes,
                    margins={v: margin for v in vcols}, margin_note=note))
    return tables
