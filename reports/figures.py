"""The paper's figures from records: PNG + PDF, one publication style set inside :func:`publication_style`.

Every figure carries a title naming the model (or the problem) and a subtitle naming the
calibration corpus / size it came from; the :class:`Figure` caption repeats it for the report.
Colors and markers are fixed per method so a method looks the same in every figure.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.figure import Figure as MplFigure
from matplotlib.patches import Rectangle

from reports.records import describe, frame
from reports.tables import METHOD_ORDER, _method_label, _tp_frame, method_rank

STYLE: dict[str, Any] = {
    "figure.dpi": 100, "savefig.dpi": 200, "savefig.bbox": "tight", "savefig.pad_inches": 0.05,
    "font.size": 9, "axes.titlesize": 9.5, "axes.labelsize": 9, "legend.fontsize": 7.5, "xtick.labelsize": 8,
    "ytick.labelsize": 8, "figure.titlesize": 10, "font.family": "DejaVu Sans",
    "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3,
    "grid.linewidth": 0.5, "lines.linewidth": 1.5, "lines.markersize": 5, "legend.frameon": False,
    "pdf.fonttype": 42, "ps.fonttype": 42,  # embed TrueType (editable text in the PDF)
}

_PALETTE = mpl.colormaps["tab10"].colors
_OSSCAR_RED = "#d62728"
_OTHERS = [c for c in _PALETTE if mpl.colors.to_hex(c) != _OSSCAR_RED]  # red is OSSCAR's alone
METHOD_STYLE: dict[str, tuple[Any, str]] = {
    m: (_OTHERS[i % len(_OTHERS)], "os^vD<>ph"[i % 9]) for i, m in enumerate(METHOD_ORDER[1:])
}
METHOD_STYLE["osscar"] = (_OSSCAR_RED, "*")


def method_style(label: str) -> dict[str, Any]:
    base = str(label).split(" (", 1)[0]
    color, marker = METHOD_STYLE.get(base, ("0.35", "x"))
    return {"color": color, "marker": marker, "markersize": 8 if marker == "*" else 5}


@contextlib.contextmanager
def publication_style() -> Iterator[None]:
    """The one style every figure of the report is drawn in (rcParams restored on exit)."""
    with mpl.rc_context(STYLE):
        yield


def _subplots(nrows: int = 1, ncols: int = 1, figsize: tuple[float, float] = (4.2, 3.0), **kw: Any) -> tuple[Any, Any]:
    """A pyplot-free figure (no GUI backend, no global figure registry): safe in any process."""
    fig = MplFigure(figsize=figsize, layout="constrained")
    return fig, fig.subplots(nrows, ncols, **kw)


@dataclass
class Figure:
    name: str
    title: str
    caption: str
    paths: dict[str, Path] = field(default_factory=dict)


def _save(fig: Any, folder: Path, name: str) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for ext in ("png", "pdf"):
        path = folder / f"{name}.{ext}"
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=f".{ext}")
        os.close(fd)
        try:
            fig.savefig(tmp, format=ext)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        out[ext] = path
    return out


def _titles(fig: Any, title: str, subtitle: str) -> None:
    fig.suptitle(f"{title}\n{subtitle}", fontsize=9.5)


def _plain_log(ax: Any, axis: str = "y", base: float = 10) -> None:
    """Log scale with plain tick labels (20, 50, 100 — not 2×10¹)."""
    from matplotlib import ticker

    getattr(ax, f"set_{axis}scale")("log", base=base)
    a = getattr(ax, f"{axis}axis")
    a.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    if base == 10:
        lo, hi = (ax.get_ylim() if axis == "y" else ax.get_xlim())
        decades = math.log10(max(hi, 1e-300) / max(lo, 1e-300)) if lo > 0 else 0.0
        # label 2 and 5 between decades only on short axes; long axes would overlap
        if decades <= 2.5:
            a.set_minor_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}" if f"{v:.1e}"[0] in "25" else ""))
        else:
            a.set_minor_formatter(ticker.NullFormatter())


def _slug(*parts: Any) -> str:
    s = "_".join(str(p) for p in parts if p is not None and str(p) != "")
    return "".join(ch if ch.isalnum() or ch == "_" else "-" for ch in s).strip("-").lower()


def _methods(df: pd.DataFrame, col: str = "method_label") -> list[str]:
    return sorted(df[col].dropna().unique(), key=method_rank)


def _fixture_tag(df: pd.DataFrame) -> str:
    return " [FIXTURE DATA]" if "fixture" in df and df["fixture"].any() else ""


def _legend(fig: Any, axes: list[Any]) -> None:
    handles, labels = {}, []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in handles:
                handles[lab] = h
                labels.append(lab)
    if handles:
        fig.legend([handles[lab] for lab in labels], labels, loc="outside lower center",
                   ncol=min(len(labels), 5), frameon=False)


# ---------------------------------------------------------------------------------------------------


def ppl_vs_speedup(records, out: Path, experiment: str = "lm_perplexity") -> list[Figure]:
    """Per model: perplexity (log y) vs target speedup, one panel per eval corpus, one line per method."""
    df = frame(records, experiment, "lm")
    figs: list[Figure] = []
    if df.empty:
        return figs
    df = df.assign(method_label=_method_label(df))
    df["x"] = df["speedup_target"].fillna(df["block_flops_speedup"])
    for (model, calib, n, seqlen), sub in df.groupby(["model", "calib_corpus", "n_samples", "seqlen"], dropna=False):
        sub = sub.drop_duplicates(["target", "method_label"], keep="last")
        corpora = [c.split(":", 1)[1] for c in sub.columns if c.startswith("ppl:") and sub[c].notna().any()]
        if not corpora or sub["x"].notna().sum() == 0:
            continue
        with publication_style():
            fig, axes = _subplots(1, len(corpora), figsize=(3.3 * len(corpora), 2.8), squeeze=False)
            axes = list(axes[0])
            for ax, c in zip(axes, corpora):
                _method_lines(ax, sub, "x", f"ppl:{c}", dense=sub.get(f"dense_ppl:{c}"))
                _plain_log(ax, "y")
                ax.set_xlabel("target speedup (block FLOPs, ×)")
                ax.set_ylabel(f"perplexity on {c} (log)")
                ax.set_title(c)
            _legend(fig, axes)
            title = f"Perplexity vs speedup — {model}{_fixture_tag(sub)}"
            sub_t = f"calibration: {calib}, {n} × {seqlen} tokens; eval windows: {describe(sub['eval_windows'])}"
            _titles(fig, title, sub_t)
            name = _slug("ppl_vs_speedup", model, calib, n)
            paths = _save(fig, out, name)
        figs.append(Figure(name, title, f"{title}. {sub_t}. Dashed: dense model. Lower is better.", paths))
    return figs


def _method_lines(ax: Any, sub: pd.DataFrame, x: str, y: str, scale: float = 1.0,
                  dense: pd.Series | None = None) -> None:
    """One line per method of ``sub`` (column ``y`` against ``x``, both times ``scale``, sorted by x),
    and the latest dense value of ``dense`` as a dashed horizontal line."""
    for m in _methods(sub):
        d = sub[(sub["method_label"] == m) & sub[y].notna() & sub[x].notna()].sort_values(x)
        if len(d):
            ax.plot(scale * d[x], scale * d[y], label=m, **method_style(m))
    if dense is not None and dense.notna().any():
        ax.axhline(scale * dense.dropna().iloc[-1], color="k", ls="--", lw=1, label="dense")


def accuracy_vs_flops(records, out: Path, experiment: str = "vision_accuracy") -> list[Figure]:
    """Per vision model: top-1 (%) vs the target fraction of FLOPs removed, one line per method, dense dashed."""
    df = frame(records, experiment, "vision")
    figs: list[Figure] = []
    if df.empty:
        return figs
    df = df.assign(method_label=_method_label(df))
    for (arch, ds, ckpt, n), sub in df.groupby(["arch", "dataset", "checkpoint", "n_calib"], dropna=False):
        sub = sub.drop_duplicates(["flops_fraction", "method_label"], keep="last")
        if sub["top1"].notna().sum() == 0:
            continue
        with publication_style():
            fig, ax = _subplots(figsize=(4.2, 3.0))
            _method_lines(ax, sub, "flops_fraction", "top1", scale=100, dense=sub["dense_top1"])
            ax.set_xticks(100 * np.array(sorted(sub["flops_fraction"].dropna().unique())))
            ax.set_xlabel("FLOPs removed (target, %)")
            ax.set_ylabel("top-1 accuracy (%)")
            ax.legend(loc="best")
            title = f"Accuracy vs FLOPs removed — {arch} on {ds}{_fixture_tag(sub)}"
            sub_t = f"checkpoint: {ckpt}; calibration: {n} training images; no fine-tuning"
            _titles(fig, title, sub_t)
            name = _slug("accuracy_vs_flops", arch, ds, n)
            paths = _save(fig, out, name)
        figs.append(Figure(name, title, f"{title}. {sub_t}. Dashed: dense checkpoint. Higher is better.", paths))
    return figs


def runtime_bars(records, out: Path, experiment: str = "pruning_runtime") -> list[Figure]:
    """Solver seconds per shape (log y), one bar per method plus one p×p inverse (hatched)."""
    df = frame(records, experiment, "solver")
    if df.empty or df["prune_seconds"].notna().sum() == 0:
        return []
    df = df.assign(method_label=_method_label(df)).drop_duplicates(["shape", "keep", "method_label"], keep="last")
    shapes = list(df.sort_values("p", kind="stable")["shape"].drop_duplicates())
    methods = _methods(df)
    bars = methods + ["one p×p inverse"]
    width = 0.8 / len(bars)
    with publication_style():
        fig, ax = _subplots(figsize=(max(4.5, 1.3 * len(shapes) + 1.5), 3.0))
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
        _plain_log(ax, "y")
        ax.set_xticks(x)
        ax.set_xticklabels([f"{s}\n(p={int(df.loc[df['shape'] == s, 'p'].iloc[0])})" for s in shapes])
        ax.set_ylabel("wall time (s, log)")
        ax.set_xlabel("layer shape")
        ax.grid(axis="x", visible=False)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
        title = f"Solver runtime per layer shape{_fixture_tag(df)}"
        sub_t = (f"{describe(df['problem'])} OPT-shaped problems, keep {describe(df['keep'])}; "
                 f"{describe(df['threads'])} thread(s); {describe(df['device'])}")
        _titles(fig, title, sub_t)
        paths = _save(fig, out, "runtime_bars")
    return [Figure("runtime_bars", title, f"{title}. {sub_t}. Lower is better.", paths)]


def calibration_curves(records, out: Path, experiment: str = "ablation_calibration") -> list[Figure]:
    """Metric vs calibration size (log2 x): lm perplexity per corpus, vision top-1."""
    figs: list[Figure] = []
    lm = frame(records, experiment, "lm")
    if not lm.empty:
        lm = lm.assign(method_label=_method_label(lm))
        for (model, calib, seqlen), sub in lm.groupby(["model", "calib_corpus", "seqlen"], dropna=False):
            sub = sub.drop_duplicates(["target", "method_label", "n_samples"], keep="last")
            corpora = [c.split(":", 1)[1] for c in sub.columns if c.startswith("ppl:") and sub[c].notna().any()]
            if not corpora:
                continue
            multi_target = sub["target"].nunique() > 1
            with publication_style():
                fig, axes = _subplots(1, len(corpora), figsize=(3.3 * len(corpora), 2.8), squeeze=False)
                axes = list(axes[0])
                for ax, c in zip(axes, corpora):
                    groups = sorted(sub.groupby(["method_label", "target"]), key=lambda kv: method_rank(kv[0][0]))
                    for (m, t), d in groups:
                        d = d[d[f"ppl:{c}"].notna()].sort_values("n_samples")
                        lab = f"{m} @ {t}" if multi_target else m
                        ax.plot(d["n_samples"], d[f"ppl:{c}"], label=lab, **method_style(m))
                    _plain_log(ax, "x", base=2)
                    _plain_log(ax, "y")
                    ax.set_xlabel(f"calibration segments ({seqlen} tokens each, log₂)")
                    ax.set_ylabel(f"perplexity on {c} (log)")
                    ax.set_title(c)
                _legend(fig, axes)
                title = f"Calibration size — {model}{_fixture_tag(sub)}"
                sub_t = f"calibration corpus: {calib}; target: {describe(sub['target'])}"
                _titles(fig, title, sub_t)
                name = _slug("calibration", model, calib)
                paths = _save(fig, out, name)
            figs.append(Figure(name, title, f"{title}. {sub_t}. Lower is better.", paths))
    vis = frame(records, experiment, "vision")
    if not vis.empty:
        vis = vis.assign(method_label=_method_label(vis))
        for (arch, ds, ckpt), sub in vis.groupby(["arch", "dataset", "checkpoint"], dropna=False):
            sub = sub.drop_duplicates(["flops_fraction", "method_label", "n_calib"], keep="last")
            if sub["top1"].notna().sum() == 0:
                continue
            multi = sub["flops_fraction"].nunique() > 1
            with publication_style():
                fig, ax = _subplots(figsize=(4.2, 3.0))
                for (m, f), d in sorted(sub.groupby(["method_label", "flops_fraction"]),
                                        key=lambda kv: method_rank(kv[0][0])):
                    d = d[d["top1"].notna()].sort_values("n_calib")
                    ax.plot(d["n_calib"], 100 * d["top1"], label=f"{m} @ −{f:.0%} FLOPs" if multi else m,
                            **method_style(m))
                _plain_log(ax, "x", base=2)
                ax.set_xlabel("calibration images (log₂)")
                ax.set_ylabel("top-1 accuracy (%)")
                ax.legend(loc="lower right")
                title = f"Calibration size — {arch} on {ds}{_fixture_tag(sub)}"
                sub_t = f"checkpoint: {ckpt}; FLOPs removed: {describe(100 * sub['flops_fraction'])} %"
                _titles(fig, title, sub_t)
                name = _slug("calibration", arch, ds)
                paths = _save(fig, out, name)
            figs.append(Figure(name, title, f"{title}. {sub_t}. Higher is better.", paths))
    return figs


def tp_heatmaps(records, out: Path, experiment: str = "ablation_tp") -> list[Figure]:
    """Per t̂/p̂ group: heatmaps of the quality metric and of prune time over (p̂, t̂); best cell boxed."""
    figs: list[Figure] = []
    for pipeline, df in _tp_frame(records, experiment):
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
                fig, axes = _subplots(1, len(use), figsize=(3.4 * len(use), 3.0), squeeze=False)
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
                    finite = np.isfinite(vals)
                    best: set[tuple[int, int]] = set()
                    if finite.any():
                        target = np.nanmin(vals) if direction == "min" else np.nanmax(vals)
                        best = {(int(i), int(j)) for i, j in zip(*np.nonzero(finite & np.isclose(vals, target,
                                                                                                   rtol=1e-12, atol=0)))}
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
                    ax.set_title(f"{label}\n({'lower' if direction == 'min' else 'higher'} is better; best boxed)")
                title = f"t̂/p̂ ablation (OSSCAR) — {what}{_fixture_tag(sub)}"
                _titles(fig, title, sub_t)
                name = _slug("tp_heatmap", pipeline, *[f"{v:g}" if isinstance(v, float) else v for v in
                                                       (g if isinstance(g, tuple) else (g,))])
                paths = _save(fig, out, name)
            figs.append(Figure(name, title, f"{title}. {sub_t}. Best cell boxed in red.", paths))
    return figs


def speedup_scatter(records, out: Path) -> list[Figure]:
    """Measured vs FLOPs speedup of every lm / vision run (not ablations), with the y = x line."""
    frames = []
    for exp in sorted({r.experiment for r in records if r.pipeline in ("lm", "vision")
                       and not r.experiment.startswith("ablation")}):
        for pipeline in ("lm", "vision"):
            d = frame(records, exp, pipeline)
            if not d.empty and "latency_speedup" in d:
                frames.append(d.assign(method_label=_method_label(d)))
    if not frames:
        return []
    df = pd.concat(frames, ignore_index=True)
    df = df[df["latency_speedup"].notna() & df["flops_speedup"].notna()]
    if df.empty:
        return []
    models = list(dict.fromkeys(df["model"]))
    marks = "os^Dv<>ph"
    with publication_style():
        fig, ax = _subplots(figsize=(4.4, 3.6))
        from matplotlib.lines import Line2D

        methods = _methods(df)
        for mi, model in enumerate(models):
            for m in _methods(df[df["model"] == model]):
                d = df[(df["model"] == model) & (df["method_label"] == m)]
                # hollow markers growing with the method's index: coinciding points show as concentric rings
                ax.scatter(d["flops_speedup"], d["latency_speedup"], facecolor="none",
                           edgecolor=method_style(m)["color"], marker=marks[mi % len(marks)],
                           s=22 + 26 * methods.index(m), linewidths=1.2)
        method_handles = [Line2D([], [], ls="none", marker="o", mfc="none", mec=method_style(m)["color"], mew=1.3,
                                 label=m) for m in _methods(df)]
        model_handles = [Line2D([], [], ls="none", marker=marks[i % len(marks)], mfc="none", mec="0.2", label=mod)
                         for i, mod in enumerate(models)]
        lo = min(1.0, df["flops_speedup"].min(), df["latency_speedup"].min())
        hi = max(df["flops_speedup"].max(), df["latency_speedup"].max()) * 1.05
        ax.plot([lo, hi], [lo, hi], color="k", ls="--", lw=1)
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_xlabel("FLOPs speedup (dense / pruned FLOPs, ×)")
        ax.set_ylabel("measured speedup (dense / pruned time, ×)")
        first = ax.legend(handles=method_handles + [Line2D([], [], color="k", ls="--", lw=1, label="y = x")],
                          loc="upper left", fontsize=7, title="method", title_fontsize=7)
        ax.add_artist(first)
        ax.legend(handles=model_handles, loc="lower right", fontsize=7, title="model", title_fontsize=7)
        title = f"Measured vs FLOPs speedup{_fixture_tag(df)}"
        sub_t = f"models: {', '.join(models)}; {describe(df['device'])}"
        _titles(fig, title, sub_t)
        paths = _save(fig, out, "speedup_scatter")
    lat = describe(df["latency_point"].replace("", np.nan))
    return [Figure("speedup_scatter", title,
                   f"{title}. {sub_t}. Latency: {lat}. lm FLOPs = total per token incl. LM head; vision = MACs. "
                   "Points below y = x: the measured gain falls short of the FLOPs gain. Coinciding points of "
                   "several methods show as concentric rings.", paths)]


BUILDERS = {
    "lm_perplexity": ppl_vs_speedup,
    "vision_accuracy": accuracy_vs_flops,
    "pruning_runtime": runtime_bars,
    "ablation_calibration": calibration_curves,
    "ablation_tp": tp_heatmaps,
    "speedup": speedup_scatter,
}


def all_figures(records, out: str | Path) -> dict[str, list[Figure]]:
    """Section name → its figures (written under ``out``), in report order."""
    out = Path(out)
    return {name: build(records, out) for name, build in BUILDERS.items()}
