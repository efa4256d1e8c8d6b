"""Figures of the LM ablations (#16): perplexity and the paired ratio to ZipLM against the swept setting.

One figure per provenance group and corpus, panels sharing the (log) x axis of the setting:

* top: perplexity per method (log y) — the mean over calibration seeds (line), each seed (small
  markers, jittered along x) and the min–max band over seeds;
* below: each method's perplexity over ZipLM's, one point per seed (same calibration seed, same
  evaluation windows) with the paired 95% range over windows as its bar, the line through the
  geometric mean over seeds, and 1.0 drawn; methods with a ratio above ``CLOSE_RATIO`` get a panel of
  their own (log y) so that the close ones stay readable.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from reports.lm_ablation import CALIBRATION, DAMPING, REFERENCE, LmAblation, ablation_runs, corpora, geo_mean, seed_ratios
from reports.plotting import Figure, fixture_tag, jitter, log_axis, method_style, methods_of, publication_style, save
from reports.plotting import subplots, titles
from reports.records import describe
from reports.tables_common import config_groups, slug

CLOSE_RATIO = 3.0  # as the lm_perplexity figure: ratios above this get their own (log) panel


def _log_gap(xs: np.ndarray) -> float:
    """The smallest gap between neighbouring settings in natural-log units (1 when there is one)."""
    lx = np.log(xs[xs > 0])
    return float(np.diff(lx).min()) if len(lx) > 1 else 1.0


def _offsets(xs: np.ndarray, methods: list[str], seeds: list[Any]) -> tuple[dict[str, float], dict[Any, float]]:
    """Multiplicative x jitter (in log units) per method and, smaller, per seed within a method."""
    gap = _log_gap(xs)
    return jitter(methods, 0.22 * gap), jitter(seeds, 0.09 * gap)


def _x_axis(ax: Any, spec: LmAblation, xs: np.ndarray, borrowed: set[float], seqlen: Any) -> None:
    log_axis(ax, "x", base=2 if spec is CALIBRATION else 10)
    ax.set_xticks(xs, minor=False)
    if spec is CALIBRATION:
        labels = [f"{x:.0f}\n({x / float(seqlen):.0f} × {float(seqlen):.0f})" for x in xs]
    else:
        labels = [f"{x:g}" + ("*" if x in borrowed else "") for x in xs]
    ax.set_xticklabels(labels)
    ax.set_xticks([], minor=True)
    if len(xs):
        pad = math.exp(0.45 * _log_gap(xs))
        ax.set_xlim(xs.min() / pad, xs.max() * pad)


def _ppl_panel(ax: Any, sub: pd.DataFrame, spec: LmAblation, col: str, moff: dict, soff: dict) -> None:
    for m in methods_of(sub):
        d = sub[(sub["method_label"] == m) & sub[col].notna()]
        if d.empty:
            continue
        st = method_style(m)
        g = d.groupby(spec.x)[col]
        xs = g.mean().index.to_numpy(dtype=float)
        mean = g.mean().to_numpy(dtype=float)
        x_m = xs * math.exp(moff.get(m, 0.0))
        ax.fill_between(x_m, g.min().to_numpy(dtype=float), g.max().to_numpy(dtype=float), color=st["color"],
                        alpha=0.15, lw=0)
        ax.plot(x_m, mean, label=m, **{**st, "markersize": 0.75 * st["markersize"]})
        px = d[spec.x].to_numpy(dtype=float) * np.exp(moff.get(m, 0.0) + d["seed"].map(soff).fillna(0).to_numpy())
        ax.plot(px, d[col], ls="none", marker="o", color=st["color"], ms=2.6, alpha=0.8, mew=0, zorder=3)
    vals = sub[col].dropna()
    if len(vals) and vals.min() > 0 and vals.max() / vals.min() > 3:  # a short linear axis reads better than log
        log_axis(ax, "y")


def _ratio_panel(ax: Any, r: pd.DataFrame, spec: LmAblation, methods: list[str], moff: dict, soff: dict,
                 log: bool) -> None:
    for m in methods:
        d = r[r["method_label"] == m].sort_values(spec.x)
        st = method_style(m)
        gm = d.groupby(spec.x)["ratio"].agg(geo_mean)
        ax.plot(gm.index.to_numpy(dtype=float) * math.exp(moff.get(m, 0.0)), gm.to_numpy(), label=m,
                **{**st, "marker": None})
        px = d[spec.x].to_numpy(dtype=float) * np.exp(moff.get(m, 0.0) + d["seed"].map(soff).fillna(0).to_numpy())
        err = np.vstack([d["ratio"] - d["lo"], d["hi"] - d["ratio"]]).clip(min=0)
        ax.errorbar(px, d["ratio"], yerr=err, fmt="o", ms=2.6, mew=0, color=st["color"], ecolor=st["color"],
                    elinewidth=0.9, capsize=2, alpha=0.85, zorder=3)
    ax.axhline(1.0, color="0.3", lw=0.9, ls=":")
    if log:
        log_axis(ax, "y")
    ax.set_ylabel(f"ppl / ppl({REFERENCE})" + (" (log)" if log else ""))


def lm_ablation_figures(records, out: Path, spec: LmAblation = CALIBRATION) -> list[Figure]:
    """The figure(s) of one LM ablation (see the module docstring); none when it has no records."""
    df, notes = ablation_runs(records, spec)
    figs: list[Figure] = []
    base = "lm_calibration" if spec is CALIBRATION else "lm_damping"
    groups = [(g, sub, c) for g, sub in config_groups(df, list(spec.keys)) for c in corpora(sub)]
    for g, sub, c in groups:
        col = f"ppl:{c}"
        r = seed_ratios(sub, c, spec)
        worst = r.groupby("method_label")["ratio"].max() if not r.empty else pd.Series(dtype=float)
        far = [m for m in methods_of(r) if worst[m] > CLOSE_RATIO] if not r.empty else []
        close = [m for m in methods_of(r) if m not in far] if not r.empty else []
        xs = np.array(sorted(sub.loc[sub[col].notna(), spec.x].dropna().unique()), dtype=float)
        borrowed = set(sub.loc[sub["borrowed"], spec.x])
        seeds = sorted(sub["seed"].dropna().unique())
        moff, soff = _offsets(xs, methods_of(sub), seeds)
        panels = [(ms, log) for ms, log in ((close, False), (far, True)) if ms]
        heights = [1.4] + [1.0] * len(panels)
        with publication_style():
            fig, axes = subplots(len(heights), 1, figsize=(5.2, 2.4 + 1.8 * len(panels)), sharex=True,
                                 squeeze=False, gridspec_kw={"height_ratios": heights})
            axes = list(axes[:, 0])
            # far methods (> CLOSE_RATIO × ZipLM) would flatten the others: their perplexity is in the table
            _ppl_panel(axes[0], sub[~sub["method_label"].isin(far)], spec, col, moff, soff)
            shown = sub.loc[~sub["method_label"].isin(far), col].dropna()
            log_top = len(shown) and shown.min() > 0 and shown.max() / shown.min() > 3
            axes[0].set_ylabel(f"perplexity on {c}" + (" (log)" if log_top else ""))
            axes[0].set_title("perplexity" + (f" (without {', '.join(far)}: > {CLOSE_RATIO:g}× {REFERENCE})"
                                              if far else ""))
            for ax, (ms, log) in zip(axes[1:], panels):
                _ratio_panel(ax, r, spec, ms, moff, soff, log)
                ax.set_title(f"ratio to {REFERENCE} per seed, paired over windows"
                             + (f" (> {CLOSE_RATIO:g}×, log)" if log else ""))
            for ax in axes:
                _x_axis(ax, spec, xs, borrowed, g.get("seqlen"))
            xlabel = spec.x_label + (f";  *: runs of {spec.borrow_from}" if borrowed else "")
            if spec.borrow_from and not borrowed:
                xlabel += f"\ndefault-λ points absent (no matching {spec.borrow_from} runs)"
            axes[-1].set_xlabel(xlabel)
            handles = [Line2D([], [], label=m, **method_style(m)) for m in methods_of(sub)]
            handles += [Line2D([], [], ls="none", marker="o", ms=3, color="0.4", label="one seed"),
                        Patch(color="0.6", alpha=0.3, label="min–max over seeds"),
                        Line2D([], [], color="0.4", marker="|", ms=8, ls="none", label="paired 95% (windows)")]
            fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 4), frameon=False)
            cal = (f"calibration: {g['calib_corpus']}, "
                   + (f"{g['seqlen']:g}-token segments" if spec is CALIBRATION
                      else f"{g['n_samples']:g} × {g['seqlen']:g} tokens")
                   + (f", λ = {g['damping']:g}" if spec is CALIBRATION and pd.notna(g.get("damping")) else ""))
            title = f"{'Calibration size' if spec is CALIBRATION else 'Damping'} ablation — {g['model']}{fixture_tag(sub)}"
            dense = sub[f"dense_{col}"].dropna() if f"dense_{col}" in sub else pd.Series(dtype=float)
            sub_t = (f"{cal}; target {g['target']}\neval: {c}, {describe(sub['eval_windows'])} windows × "
                     f"{describe(sub['eval_seqlen'])} tokens" + (f" (dense ppl {dense.iloc[-1]:.1f})" if len(dense) else "")
                     + f"; seeds {', '.join(str(s) for s in seeds)}")
            titles(fig, title, sub_t)
            name = base if len(groups) == 1 else slug(base, g["model"], g["calib_corpus"], c)
            paths = save(fig, out, name)
        far_note = (f" {', '.join(far)}: perplexity above {CLOSE_RATIO:g}× {REFERENCE}'s, left out of the top panel "
                    "(see the table) and its ratio in a panel of its own (log y)." if far else "")
        borrow_note = (" " + " ".join(notes[:1]) if spec.borrow_from else "")
        sub_c = sub_t.replace("\n", "; ")
        figs.append(Figure(name, title, f"{title}. {sub_c}. Lower is better. Top: the line joins the means over "
                           "seeds, dots are single seeds, the band their min–max. Below: dots are single seeds, the "
                           f"ratio exp(mean per-window NLL difference) to the {REFERENCE} run of the same seed, bars its "
                           "paired 95% range over windows (a bar across 1 cannot tell the two apart), the line the "
                           "geometric mean over seeds. Points of one setting are offset slightly along x (per method, "
                           f"then per seed) so that they stay visible.{far_note}{borrow_note}", paths))
    return figs


def lm_calibration_figures(records, out: Path) -> list[Figure]:
    return lm_ablation_figures(records, out, CALIBRATION)


def lm_damping_figures(records, out: Path) -> list[Figure]:
    return lm_ablation_figures(records, out, DAMPING)
