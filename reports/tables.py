"""The paper's tables from flat record frames (each a :class:`reports.table.Table`).

Builders return one table per provenance group (model, calibration corpus and size...), and every
caption says which model, corpus and calibration size the numbers came from. Each ranked column
carries its noise (binomial for accuracies, the paired range for perplexities, the run-to-run
spread for single timings), so bold marks only a difference larger than the noise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from osscar.io import atomic_write_text as write_text_atomic  # noqa: F401  (re-exported for reports.build)
from reports.records import describe, frame, missing_metrics
from reports.table import HIGHER, LOWER, Table, binomial_margin, relative_margin

# single wall-time measurements on a 2-core machine vary by about this much between runs
TIME_NOISE = 0.3
SPEEDUP_NOISE = 0.05  # medians of repeated latency measurements
MEMORY_NOISE = 0.05  # sampled RSS peaks (allocator caching, sampling interval)

# ---------------------------------------------------------------------------------------------------
# helpers


def _slug(*parts: Any) -> str:
    s = "_".join(str(p) for p in parts if p is not None and str(p) != "")
    return "".join(ch if ch.isalnum() or ch == "_" else "-" for ch in s).strip("-").lower()


# the paper's order: baselines first, OSSCAR last (unknown methods after, alphabetically)
METHOD_ORDER = ("dense", "mp", "mp+", "lasso", "fpgm", "chip", "thinet", "ziplm", "osscar")


def method_rank(label: Any) -> tuple[int, str]:
    base = str(label).split(" (", 1)[0]
    return (METHOD_ORDER.index(base) if base in METHOD_ORDER else len(METHOD_ORDER), str(label))


def _method_sorted(df: pd.DataFrame, first: list[str], col: str = "method_label") -> pd.DataFrame:
    """Sort by ``first`` columns, then by the paper's method order."""
    key = df[col].map(method_rank)
    return df.assign(_mrank=key).sort_values([*first, "_mrank"], kind="stable").drop(columns="_mrank")


def _method_label(df: pd.DataFrame) -> pd.Series:
    """The method name, with its parameters when it has any (so distinct settings stay distinct rows)."""
    params = df.get("method_params", pd.Series("", index=df.index)).fillna("")
    return df["method"].astype(str) + params.map(lambda p: f" ({p})" if p else "")


def _dedupe(df: pd.DataFrame, keys: list[str]) -> tuple[pd.DataFrame, list[str]]:
    """Keep the latest record per ``keys`` (frames are sorted by finish time); say so when it drops any."""
    n = len(df)
    df = df.drop_duplicates(keys, keep="last")
    return df, ([f"{n - len(df)} older duplicate record(s) of the same configuration ignored (latest used)."]
                if len(df) < n else [])


def _groups(df: pd.DataFrame, keys: list[str]):
    keys = [k for k in keys if k in df.columns]
    if not keys:
        yield {}, df
        return
    for vals, sub in df.groupby(keys, sort=True, dropna=False):
        vals = vals if isinstance(vals, tuple) else (vals,)
        yield dict(zip(keys, vals)), sub


def _provenance_caption(sub: pd.DataFrame, pipeline: str) -> str:
    if pipeline == "lm":
        calib = (f"calibration: {describe(sub['calib_corpus'])}, {describe(sub['n_samples'])} × "
                 f"{describe(sub['seqlen'])} tokens")
        return (f"Model: {describe(sub['model'])} (source: {describe(sub.get('model_source', []))}); {calib}; "
                f"device: {describe(sub['device'])}; {len(sub)} record(s).")
    if pipeline == "vision":
        return (f"Model: {describe(sub['arch'])} on {describe(sub['dataset'])}, checkpoint "
                f"{describe(sub['checkpoint'])}; calibration: {describe(sub['n_calib'])} training images; "
                f"test images: {describe(sub['eval_n'])}; device: {describe(sub['device'])}; {len(sub)} record(s).")
    return f"Device: {describe(sub['device'])}; {len(sub)} record(s)."


def _fixture_note(sub: pd.DataFrame) -> list[str]:
    if "fixture" in sub.columns and sub["fixture"].any():
        return ["FIXTURE DATA (hand-written test records, not measurements)."]
    return []


def _eval_n(sub: pd.DataFrame, col: str = "eval_n") -> float:
    n = pd.to_numeric(sub.get(col, pd.Series(dtype=float)), errors="coerce").dropna()
    return float(n.min()) if len(n) else 0.0


BINOMIAL_NOTE = "95% half-width of the difference of two accuracies on {n:g} examples"
TIME_NOTE = f"single wall times: {TIME_NOISE:.0%} of the value, the run-to-run spread on this 2-core machine"


def _cols(df: pd.DataFrame, prefix: str) -> list[str]:
    return [c for c in df.columns if c.startswith(prefix) and df[c].notna().any()]


# ---------------------------------------------------------------------------------------------------
# language models


def _lm_rows(sub: pd.DataFrame, keys: list[str], column: Callable[[str], str], scale: float = 1.0) -> pd.DataFrame:
    """Rows target × method, the dense model first (from the latest record that evaluated it).

    Value ``key`` of a row is ``scale · sub[column(key)]``; the dense row reads ``"dense_" + column(key)``.
    Columns: target, method, _ref (True on the dense row), then ``keys``.
    """
    dense = {k: sub["dense_" + column(k)].dropna() if "dense_" + column(k) in sub else pd.Series(dtype=float)
             for k in keys}
    rows = []
    if any(len(v) for v in dense.values()):
        rows.append({"target": "dense", "method": "dense", "_ref": True, "_src": None,
                     **{k: scale * v.iloc[-1] if len(v) else np.nan for k, v in dense.items()}})
    for i, r in _method_sorted(sub, ["target_sort"]).iterrows():
        rows.append({"target": r["target"], "method": r["method_label"], "_ref": False, "_src": i,
                     **{k: scale * r[column(k)] for k in keys}})
    return pd.DataFrame(rows)


def _paired_best(data: pd.DataFrame, sub: pd.DataFrame, corpora: list[str]) -> pd.DataFrame:
    """Bold mask of a perplexity table: per target and corpus, the lowest perplexity only when its
    paired 95% range against the runner-up's windows lies below 1 (:func:`paired_nll_ratio`)."""
    mask = pd.DataFrame(False, index=data.index, columns=corpora)
    for _, rows in data[~data["_ref"]].groupby("target", sort=False):
        for c in corpora:
            vals = rows[c].astype(float).dropna().sort_values()
            if len(vals) < 2:
                continue
            best, runner = vals.index[0], vals.index[1]
            wb = sub.loc[data.loc[best, "_src"]].get(f"window_nll:{c}")
            wr = sub.loc[data.loc[runner, "_src"]].get(f"window_nll:{c}")
            if isinstance(wb, list) and isinstance(wr, list) and len(wb) == len(wr) > 1:
                mask.loc[best, c] = paired_nll_ratio(wb, wr)[2] < 1
    return mask


def lm_perplexity_tables(records, experiment: str = "lm_perplexity") -> list[Table]:
    """Per (model, calibration): rows = target × method (dense first), columns = eval corpora; ppl ↓."""
    df = frame(records, experiment, "lm")
    tables = []
    if df.empty:
        return tables
    for g, sub in _groups(df, ["model", "calib_corpus", "n_samples", "seqlen"]):
        sub = sub.assign(method_label=_method_label(sub))
        sub, notes = _dedupe(sub, ["target", "method_label"])
        corpora = [c.split(":", 1)[1] for c in _cols(sub, "ppl:")]
        all_corpora = [c.split(":", 1)[1] for c in sub.columns if c.startswith("ppl:")]
        for c in all_corpora:
            if c not in corpora:
                notes.append(f"perplexity on {c} is missing in every record of this group.")
        if not corpora:
            continue
        data = _lm_rows(sub, corpora, lambda c: f"ppl:{c}")
        missing = missing_metrics(sub, [f"ppl:{c}" for c in corpora])
        if missing:
            notes.append("Missing values: " + ", ".join(f"{k} in {v} record(s)" for k, v in missing.items()) + ".")
        tables.append(Table(
            name=_slug("lm_perplexity", g["model"], g["calib_corpus"], g["n_samples"]),
            title=f"Perplexity — {g['model']}",
            caption=(f"Perplexity (exp of mean token NLL, windows of {describe(sub['eval_seqlen'] if 'eval_seqlen' in sub else sub['seqlen'])} tokens, "
                     f"{describe(sub['eval_windows'])} windows per corpus) per evaluation corpus "
                     f"({', '.join(corpora)}), method and target. " + _provenance_caption(sub, "lm")),
            data=data, label_cols=["target", "method"], value_cols=corpora,
            directions={c: LOWER for c in corpora}, formats={c: ".2f" for c in corpora}, group_by=["target"],
            reference=data["_ref"], notes=_fixture_note(sub) + notes
            + ["Bold: the lowest perplexity of a target, only where its paired 95% range against the runner-up "
               "on the same windows lies below 1 (else nothing is bold)."],
            significant=_paired_best(data, sub, corpora)))
    return tables


def lm_zero_shot_tables(records, experiment: str = "lm_perplexity") -> list[Table]:
    """Per (model, calibration) and per metric (acc, acc_norm): rows = target × method, columns = tasks + mean."""
    df = frame(records, experiment, "lm")
    tables = []
    if df.empty:
        return tables
    for g, sub in _groups(df, ["model", "calib_corpus", "n_samples", "seqlen"]):
        sub = sub.assign(method_label=_method_label(sub))
        sub, notes = _dedupe(sub, ["target", "method_label"])
        for metric in ("acc", "acc_norm"):
            cols = _cols(sub, f"{metric}:")
            if not cols:
                continue
            tasks = [c.split(":", 1)[1] for c in cols]
            n_ex = _eval_n(sub, "zero_shot_limit")
            data = _lm_rows(sub, tasks, lambda t, metric=metric: f"{metric}:{t}", scale=100)
            data["mean"] = data[tasks].mean(axis=1, skipna=False)  # only when every task is present
            vcols = tasks + ["mean"]
            tnotes = list(notes)
            missing = missing_metrics(sub, cols)
            if missing:
                tnotes.append("Missing values: " + ", ".join(f"{k} in {v} record(s)" for k, v in missing.items())
                              + " (mean left empty for those rows).")
            tables.append(Table(
                name=_slug("lm_zeroshot", metric, g["model"], g["calib_corpus"], g["n_samples"]),
                title=f"Zero-shot {metric} (%) — {g['model']}",
                caption=(f"lm-eval zero-shot {metric} in % (lm-eval {describe(sub['lm_eval_version'])}, "
                         f"limit {describe(sub['zero_shot_limit'])} examples per task). "
                         + _provenance_caption(sub, "lm")),
                data=data, label_cols=["target", "method"], value_cols=vcols,
                directions={c: HIGHER for c in vcols}, formats={c: ".1f" for c in vcols}, group_by=["target"],
                reference=data["_ref"], notes=_fixture_note(sub) + tnotes,
                margins={**{t: binomial_margin(n_ex) for t in tasks}, "mean": binomial_margin(n_ex * len(tasks))},
                margin_note=BINOMIAL_NOTE.format(n=n_ex) + " per task"))
    return tables


def paired_nll_ratio(a: Sequence[float], b: Sequence[float], z: float = 1.96) -> tuple[float, float, float]:
    """Perplexity ratio of run a over run b on the same windows, paired: exp(mean_w d_w) with
    d_w = nll_a,w − nll_b,w (mean token NLL of window w), and exp(mean ± z·SE) with SE = sd(d)/√n.

    Equal-length windows make exp(mean d) exactly ppl_a / ppl_b. n = 1 gives an unbounded range.
    """
    if len(a) != len(b) or not len(a):
        raise ValueError(f"paired windows needed: got {len(a)} and {len(b)} values")
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    mean = float(d.mean())
    se = float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else math.inf
    return math.exp(mean), math.exp(mean - z * se), math.exp(mean + z * se)


def paired_ratios(sub: pd.DataFrame, corpus: str, reference: str = "ziplm") -> pd.DataFrame:
    """Per target, each method's perplexity over ``reference``'s on the same windows of ``corpus``.

    sub: lm rows with ``method_label`` and ``window_nll:<corpus>``. Returns rows (target, method_label,
    src: the row's index in ``sub``, ratio, lo, hi, windows, is_reference); the reference's own row
    has ratio 1 and no range. Rows whose windows differ from the reference's are left out."""
    col = f"window_nll:{corpus}"
    rows = []
    for target, tsub in sub.groupby("target", sort=False):
        ref = tsub[(tsub["method"] == reference) & tsub[col].map(lambda v: isinstance(v, list) and len(v) > 0)]
        if ref.empty:
            continue
        ref_w = ref[col].iloc[-1]
        rows.append({"target": target, "method_label": f"{reference} (reference)", "src": ref.index[-1],
                     "ratio": 1.0, "lo": np.nan, "hi": np.nan, "windows": len(ref_w), "is_reference": True})
        for i, r in _method_sorted(tsub, ["target_sort"]).iterrows():
            w = r[col]
            if r["method"] == reference or not isinstance(w, list) or len(w) != len(ref_w):
                continue
            ratio, lo, hi = paired_nll_ratio(w, ref_w)
            rows.append({"target": target, "method_label": r["method_label"], "src": i, "ratio": ratio, "lo": lo,
                         "hi": hi, "windows": len(w), "is_reference": False})
    return pd.DataFrame(rows)


def lm_paired_tables(records, experiment: str = "lm_perplexity", reference: str = "ziplm") -> list[Table]:
    """Per (model, calibration, corpus): each method's perplexity relative to ``reference`` on the
    same evaluation windows (:func:`paired_nll_ratio`), per target. Needs ``window_nll`` in the records."""
    df = frame(records, experiment, "lm")
    tables: list[Table] = []
    if df.empty:
        return tables
    for g, sub in _groups(df, ["model", "calib_corpus", "n_samples", "seqlen"]):
        sub = sub.assign(method_label=_method_label(sub))
        sub, notes = _dedupe(sub, ["target", "method_label"])
        for c in [k.split(":", 1)[1] for k in sub.columns if k.startswith("window_nll:")]:
            pr = paired_ratios(sub, c, reference)
            if pr.empty:
                continue
            data = pd.DataFrame({"target": pr["target"], "method": pr["method_label"],
                                 "_sort": sub.loc[pr["src"], "target_sort"].to_numpy(), "ppl ratio": pr["ratio"],
                                 "95% low": pr["lo"], "95% high": pr["hi"], "windows": pr["windows"]})
            data = data.sort_values("_sort", kind="stable").drop(columns="_sort").reset_index(drop=True)
            better = pd.DataFrame(False, index=data.index, columns=["ppl ratio", "95% low", "95% high", "windows"])
            better["ppl ratio"] = data["95% high"] < 1
            tables.append(Table(
                name=_slug("lm_paired", g["model"], g["calib_corpus"], g["n_samples"], c),
                title=f"Perplexity relative to {reference} on the same windows — {g['model']}, {c}",
                caption=(f"ppl(method) / ppl({reference}) on identical {c} windows, with a 95% range from the "
                         "paired per-window NLL differences (exp(mean ± 1.96·SE)); a range that contains 1 "
                         f"means the windows cannot tell the two apart; bold: a range entirely below 1 (better than "
                         f"{reference}). " + _provenance_caption(sub, "lm")),
                data=data, label_cols=["target", "method"], value_cols=["ppl ratio", "95% low", "95% high", "windows"],
                directions={"ppl ratio": LOWER}, formats={"ppl ratio": ".3f", "95% low": ".3f", "95% high": ".3f",
                                                          "windows": ".0f"},
                group_by=["target"], notes=_fixture_note(sub) + notes, significant=better))
    return tables


def lm_cost_tables(records, experiment: str = "lm_perplexity") -> list[Table]:
    """Per model: prune time, solver time, peak memory, FLOPs and measured speedups per target × method."""
    df = frame(records, experiment, "lm")
    tables = []
    if df.empty:
        return tables
    spec = [("prune [s]", "prune_seconds", LOWER, ".3g"), ("solver [s]", "solver_seconds", LOWER, ".3g"),
            ("peak RSS while pruning [MiB]", "prune_rss_mb", LOWER, ".0f"),
            ("peak RSS, whole run [MiB]", "peak_rss_mb", LOWER, ".0f"),
            ("device peak while pruning [MiB]", "device_peak_prune_mb", LOWER, ".0f"),
            ("params kept [%]", "params_kept", None, ".1f"), ("FLOPs speedup", "flops_speedup", None, ".2f"),
            ("measured speedup", "latency_speedup", HIGHER, ".2f")]
    for g, sub in _groups(df, ["model", "calib_corpus", "n_samples", "seqlen"]):
        sub = sub.assign(method_label=_method_label(sub),
                         params_kept=100 * sub["params_pruned"] / sub["params_dense"])
        sub, notes = _dedupe(sub, ["target", "method_label"])
        present = [s for s in spec if sub[s[1]].notna().any()]
        if not present:
            continue
        data = pd.DataFrame({"target": sub["target"], "method": sub["method_label"], "_s": sub["target_sort"],
                             **{name: sub[col] for name, col, _, _ in present}})
        data = _method_sorted(data, ["_s"], col="method")
        absent = [name for name, col, _, _ in spec if not sub[col].notna().any()]
        if absent:
            notes.append("Not recorded: " + ", ".join(absent) + ".")
        lat = describe(sub["latency_point"].replace("", np.nan))
        tables.append(Table(
            name=_slug("lm_cost", g["model"], g["calib_corpus"], g["n_samples"]),
            title=f"Pruning cost, memory and speedup — {g['model']}",
            caption=("Wall time of the whole sequential pruning and of the solver alone; peak resident memory "
                     "(ru_maxrss of the run's process) up to the end of pruning and over the whole run (incl. "
                     "evaluation); parameters kept; total FLOPs-per-token "
                     f"speedup and measured prefill speedup of the sliced model (latency point: {lat}). "
                     + _provenance_caption(sub, "lm")),
            data=data, label_cols=["target", "method"], value_cols=[p[0] for p in present],
            directions={name: d for name, _, d, _ in present if d}, formats={name: f for name, _, _, f in present},
            group_by=["target"], notes=_fixture_note(sub) + notes
            + ["Peak RSS: this run alone, sampled every 20 ms per phase (osscar.memory); it includes the model, "
               "the calibration activations and the solver, so methods differ by their solver's share."],
            margins={"prune [s]": relative_margin(TIME_NOISE), "solver [s]": relative_margin(TIME_NOISE),
                     "measured speedup": relative_margin(SPEEDUP_NOISE),
                     **{c: relative_margin(MEMORY_NOISE) for c in ("peak RSS while pruning [MiB]",
                                                                   "peak RSS, whole run [MiB]",
                                                                   "device peak while pruning [MiB]")}},
            margin_note=f"{TIME_NOTE}; measured speedup: {SPEEDUP_NOISE:.0%}; memory: {MEMORY_NOISE:.0%}"))
    return tables


def lm_layer_error_tables(records, experiment: str = "lm_perplexity") -> list[Table]:
    """Per (model, calibration): rows = target × method; per consumer kind (attention, MLP) the mean over
    layers of the relative reconstruction error on the calibration inputs and on the held-out windows,
    and their ratio held-out / calibration."""
    df = frame(records, experiment, "lm")
    tables: list[Table] = []
    if df.empty or "err_heldout:attn" not in df:
        return tables
    spec = [(f"{name} {what}", f"err_{which}:{part}") for part, name in (("attn", "attention"), ("mlp", "MLP"))
            for what, which in (("calibration", "calib"), ("held-out", "heldout"))]
    for g, sub in _groups(df, ["model", "calib_corpus", "n_samples", "seqlen"]):
        sub = sub.assign(method_label=_method_label(sub))
        sub, notes = _dedupe(sub, ["target", "method_label"])
        if not sub["err_heldout:attn"].notna().any() and not sub["err_heldout:mlp"].notna().any():
            continue
        data = pd.DataFrame({"target": sub["target"], "method": sub["method_label"], "_s": sub["target_sort"],
                             **{name: sub[col] for name, col in spec}})
        for part in ("attention", "MLP"):
            data[f"{part} ratio"] = data[f"{part} held-out"] / data[f"{part} calibration"]
        data = _method_sorted(data, ["_s"], col="method")
        cols = [c for part in ("attention", "MLP") for c in (f"{part} calibration", f"{part} held-out", f"{part} ratio")]
        missing = missing_metrics(sub, [col for _, col in spec])
        if missing:
            notes.append("Missing values: " + ", ".join(f"{k} in {v} record(s)" for k, v in missing.items()) + ".")
        tables.append(Table(
            name=_slug("lm_layer_error", g["model"], g["calib_corpus"], g["n_samples"]),
            title=f"Layer error: calibration vs held-out — {g['model']}",
            caption=("Relative reconstruction error ½‖X(W − Ŵ)‖² / ½‖XŴ‖² of every pruned consumer (W: pruned, "
                     "refit weights; Ŵ: dense), averaged over the layers of each kind: on the calibration "
                     "inputs the solver fitted, and on held-out windows of the calibration text (disjoint from "
                     "the calibration and evaluation windows) pushed through the same pruned blocks; ratio = "
                     "held-out / calibration (> 1: the refit generalises less well than its objective says). "
                     + _provenance_caption(sub, "lm")),
            data=data, label_cols=["target", "method"], value_cols=cols,
            directions={c: LOWER for c in cols if not c.endswith("ratio")},
            formats={c: (".2f" if c.endswith("ratio") else ".4f") for c in cols},
            group_by=["target"], notes=_fixture_note(sub) + notes
            + ["Errors on raw XᵀX (no damping); calibration column = the layer objective's reconstruction error."]))
    return tables


# ---------------------------------------------------------------------------------------------------
# vision


def vision_accuracy_tables(records, experiment: str = "vision_accuracy") -> list[Table]:
    """Per (model, checkpoint, n_calib): rows = method (dense first), columns = FLOPs fraction removed; top-1 % ↑."""
    df = frame(records, experiment, "vision")
    tables = []
    if df.empty:
        return tables
    for g, sub in _groups(df, ["arch", "dataset", "checkpoint", "n_calib"]):
        sub = sub.assign(method_label=_method_label(sub))
        sub, notes = _dedupe(sub, ["flops_fraction", "method_label"])
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
            name=_slug("vision_accuracy", g["arch"], g["dataset"], g["n_calib"]),
            title=f"Top-1 accuracy (%) vs FLOPs removed — {g['arch']} on {g['dataset']}",
            caption=("Top-1 test accuracy (%) of the sliced model, no fine-tuning, per method and target fraction "
                     "of FLOPs removed; dense = the unpruned checkpoint. " + _provenance_caption(sub, "vision")),
            data=data, label_cols=["method"], value_cols=vcols, directions={c: HIGHER for c in vcols},
            formats={c: ".2f" for c in vcols}, reference=pd.Series(ref), notes=_fixture_note(sub) + notes,
            margins={c: binomial_margin(_eval_n(sub)) for c in vcols},
            margin_note=BINOMIAL_NOTE.format(n=_eval_n(sub))))
    return tables


def speedup_table(records) -> list[Table]:
    """Every lm / vision run with both a FLOPs speedup and a measured one: the measured vs FLOPs check."""
    rows = []
    for exp in sorted({r.experiment for r in records if r.pipeline in ("lm", "vision")
                       and not r.experiment.startswith("ablation")}):
        for pipeline in ("lm", "vision"):
            df = frame(records, exp, pipeline)
            if df.empty or "latency_speedup" not in df:
                continue
            df = df.assign(method_label=_method_label(df))
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
        notes=_fixture_note(data), margins={"measured speedup": relative_margin(SPEEDUP_NOISE)},
        margin_note=f"{SPEEDUP_NOISE:.0%} of the value, the spread of repeated latency medians")]


# ---------------------------------------------------------------------------------------------------
# solver runtime


def runtime_tables(records, experiment: str = "pruning_runtime") -> list[Table]:
    """Rows = shape × method; prune seconds ↓, objective ↓, ratio to one p×p inverse, ZipLM / method time."""
    df = frame(records, experiment, "solver")
    if df.empty:
        return []
    df = df.assign(method_label=_method_label(df))
    df, notes = _dedupe(df, ["shape", "keep", "seed", "threads", "method_label"])
    rows = []
    for (shape, _keep), sub in df.groupby(["shape", "keep"], sort=False):
        zip_s = sub.loc[sub["method"] == "ziplm", "prune_seconds"]
        zip_s = zip_s.iloc[-1] if len(zip_s) else np.nan
        inv = sub["inverse_seconds"].median()
        r0 = sub.iloc[0]
        for _, r in _method_sorted(sub, []).iterrows():
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
        group_by=["shape"], notes=_fixture_note(df) + notes,
        margins={"prune [s]": relative_margin(TIME_NOISE), "× one inverse": relative_margin(TIME_NOISE),
                 "objective": relative_margin(1e-9), "gap to dense [%]": relative_margin(1e-6)},
        margin_note=f"{TIME_NOTE}; objectives: 1e-9 relative (equal solutions tie)")]


# ---------------------------------------------------------------------------------------------------
# ablations


def calibration_tables(records, experiment: str = "ablation_calibration") -> list[Table]:
    """Calibration-size ablation: rows = method (× target), columns = calibration size."""
    tables = []
    lm = frame(records, experiment, "lm")
    if not lm.empty:
        for g, sub in _groups(lm, ["model", "calib_corpus", "seqlen"]):
            sub = sub.assign(method_label=_method_label(sub))
            sub, notes = _dedupe(sub, ["target", "method_label", "n_samples"])
            for c in [c.split(":", 1)[1] for c in _cols(sub, "ppl:")]:
                sizes = sorted(sub["n_samples"].dropna().unique())
                pv = sub.pivot_table(index=["target", "method_label"], columns="n_samples", values=f"ppl:{c}",
                                     aggfunc="last", dropna=False).reindex(columns=sizes)
                vcols = [f"n={int(s)}" for s in sizes]
                data = pd.DataFrame({"target": [i[0] for i in pv.index], "method": [i[1] for i in pv.index],
                                     **{v: pv[s].to_numpy() for v, s in zip(vcols, sizes)}})
                tables.append(Table(
                    name=_slug("ablation_calibration", g["model"], c), title=f"Calibration size — {g['model']}, {c}",
                    caption=(f"Perplexity on {c} vs the number of calibration segments n "
                             f"({describe(sub['seqlen'])} tokens each, from {describe(sub['calib_corpus'])}). "
                             + _provenance_caption(sub, "lm")),
                    data=data, label_cols=["target", "method"], value_cols=vcols,
                    directions={v: LOWER for v in vcols}, formats={v: ".2f" for v in vcols}, group_by=["target"],
                    notes=_fixture_note(sub) + notes))
    vis = frame(records, experiment, "vision")
    if not vis.empty:
        for g, sub in _groups(vis, ["arch", "dataset", "checkpoint"]):
            sub = sub.assign(method_label=_method_label(sub))
            sub, notes = _dedupe(sub, ["flops_fraction", "method_label", "n_calib"])
            sizes = sorted(sub["n_calib"].dropna().unique())
            pv = sub.pivot_table(index=["flops_fraction", "method_label"], columns="n_calib", values="top1",
                                 aggfunc="last", dropna=False).reindex(columns=sizes)
            vcols = [f"n={int(s)}" for s in sizes]
            data = pd.DataFrame({"target": [f"FLOPs −{i[0]:.0%}" for i in pv.index],
                                 "method": [i[1] for i in pv.index],
                                 **{v: 100 * pv[s].to_numpy() for v, s in zip(vcols, sizes)}})
            tables.append(Table(
                name=_slug("ablation_calibration", g["arch"], g["dataset"]),
                title=f"Calibration size — {g['arch']} on {g['dataset']}",
                caption=("Top-1 accuracy (%) vs the number of calibration images n. "
                         + _provenance_caption(sub, "vision")),
                data=data, label_cols=["target", "method"], value_cols=vcols,
                directions={v: HIGHER for v in vcols}, formats={v: ".2f" for v in vcols}, group_by=["target"],
                notes=_fixture_note(sub) + notes, margins={v: binomial_margin(_eval_n(sub)) for v in vcols},
                margin_note=BINOMIAL_NOTE.format(n=_eval_n(sub))))
    return tables


def _tp_frame(records, experiment: str) -> list[tuple[str, pd.DataFrame]]:
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


def _tp_margin(column: str, sub: pd.DataFrame) -> tuple[Any, str]:
    if column == "top1":
        return binomial_margin(_eval_n(sub)), BINOMIAL_NOTE.format(n=_eval_n(sub))
    if column == "prune_seconds":
        return relative_margin(TIME_NOISE), TIME_NOTE
    if column == "objective":
        return relative_margin(1e-9), "objectives: 1e-9 relative (equal solutions tie)"
    return None, ""


def tp_tables(records, experiment: str = "ablation_tp") -> list[Table]:
    """t̂/p̂ grid: rows = p̂, columns = t̂, one table per metric; the best cell of the grid in bold."""
    tables = []
    for pipeline, df in _tp_frame(records, experiment):
        if df.empty:
            continue
        keys = {"lm": ["model", "calib_corpus", "n_samples", "target"], "vision": ["arch", "dataset", "n_calib",
                                                                                  "flops_fraction"],
                "solver": ["shape", "keep"]}[pipeline]
        for g, sub in _groups(df, keys):
            sub, notes = _dedupe(sub, ["p_hat", "t_hat"])
            metrics = []
            for col, label, d, scale, fmt in TP_METRICS[pipeline]:
                cols = _cols(sub, col[:-1]) if col.endswith("*") else [col]
                for c in cols:
                    if c in sub and sub[c].notna().any():
                        metrics.append((c, f"{label} on {c.split(':', 1)[1]}" if ":" in c else label, d, scale, fmt))
            what = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in g.items())
            for c, label, d, scale, fmt in metrics:
                margin, note = _tp_margin(c, sub)
                pv = sub.pivot_table(index="p_hat", columns="t_hat", values=c, aggfunc="last", dropna=False)
                pv = pv.sort_index().sort_index(axis=1)
                vcols = [f"t̂={t:g}" for t in pv.columns]
                data = pd.DataFrame({"p̂": [f"{p:g}" for p in pv.index],
                                     **{v: scale * pv[t].to_numpy() for v, t in zip(vcols, pv.columns)}})
                tables.append(Table(
                    name=_slug("ablation_tp", pipeline, *g.values(), c.replace("ppl:", "ppl-")),
                    title=f"t̂/p̂ ablation — {label} ({what})",
                    caption=(f"OSSCAR {label} over its p̂ (groups removed per stage-A step, rows) and t̂ (groups "
                             f"changed per local-search step, columns). {_provenance_caption(sub, pipeline)}"),
                    data=data, label_cols=["p̂"], value_cols=vcols, directions={v: d for v in vcols},
                    formats={v: fmt for v in vcols}, scope="table", notes=_fixture_note(sub) + notes,
                    margins={v: margin for v in vcols}, margin_note=note))
    return tables


# ---------------------------------------------------------------------------------------------------

BUILDERS: dict[str, Callable[..., list[Table]]] = {
    "lm_perplexity": lm_perplexity_tables,
    "lm_paired": lm_paired_tables,
    "lm_zeroshot": lm_zero_shot_tables,
    "lm_cost": lm_cost_tables,
    "lm_layer_error": lm_layer_error_tables,
    "vision_accuracy": vision_accuracy_tables,
    "speedup": speedup_table,
    "pruning_runtime": runtime_tables,
    "ablation_calibration": calibration_tables,
    "ablation_tp": tp_tables,
}


def all_tables(records) -> dict[str, list[Table]]:
    """Section name → its tables (possibly empty), in report order."""
    return {name: build(records) for name, build in BUILDERS.items()}
