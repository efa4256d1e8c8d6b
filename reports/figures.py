"""The paper's figures from records: PNG + PDF, drawn in :func:`reports.plotting.publication_style`.

Every figure carries a title naming the model (or the problem) and a subtitle naming the
calibration corpus / size it came from; the :class:`Figure` caption repeats it for the report.
Close methods get a panel of their own: perplexity relative to ZipLM with the paired 95% range
(per-window NLLs), accuracy zoomed to the methods near the dense model with binomial 95% error
bars; points that would coincide are offset slightly along x; where a configuration has several
seeds, the line is their mean and the bar their range.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from reports.plotting import (Figure, figure_legend, fixture_tag, jitter, log_axis, marker_style, method_style,
                              methods_of, publication_style, save, subplots, titles)
from reports.records import describe, frame
from reports.figures_ablation import lm_calibration_figures, lm_damping_figures
from reports.figures_claim import allocation_width_figures, claim_figures
from reports.figures_grid import calibration_curves, tp_heatmaps
from reports.paired import paired_ratios
from reports.tables_common import method_labels, slug

REFERENCE_METHOD = "ziplm"
CLOSE_RATIO = 3.0       # methods within this perplexity ratio of the reference get the ratio panel
CLOSE_POINTS = 10.0     # methods within this many accuracy points of dense get the zoomed panel


def _method_lines(ax: Any, sub: pd.DataFrame, x: str, y: str, scale: float = 1.0,
                  dense: pd.Series | None = None, offsets: dict[str, float] | None = None,
                  yerr: Any = None, only: list[str] | None = None) -> None:
    """One line per method of ``sub`` (``y`` against ``x``, times ``scale``): the mean over the
    records at each x (seeds), with their range as an error bar when there are several, or
    ``yerr(row) -> half-width`` when given; the latest dense value as a dashed line."""
    for m in only or methods_of(sub):
        d = sub[(sub["method_label"] == m) & sub[y].notna() & sub[x].notna()]
        if d.empty:
            continue
        g = d.groupby(x)[y]
        mean, lo, hi, n = g.mean(), g.min(), g.max(), g.size()
        xs = scale * mean.index.to_numpy(dtype=float) + (offsets or {}).get(m, 0.0)
        ys = scale * mean.to_numpy(dtype=float)
        err = None
        if (n > 1).any():
            err = np.vstack([ys - scale * lo.to_numpy(), scale * hi.to_numpy() - ys])
        elif yerr is not None:
            err = np.array([scale * yerr(v) for v in mean.to_numpy(dtype=float)])
        style = method_style(m)
        ax.plot(xs, ys, label=m, **style)
        if err is not None:
            ax.errorbar(xs, ys, yerr=err, fmt="none", ecolor=style["color"], elinewidth=1, capsize=2.5)
    if dense is not None and dense.notna().any():
        ax.axhline(scale * dense.dropna().iloc[-1], color="k", ls="--", lw=1, label="dense")


def _paired_ratios(sub: pd.DataFrame, corpus: str) -> pd.DataFrame:
    """:func:`reports.paired.paired_ratios` with each row's x (target speedup); the reference keeps its own name."""
    pr = paired_ratios(sub, corpus, REFERENCE_METHOD)
    if pr.empty:
        return pr
    pr["method_label"] = pr["method_label"].where(~pr["is_reference"], REFERENCE_METHOD)
    return pr.assign(x=sub.loc[pr["src"], "x"].to_numpy())


def ppl_vs_speedup(records, out: Path, experiment: str = "lm_perplexity") -> list[Figure]:
    """Per model and eval corpus: perplexity (log y) vs target speedup, one line per method; beside it,
    the methods close to ZipLM as their paired perplexity ratio to ZipLM with its 95% range."""
    df = frame(records, experiment, "lm")
    figs: list[Figure] = []
    if df.empty:
        return figs
    df = df.assign(method_label=method_labels(df))
    df["x"] = df["speedup_target"].fillna(df["block_flops_speedup"])
    for (model, calib, n, seqlen), sub in df.groupby(["model", "calib_corpus", "n_samples", "seqlen"], dropna=False):
        sub = sub.drop_duplicates(["target", "method_label", "seed"], keep="last")
        corpora = [c.split(":", 1)[1] for c in sub.columns if c.startswith("ppl:") and sub[c].notna().any()]
        if not corpora or sub["x"].notna().sum() == 0:
            continue
        span = float(sub["x"].max() - sub["x"].min()) or 1.0
        offsets = jitter(methods_of(sub), 0.04 * span)
        ratios = {c: _paired_ratios(sub, c) for c in corpora}
        with publication_style():
            ncols = 1 + any(not r.empty for r in ratios.values())
            fig, axes = subplots(len(corpora), ncols, figsize=(3.5 * ncols, 2.9 * len(corpora)), squeeze=False)
            far: set[str] = set()
            for row, c in zip(axes, corpora):
                ax = row[0]
                _method_lines(ax, sub, "x", f"ppl:{c}", dense=sub.get(f"dense_ppl:{c}"), offsets=offsets)
                log_axis(ax, "y")
                ax.set_xlabel("target speedup (block FLOPs, ×)")
                ax.set_ylabel(f"perplexity on {c} (log)")
                ax.set_title(f"{c}: all methods")
                r = ratios[c]
                if ncols == 2 and not r.empty:
                    ax = row[1]
                    worst = r.groupby("method_label")["ratio"].max()
                    close = [m for m in methods_of(r) if worst[m] <= CLOSE_RATIO]
                    far |= {m for m in methods_of(r) if worst[m] > CLOSE_RATIO}
                    for m in close:
                        d = r[r["method_label"] == m].sort_values("x")
                        xs = d["x"].to_numpy(dtype=float) + offsets.get(m, 0.0)
                        st = method_style(m)
                        ax.plot(xs, d["ratio"], label=m, **st)
                        if m != REFERENCE_METHOD:
                            ax.errorbar(xs, d["ratio"], yerr=np.vstack([d["ratio"] - d["lo"], d["hi"] - d["ratio"]]),
                                        fmt="none", ecolor=st["color"], elinewidth=1, capsize=3)
                    ax.axhline(1.0, color="0.4", lw=0.8)
                    ax.set_xlabel("target speedup (block FLOPs, ×)")
                    ax.set_ylabel(f"ppl / ppl({REFERENCE_METHOD}), same windows")
                    ax.set_title(f"{c}: close to {REFERENCE_METHOD} (paired 95%)")
            figure_legend(fig, [a for row in axes for a in row])
            title = f"Perplexity vs speedup — {model}{fixture_tag(sub)}"
            sub_t = f"calibration: {calib}, {n} × {seqlen} tokens; eval windows: {describe(sub['eval_windows'])}"
            titles(fig, title, sub_t)
            name = slug("ppl_vs_speedup", model, calib, n)
            paths = save(fig, out, name)
        note = (f" Right: ratio to {REFERENCE_METHOD} on identical windows with its paired 95% range (a bar that "
                f"crosses 1 cannot tell the two apart); {', '.join(sorted(far))} (ratio > {CLOSE_RATIO:g}) only on "
                "the left." if far else "")
        figs.append(Figure(name, title, f"{title}. {sub_t}. Dashed: dense model. Lower is better. Markers are "
                           f"offset slightly along x so that coinciding points stay visible.{note}", paths))
    return figs


def accuracy_vs_flops(records, out: Path, experiment: str = "vision_accuracy") -> list[Figure]:
    """Per vision model: top-1 (%) vs the fraction of FLOPs removed, every method (left) and, zoomed,
    the methods within CLOSE_POINTS of dense with binomial 95% error bars (right)."""
    df = frame(records, experiment, "vision")
    figs: list[Figure] = []
    if df.empty:
        return figs
    df = df.assign(method_label=method_labels(df))
    for (arch, ds, ckpt, n), sub in df.groupby(["arch", "dataset", "checkpoint", "n_calib"], dropna=False):
        sub = sub.drop_duplicates(["flops_fraction", "method_label", "seed"], keep="last")
        if sub["top1"].notna().sum() == 0:
            continue
        n_eval = float(pd.to_numeric(sub["eval_n"], errors="coerce").min() or 0)
        dense = sub["dense_top1"].dropna()
        low = sub.groupby("method_label")["top1"].min()
        close = [m for m in methods_of(sub) if len(dense) and 100 * (dense.iloc[-1] - low[m]) <= CLOSE_POINTS]
        offsets = jitter(methods_of(sub), 2.0)
        with publication_style():
            fig, axes = subplots(1, 2 if close else 1, figsize=(7.6 if close else 4.2, 3.1), squeeze=False)
            ax = axes[0][0]
            _method_lines(ax, sub, "flops_fraction", "top1", scale=100, dense=sub["dense_top1"], offsets=offsets)
            ax.set_xticks(100 * np.array(sorted(sub["flops_fraction"].dropna().unique())))
            ax.set_xlabel("FLOPs removed (target, %)")
            ax.set_ylabel("top-1 accuracy (%)")
            ax.set_title("all methods")
            if close:
                ax = axes[0][1]
                half = (lambda p, n=n_eval: 1.96 * math.sqrt(max(p * (1 - p), 0) / n)) if n_eval else None
                _method_lines(ax, sub, "flops_fraction", "top1", scale=100, dense=sub["dense_top1"],
                              offsets=offsets, yerr=half, only=close)
                vals = 100 * sub[sub["method_label"].isin(close)]["top1"]
                ax.set_ylim(vals.min() - 1.0, 100 * dense.iloc[-1] + 0.6)
                ax.set_xticks(100 * np.array(sorted(sub["flops_fraction"].dropna().unique())))
                ax.set_xlabel("FLOPs removed (target, %)")
                ax.set_title(f"within {CLOSE_POINTS:g} points of dense (95% binomial bars)")
            figure_legend(fig, list(axes[0]))
            title = f"Accuracy vs FLOPs removed — {arch} on {ds}{fixture_tag(sub)}"
            sub_t = f"checkpoint: {ckpt}; calibration: {n} training images; {n_eval:g} test images; no fine-tuning"
            titles(fig, title, sub_t)
            name = slug("accuracy_vs_flops", arch, ds, n)
            paths = save(fig, out, name)
        figs.append(Figure(name, title, f"{title}. {sub_t}. Dashed: dense checkpoint. Higher is better. Markers "
                           "are offset slightly along x so that coinciding points stay visible.", paths))
    return figs


def speedup_scatter(records, out: Path) -> list[Figure]:
    """Measured vs FLOPs speedup of every lm / vision run (not ablations), one panel per model, y = x dashed."""
    frames = []
    for exp in sorted({r.experiment for r in records if r.pipeline in ("lm", "vision")
                       and not r.experiment.startswith("ablation")}):
        for pipeline in ("lm", "vision"):
            d = frame(records, exp, pipeline)
            if not d.empty and "latency_speedup" in d:
                frames.append(d.assign(method_label=method_labels(d)))
    if not frames:
        return []
    df = pd.concat(frames, ignore_index=True)
    df = df[df["latency_speedup"].notna() & df["flops_speedup"].notna()]
    if df.empty:
        return []
    models = list(dict.fromkeys(df["model"]))
    with publication_style():
        fig, axes = subplots(1, len(models), figsize=(3.6 * len(models), 3.4), squeeze=False)
        for ax, model in zip(axes[0], models):
            d_model = df[df["model"] == model]
            lo = min(1.0, d_model["flops_speedup"].min(), d_model["latency_speedup"].min())
            hi = max(d_model["flops_speedup"].max(), d_model["latency_speedup"].max()) * 1.06
            offsets = jitter(methods_of(d_model), 0.05 * (hi - lo))
            for m in methods_of(d_model):
                d = d_model[d_model["method_label"] == m]
                st = marker_style(m)
                ax.plot(d["flops_speedup"] + offsets[m], d["latency_speedup"], ls="none", label=m, **st)
            ax.plot([lo, hi], [lo, hi], color="k", ls="--", lw=1, label="y = x")
            ax.set_xlim(lo, hi)
            ax.set_ylim(lo, hi)
            ax.set_xlabel("FLOPs speedup (dense / pruned FLOPs, ×)")
            ax.set_ylabel("measured speedup (×)")
            ax.set_title(f"{model}\n{describe(d_model['device'])}", fontsize=8.5)
        figure_legend(fig, list(axes[0]))
        title = f"Measured vs FLOPs speedup{fixture_tag(df)}"
        sub_t = f"models: {', '.join(models)}"
        titles(fig, title, sub_t)
        paths = save(fig, out, "speedup_scatter")
    lat = describe(df["latency_point"].replace("", np.nan))
    return [Figure("speedup_scatter", title,
                   f"{title}. {sub_t}. Latency: {lat}. lm FLOPs = total per token incl. LM head; vision = MACs. "
                   "Points below y = x: the measured gain falls short of the FLOPs gain. Methods at the same "
                   "FLOPs are offset slightly along x.", paths)]


def runtime_bars(records, out: Path, experiment: str = "pruning_runtime") -> list[Figure]:
    """Solver seconds per shape (log y), one bar per method plus one p×p inverse (hatched)."""
    df = frame(records, experiment, "solver")
    if df.empty or df["prune_seconds"].notna().sum() == 0:
        return []
    df = df.assign(method_label=method_labels(df)).drop_duplicates(["shape", "keep", "method_label"], keep="last")
    shapes = list(df.sort_values("p", kind="stable")["shape"].drop_duplicates())
    methods = methods_of(df)
    bars = methods + ["one p×p inverse"]
    width = 0.8 / len(bars)
    with publication_style():
        fig, ax = subplots(figsize=(max(4.5, 1.3 * len(shapes) + 1.5), 3.0))
        x = np.arange(len(shapes))
        for i, b in enumerate(bars):
            if b == bars[-1]:
                vals = [df.loc[df["shape"] == s, "inverse_seconds"].median() for s in shapes]
                kw = {"color": "0.8", "hatch": "///", "edgecolor": "0.4"}
            else:
                vals = [df.loc[(df["shape"] == s) & (df["method_label"] == b), "prune_seconds"].median()
                        for s in shapes]
                kw = {"color": method_style(b)["color"]}
            ax.bar(x + (i - (len(bars) - 1) / 2) * width, vals, width, label=b, **kw)
        log_axis(ax, "y")
        ax.set_xticks(x)
        ax.set_xticklabels([f"{s}\n(p={int(df.loc[df['shape'] == s, 'p'].iloc[0])})" for s in shapes])
        ax.set_ylabel("wall time (s, log)")
        ax.set_xlabel("layer shape")
        ax.grid(axis="x", visible=False)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
        title = f"Solver runtime per layer shape{fixture_tag(df)}"
        sub_t = (f"{describe(df['problem'])} OPT-shaped problems, keep {describe(df['keep'])}; "
                 f"{describe(df['threads'])} thread(s); {describe(df['device'])}")
        titles(fig, title, sub_t)
        paths = save(fig, out, "runtime_bars")
    return [Figure("runtime_bars", title, f"{title}. {sub_t}. Lower is better.", paths)]


BUILDERS = {
    "lm_perplexity": ppl_vs_speedup,
    "vision_accuracy": accuracy_vs_flops,
    "pruning_runtime": runtime_bars,
    "ablation_calibration": calibration_curves,
    "ablation_tp": tp_heatmaps,
    "speedup": speedup_scatter,
    "lm_calibration": lm_calibration_figures,
    "lm_damping": lm_damping_figures,
    "claim": claim_figures,
    "allocation_global": allocation_width_figures,
}


def all_figures(records, out: str | Path) -> dict[str, list[Figure]]:
    """Section name → its figures (written under ``out``), in report order."""
    out = Path(out)
    return {name: build(records, out) for name, build in BUILDERS.items()}
