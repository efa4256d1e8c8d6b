"""Figures of the calibration-size and t̂/p̂ ablations: metric vs calibration size, heatmaps over (p̂, t̂)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.patches import Rectangle

from reports.plotting import (Figure, figure_legend, fixture_tag, log_axis, method_style,
                              publication_style, save, subplots, titles)
from reports.records import describe, frame
from reports.table import clear_best
from reports.tables_ablation import tp_frame, tp_margin
from reports.tables_common import method_labels, method_rank, slug


def calibration_curves(records, out: Path, experiment: str = "ablation_calibration") -> list[Figure]:
    """Metric vs calibration size (log2 x): lm perplexity per corpus, vision top-1."""
    figs: list[Figure] = []
    lm = frame(records, experiment, "lm")
    if not lm.empty:
        lm = lm.assign(method_label=method_labels(lm))
        for (model, calib, seqlen), sub in lm.groupby(["model", "calib_corpus", "seqlen"], dropna=False):
            sub = sub.drop_duplicates(["target", "method_label", "n_samples"], keep="last")
            corpora = [c.split(":", 1)[1] for c in sub.columns if c.startswith("ppl:") and sub[c].notna().any()]
            if not corpora:
                continue
            multi_target = sub["target"].nunique() > 1
            with publication_style():
                fig, axes = subplots(1, len(corpora), figsize=(3.3 * len(corpora), 2.8), squeeze=False)
                axes = list(axes[0])
                for ax, c in zip(axes, corpora):
                    groups = sorted(sub.groupby(["method_label", "target"]), key=lambda kv: method_rank(kv[0][0]))
                    for (m, t), d in groups:
                        d = d[d[f"ppl:{c}"].notna()].sort_values("n_samples")
                        lab = f"{m} @ {t}" if multi_target else m
                        ax.plot(d["n_samples"], d[f"ppl:{c}"], label=lab, **method_style(m))
                    log_axis(ax, "x", base=2)
                    log_axis(ax, "y")
                    ax.set_xlabel(f"calibration segments ({seqlen} tokens each, log₂)")
                    ax.set_ylabel(f"perplexity on {c} (log)")
                    ax.set_title(c)
                figure_legend(fig, axes)
                title = f"Calibration size — {model}{fixture_tag(sub)}"
                sub_t = f"calibration corpus: {calib}; target: {describe(sub['target'])}"
                titles(fig, title, sub_t)
                name = slug("calibration", model, calib)
                paths = save(fig, out, name)
            figs.append(Figure(name, title, f"{title}. {sub_t}. Lower is better.", paths))
    vis = frame(records, experiment, "vision")
    if not vis.empty:
        vis = vis.assign(method_label=method_labels(vis))
        for (arch, ds, ckpt), sub in vis.groupby(["arch", "dataset", "checkpoint"], dropna=False):
            sub = sub.drop_duplicates(["flops_fraction", "method_label", "n_calib"], keep="last")
            if sub["top1"].notna().sum() == 0:
                continue
            multi = sub["flops_fraction"].nunique() > 1
            with publication_style():
                fig, ax = subplots(figsize=(4.2, 3.0))
                for (m, f), d in sorted(sub.groupby(["method_label", "flops_fraction"]),
                                        key=lambda kv: method_rank(kv[0][0])):
                    d = d[d["top1"].notna()].sort_values("n_calib")
                    st = method_style(m)
                    ax.plot(d["n_calib"], 100 * d["top1"], label=f"{m} @ −{f:.0%} FLOPs" if multi else m, **st)
                    n_eval = pd.to_numeric(d["eval_n"], errors="coerce").to_numpy(dtype=float)
                    p = d["top1"].to_numpy(dtype=float)
                    ax.errorbar(d["n_calib"], 100 * p, yerr=100 * 1.96 * np.sqrt(p * (1 - p) / n_eval), fmt="none",
                                ecolor=st["color"], elinewidth=1, capsize=2.5)
                log_axis(ax, "x", base=2)
                ax.set_xlabel("calibration images (log₂)")
                ax.set_ylabel("top-1 accuracy (%)")
                ax.legend(loc="lower right")
                title = f"Calibration size — {arch} on {ds}{fixture_tag(sub)}"
                sub_t = f"checkpoint: {ckpt}; FLOPs removed: {describe(100 * sub['flops_fraction'])} %"
                titles(fig, title, sub_t)
                name = slug("calibration", arch, ds)
                paths = save(fig, out, name)
            figs.append(Figure(name, title, f"{title}. {sub_t}. Higher is better. Bars: 95% binomial range of "
                               "each accuracy on the test set.", paths))
    return figs


def tp_heatmaps(records, out: Path, experiment: str = "ablation_tp") -> list[Figure]:
    """Per t̂/p̂ group: heatmaps of the quality metric and of prune time over (p̂, t̂); best cell boxed."""
    figs: list[Figure] = []
    for pipeline, df in tp_frame(records, experiment):
        if df.empty:
            continue
        if pipeline == "lm":
            keys, ctx = ["model", "calib_corpus", "n_samples", "target"], lambda g: (
                f"{g[0]}", f"calibration: {g[1]}, {g[2]} segments; target {g[3]}")
            qual = [(c, f"perplexity on {c.split(':', 1)[1]}", "min", 1.0)
                    for c in df.columns if c.startswith("ppl:") and df[c].notna().any()][:1]
        elif pipeline == "vision":
            keys, ctx = ["arch", "dataset", "n_calib", "flops_fraction"], lambda g: (
                f"{g[0]} on {g[1]}", f"calibration: {g[2]} images; FLOPs removed {g[3]:.0%}")
            qual = [("top1", "top-1 accuracy (%)", "max", 100.0)]
        else:
            keys, ctx = ["shape", "keep"], lambda g: (f"layer {g[0]}", f"keep {g[1]:g}; synthetic problem")
            qual = [("objective", "objective Q", "min", 1.0)]
        panels = qual + [("prune_seconds", "prune time (s)", "min", 1.0)]
        for g, sub in df.groupby(keys, dropna=False):
            sub = sub.drop_duplicates(["p_hat", "t_hat"], keep="last")
            use = [p for p in panels if p[0] in sub and sub[p[0]].notna().any()]
            if not use:
                continue
            what, sub_t = ctx(g if isinstance(g, tuple) else (g,))
            with publication_style():
                fig, axes = subplots(1, len(use), figsize=(3.4 * len(use), 3.0), squeeze=False)
                for ax, (col, label, direction, scale) in zip(axes[0], use):
                    pv = sub.pivot_table(index="p_hat", columns="t_hat", values=col, aggfunc="last", dropna=False)
                    pv = pv.sort_index().sort_index(axis=1) * scale
                    vals = pv.to_numpy(dtype=float)
                    # colormap oriented so that better is always the darker end
                    cmap = "viridis" if direction == "min" else "viridis_r"
                    im = ax.imshow(vals, cmap=cmap, aspect="auto", origin="lower")
                    ax.set_xticks(range(pv.shape[1]), [f"{t:g}" for t in pv.columns])
                    ax.set_yticks(range(pv.shape[0]), [f"{p:g}" for p in pv.index])
                    ax.set_xlabel("t̂ (groups swapped per local-search step)")
                    ax.set_ylabel("p̂ (groups removed per step)")
                    ax.grid(False)
                    # boxed only when it beats the runner-up by more than its noise (as bold in the tables)
                    margin, _ = tp_margin(col, sub)  # top-1 in %: the binomial margin is in % too
                    flat = clear_best(vals.ravel(), "min" if direction == "min" else "max", margin)
                    best = {(int(i), int(j)) for i, j in zip(*np.unravel_index(np.flatnonzero(flat), vals.shape))}
                    lo, hi = np.nanmin(vals), np.nanmax(vals)
                    for (i, j), v in np.ndenumerate(vals):
                        if math.isfinite(v):
                            dark = (v - lo) / (hi - lo + 1e-300) < 0.5 if direction == "min" else \
                                (v - lo) / (hi - lo + 1e-300) > 0.5
                            ax.text(j, i, f"{v:.3g}", ha="center", va="center", fontsize=7.5,
                                    color="white" if dark else "black",
                                    fontweight="bold" if (i, j) in best else "normal")
                    for i, j in best:
                        ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="red", lw=2))
                    fig.colorbar(im, ax=ax, shrink=0.85)
                    ax.set_title(f"{label}\n({'lower' if direction == 'min' else 'higher'} is better; "
                                 "clear best boxed)")
                title = f"t̂/p̂ ablation (OSSCAR) — {what}{fixture_tag(sub)}"
                titles(fig, title, sub_t)
                name = slug("tp_heatmap", pipeline, *[f"{v:g}" if isinstance(v, float) else v for v in
                                                       (g if isinstance(g, tuple) else (g,))])
                paths = save(fig, out, name)
            figs.append(Figure(name, title, f"{title}. {sub_t}. The best cell is boxed in red only when it beats "
                               "the runner-up by more than its noise (binomial 95% for accuracy, 30% for times).",
                               paths))
    return figs
