"""Figures of the claim (#27) and global-allocation (#26) sweeps.

* ``claim_<corpus>``: left, perplexity against the *measured* decoder-block speedup, one line per
  method × allocation (mean over seeds, bars: their range in both axes); right, each arm's perplexity over the
  R2 ZipLM arm's (ZipLM · runtime) at the same target, paired on windows and pooled over seeds (95% bars).
* ``allocation_widths_<experiment>``: the kept share of attention heads and MLP neurons per block of each
  non-uniform allocation (one seed, the highest target), so a reader sees which blocks the searches thin out
  or remove.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from reports.claim import (ALLOCATION_EXPERIMENT, CLAIM_EXPERIMENT, R2_REFERENCE, arm_label, arm_summary,
                           claim_runs, corpus_of, ratios_to_reference)
from reports.plotting import Figure, figure_legend, fixture_tag, jitter, log_axis, publication_style, save
from reports.plotting import subplots, titles
from reports.tables_common import slug
from reports.records import describe

COLORS = {"ziplm": "#1f77b4", "osscar": "#d62728"}
LINES = {"uniform": ":", "uniform-latency": "--", "runtime": "-.", "spdy": "-", "evolutionary": (0, (1, 1))}
MARKERS = {"uniform": "s", "uniform-latency": "D", "runtime": "^", "spdy": "o", "evolutionary": "v"}


def _style(arm: str) -> dict[str, Any]:
    method, allocation = arm.split(" · ", 1)
    return {"color": COLORS.get(method, "0.3"), "ls": LINES.get(allocation, "-"), "marker": MARKERS.get(allocation, "o"),
            "ms": 4.5, "lw": 1.3}


def _ppl_panel(ax: Any, df: pd.DataFrame, corpus: str) -> None:
    s = arm_summary(df, corpus)
    for arm, sub in s.groupby("arm", sort=True):
        sub = sub.sort_values("target")
        ax.plot(sub["blocks_speedup"], sub["ppl mean"], label=arm, **_style(arm))
        runs = df[df["arm"] == arm].groupby("speedup_target")
        xerr = np.vstack([sub["blocks_speedup"] - runs["blocks_speedup"].min().reindex(sub["target"]).to_numpy(),
                          runs["blocks_speedup"].max().reindex(sub["target"]).to_numpy() - sub["blocks_speedup"]])
        yerr = np.vstack([sub["ppl mean"] - sub["ppl min"], sub["ppl max"] - sub["ppl mean"]])
        ax.errorbar(sub["blocks_speedup"], sub["ppl mean"], xerr=np.abs(xerr), yerr=np.abs(yerr), fmt="none",
                    ecolor=_style(arm)["color"], elinewidth=0.8, capsize=2)
    for t in sorted(df["speedup_target"].unique()):
        ax.axvline(t, color="0.6", lw=0.8, ls=":")
    log_axis(ax, "y")
    ax.set_xlabel("measured decoder-block speedup (prefill)")
    ax.set_ylabel(f"perplexity on {corpus} (log)")


def _ratio_panel(ax: Any, df: pd.DataFrame, corpus: str) -> None:
    r = ratios_to_reference(df, corpus)
    if r.empty:
        return
    arms = sorted(r["arm"].unique())
    off = jitter(arms, 0.3)
    for arm in arms:
        sub = r[r["arm"] == arm].sort_values("target")
        xs = sub["target"].to_numpy(float) + off[arm]
        err = np.vstack([sub["ratio"] - sub["lo"], sub["hi"] - sub["ratio"]])
        st = _style(arm)
        ax.errorbar(xs, sub["ratio"], yerr=np.nan_to_num(np.abs(err)), fmt=st["marker"], color=st["color"],
                    ms=st["ms"], elinewidth=1, capsize=2.5, label=arm)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks(sorted(r["target"].unique()))
    ax.set_xticklabels([f"{t:g}×" for t in sorted(r["target"].unique())])
    ax.set_xlabel("target block speedup")
    ax.set_ylabel(f"ppl / ppl({arm_label(*R2_REFERENCE)})")


def claim_figures(records, out: Path) -> list[Figure]:
    df = claim_runs(records)
    corpus = corpus_of(df) if not df.empty else None
    if corpus is None or df["blocks_speedup"].isna().all():
        return []
    with publication_style():
        fig, (a, b) = subplots(1, 2, figsize=(9.0, 3.8))
        _ppl_panel(a, df, corpus)
        _ratio_panel(b, df, corpus)
        figure_legend(fig, [a, b])
        title = f"OSSCAR vs ZipLM at a block speedup, every allocation — {describe(df['model'])}{fixture_tag(df)}"
        sub = (f"calibration {describe(df['calib_corpus'])} {describe(df['n_samples'])}×{describe(df['seqlen'])} tok, "
               f"seeds {describe(sorted(df['seed'].unique()))}; {describe(df['device'])}")
        titles(fig, title, sub)
        name = slug("claim", corpus)
        paths = save(fig, out, name)
    caption = (f"{title}. {sub}. Left: perplexity vs measured block speedup (mean over seeds; bars: range over "
               "seeds); dotted verticals: the targets. Right: each arm's perplexity over ZipLM · runtime (the R2 "
               "ZipLM arm) at the same target, paired on windows, pooled over seeds, 95% bars. Lower is better.")
    return [Figure(name, title, caption, paths), *drift_figures(df, corpus, out)]


def _drift_panel(ax: Any, df: pd.DataFrame, target: float) -> None:
    at = df[(df["speedup_target"] == target) & df["drift_blocks"].map(lambda v: isinstance(v, list))]
    for arm, sub in at.groupby("arm", sort=True):
        curves = np.array([v for v in sub["drift_blocks"]], dtype=float)
        ax.plot(np.arange(curves.shape[1]), curves.mean(0), label=arm, **{**_style(arm), "ms": 2.5})
    log_axis(ax, "y")
    ax.set_xlabel("decoder block")
    ax.set_ylabel("output error vs dense (relative, log)")
    ax.set_title(f"drift block by block at {target:g}× (held-out)", fontsize=9)


def _kl_panel(ax: Any, df: pd.DataFrame, corpus: str) -> None:
    for arm, sub in df[df["drift_kl"].notna()].groupby("arm", sort=True):
        st = _style(arm)
        ax.plot(sub["drift_kl"], sub[f"ppl:{corpus}"], ls="none", marker=st["marker"], color=st["color"], ms=4,
                alpha=0.8, label=arm)
    log_axis(ax, "y")
    ax.set_xlabel("KL(dense ‖ pruned), held-out")
    ax.set_ylabel(f"perplexity on {corpus} (log)")
    ax.set_title("every run (both targets, all seeds)", fontsize=9)


def drift_figures(df: pd.DataFrame, corpus: str, out: Path) -> list[Figure]:
    """#27 item 5: the drift from the dense model block by block, and perplexity against the final KL."""
    if "drift_kl" not in df or df["drift_kl"].isna().all():
        return []
    target = df["speedup_target"].max()
    with publication_style():
        fig, (a, b) = subplots(1, 2, figsize=(9.0, 3.6))
        _drift_panel(a, df, target)
        _kl_panel(b, df, corpus)
        figure_legend(fig, [a, b])
        title = f"From layer error to perplexity — {describe(df['model'])}{fixture_tag(df)}"
        sub = f"claim sweep; held-out windows never used to prune; seeds {describe(sorted(df['seed'].unique()))}"
        titles(fig, title, sub)
        name = slug("claim_drift", corpus)
        paths = save(fig, out, name)
    caption = (f"{title}. {sub}. Left: relative error of each block's output against the dense model (mean over "
               f"seeds) at {target:g}×. Right: perplexity against the KL of the next-token distribution, every run.")
    return [Figure(name, title, caption, paths)]


def _widths(df: pd.DataFrame) -> pd.DataFrame:
    """Rows of non-uniform allocations (runtime and the searches) with per-block widths: seed 0 (or the lowest),
    the highest target."""
    if df.empty or "kept_attn_per_block" not in df:
        return df
    df = df[df["kept_attn_per_block"].map(lambda v: isinstance(v, list)) & (df["allocation"] != "uniform-latency")]
    if df.empty:
        return df
    df = df[df["seed"] == df["seed"].min()]
    return df[df["speedup_target"] == df["speedup_target"].max()]


def allocation_width_figures(records, out: Path) -> list[Figure]:
    figs = []
    for experiment in (ALLOCATION_EXPERIMENT, CLAIM_EXPERIMENT):
        df = _widths(claim_runs(records, experiment))
        if df.empty:
            continue
        with publication_style():
            fig, (a, b) = subplots(1, 2, figsize=(9.0, 3.4), sharey=True)
            for _, r in df.sort_values("arm").iterrows():  # shares of the run's own totals (heads or KV groups)
                st = _style(r["arm"])
                blocks = np.arange(len(r["kept_attn_per_block"]))
                a.plot(blocks, np.asarray(r["kept_attn_per_block"]) / r["attn_groups_total"], label=r["arm"], **st)
                b.plot(blocks, np.asarray(r["kept_mlp_per_block"]) / r["neurons_total"], label=r["arm"], **st)
            a.set_ylabel("share kept (0: module removed)")
            for ax, what in ((a, "attention (share of its heads or KV groups)"),
                             (b, f"MLP (share of {describe(df['neurons_total'].astype(int))} neurons)")):
                ax.set_xlabel("decoder block")
                ax.set_title(what, fontsize=9)
                ax.set_ylim(-0.05, 1.05)
            figure_legend(fig, [a, b])
            target, seed = df["speedup_target"].iloc[0], df["seed"].iloc[0]
            title = f"Widths per block at {target:g}× block latency — {describe(df['model'])}{fixture_tag(df)}"
            sub = f"{experiment}: seed {seed}; method · allocation as in the legend"
            titles(fig, title, sub)
            name = slug("allocation_widths", experiment)
            paths = save(fig, out, name)
        figs.append(Figure(name, title, f"{title}. {sub}.", paths))
    return figs
