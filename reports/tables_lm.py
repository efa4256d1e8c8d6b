"""Language-model tables: perplexity, zero-shot accuracy, paired ratio to ZipLM, pruning cost, layer error,
and the LM ablations of #16 (calibration size, damping) over calibration seeds."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from reports.lm_ablation import CALIBRATION, DAMPING, REFERENCE, LmAblation, ablation_runs, seed_ratios, seed_summary
from reports.lm_ablation import corpora as ab_corpora
from reports.paired import paired_nll_ratio, paired_ratios
from reports.records import describe, frame, missing_metrics
from reports.table import HIGHER, LOWER, Table, binomial_margin, relative_margin
from reports.tables_common import (BINOMIAL_NOTE, MEMORY_NOISE, SPEEDUP_NOISE, TIME_NOISE, TIME_NOTE, config_groups,
                                   dedupe, eval_n, fixture_note, method_labels, method_sorted, present_cols,
                                   provenance_caption, slug)

# (column title, frame column) of the layer-error tables, per consumer kind
LAYER_ERROR_COLS = [(f"{name} {what}", f"err_{which}:{part}") for part, name in (("attn", "attention"), ("mlp", "MLP"))
                    for what, which in (("calibration", "calib"), ("held-out", "heldout"))]

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
    for i, r in method_sorted(sub, ["target_sort"]).iterrows():
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
    for g, sub in config_groups(df, ["model", "calib_corpus", "n_samples", "seqlen"]):
        sub = sub.assign(method_label=method_labels(sub))
        sub, notes = dedupe(sub, ["target", "method_label"])
        corpora = [c.split(":", 1)[1] for c in present_cols(sub, "ppl:")]
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
            name=slug("lm_perplexity", g["model"], g["calib_corpus"], g["n_samples"]),
            title=f"Perplexity — {g['model']}",
            caption=(f"Perplexity (exp of mean token NLL, windows of {describe(sub['eval_seqlen'] if 'eval_seqlen' in sub else sub['seqlen'])} tokens, "
                     f"{describe(sub['eval_windows'])} windows per corpus) per evaluation corpus "
                     f"({', '.join(corpora)}), method and target. " + provenance_caption(sub, "lm")),
            data=data, label_cols=["target", "method"], value_cols=corpora,
            directions={c: LOWER for c in corpora}, formats={c: ".2f" for c in corpora}, group_by=["target"],
            reference=data["_ref"], notes=fixture_note(sub) + notes
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
    for g, sub in config_groups(df, ["model", "calib_corpus", "n_samples", "seqlen"]):
        sub = sub.assign(method_label=method_labels(sub))
        sub, notes = dedupe(sub, ["target", "method_label"])
        for metric in ("acc", "acc_norm"):
            cols = present_cols(sub, f"{metric}:")
            if not cols:
                continue
            tasks = [c.split(":", 1)[1] for c in cols]
            n_ex = eval_n(sub, "zero_shot_limit")
            data = _lm_rows(sub, tasks, lambda t, metric=metric: f"{metric}:{t}", scale=100)
            data["mean"] = data[tasks].mean(axis=1, skipna=False)  # only when every task is present
            vcols = tasks + ["mean"]
            tnotes = list(notes)
            missing = missing_metrics(sub, cols)
            if missing:
                tnotes.append("Missing values: " + ", ".join(f"{k} in {v} record(s)" for k, v in missing.items())
                              + " (mean left empty for those rows).")
            tables.append(Table(
                name=slug("lm_zeroshot", metric, g["model"], g["calib_corpus"], g["n_samples"]),
                title=f"Zero-shot {metric} (%) — {g['model']}",
                caption=(f"lm-eval zero-shot {metric} in % (lm-eval {describe(sub['lm_eval_version'])}, "
                         f"limit {describe(sub['zero_shot_limit'])} examples per task). "
                         + provenance_caption(sub, "lm")),
                data=data, label_cols=["target", "method"], value_cols=vcols,
                directions={c: HIGHER for c in vcols}, formats={c: ".1f" for c in vcols}, group_by=["target"],
                reference=data["_ref"], notes=fixture_note(sub) + tnotes,
                margins={**{t: binomial_margin(n_ex) for t in tasks}, "mean": binomial_margin(n_ex * len(tasks))},
                margin_note=BINOMIAL_NOTE.format(n=n_ex) + " per task"))
    return tables


def lm_paired_tables(records, experiment: str = "lm_perplexity", reference: str = "ziplm") -> list[Table]:
    """Per (model, calibration, corpus): each method's perplexity relative to ``reference`` on the
    same evaluation windows (:func:`paired_nll_ratio`), per target. Needs ``window_nll`` in the records."""
    df = frame(records, experiment, "lm")
    tables: list[Table] = []
    if df.empty:
        return tables
    for g, sub in config_groups(df, ["model", "calib_corpus", "n_samples", "seqlen"]):
        sub = sub.assign(method_label=method_labels(sub))
        sub, notes = dedupe(sub, ["target", "method_label"])
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
                name=slug("lm_paired", g["model"], g["calib_corpus"], g["n_samples"], c),
                title=f"Perplexity relative to {reference} on the same windows — {g['model']}, {c}",
                caption=(f"ppl(method) / ppl({reference}) on identical {c} windows, with a 95% range from the "
                         "paired per-window NLL differences (exp(mean ± 1.96·SE)); a range that contains 1 "
                         f"means the windows cannot tell the two apart; bold: a range entirely below 1 (better than "
                         f"{reference}). " + provenance_caption(sub, "lm")),
                data=data, label_cols=["target", "method"], value_cols=["ppl ratio", "95% low", "95% high", "windows"],
                directions={"ppl ratio": LOWER}, formats={"ppl ratio": ".3f", "95% low": ".3f", "95% high": ".3f",
                                                          "windows": ".0f"},
                group_by=["target"], notes=fixture_note(sub) + notes, significant=better))
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
    for g, sub in config_groups(df, ["model", "calib_corpus", "n_samples", "seqlen"]):
        sub = sub.assign(method_label=method_labels(sub),
                         params_kept=100 * sub["params_pruned"] / sub["params_dense"])
        sub, notes = dedupe(sub, ["target", "method_label"])
        present = [s for s in spec if sub[s[1]].notna().any()]
        if not present:
            continue
        data = pd.DataFrame({"target": sub["target"], "method": sub["method_label"], "_s": sub["target_sort"],
                             **{name: sub[col] for name, col, _, _ in present}})
        data = method_sorted(data, ["_s"], col="method")
        absent = [name for name, col, _, _ in spec if not sub[col].notna().any()]
        if absent:
            notes.append("Not recorded: " + ", ".join(absent) + ".")
        lat = describe(sub["latency_point"].replace("", np.nan))
        tables.append(Table(
            name=slug("lm_cost", g["model"], g["calib_corpus"], g["n_samples"]),
            title=f"Pruning cost, memory and speedup — {g['model']}",
            caption=("Wall time of the whole sequential pruning and of the solver alone; peak resident memory "
                     "(ru_maxrss of the run's process) up to the end of pruning and over the whole run (incl. "
                     "evaluation); parameters kept; total FLOPs-per-token "
                     f"speedup and measured prefill speedup of the sliced model (latency point: {lat}). "
                     + provenance_caption(sub, "lm")),
            data=data, label_cols=["target", "method"], value_cols=[p[0] for p in present],
            directions={name: d for name, _, d, _ in present if d}, formats={name: f for name, _, _, f in present},
            group_by=["target"], notes=fixture_note(sub) + notes
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
    spec = LAYER_ERROR_COLS
    for g, sub in config_groups(df, ["model", "calib_corpus", "n_samples", "seqlen"]):
        sub = sub.assign(method_label=method_labels(sub))
        sub, notes = dedupe(sub, ["target", "method_label"])
        if not sub["err_heldout:attn"].notna().any() and not sub["err_heldout:mlp"].notna().any():
            continue
        data = pd.DataFrame({"target": sub["target"], "method": sub["method_label"], "_s": sub["target_sort"],
                             **{name: sub[col] for name, col in spec}})
        for part in ("attention", "MLP"):
            data[f"{part} ratio"] = data[f"{part} held-out"] / data[f"{part} calibration"]
        data = method_sorted(data, ["_s"], col="method")
        cols = [c for part in ("attention", "MLP") for c in (f"{part} calibration", f"{part} held-out", f"{part} ratio")]
        missing = missing_metrics(sub, [col for _, col in spec])
        if missing:
            notes.append("Missing values: " + ", ".join(f"{k} in {v} record(s)" for k, v in missing.items()) + ".")
        tables.append(Table(
            name=slug("lm_layer_error", g["model"], g["calib_corpus"], g["n_samples"]),
            title=f"Layer error: calibration vs held-out — {g['model']}",
            caption=("Relative reconstruction error ½‖X(W − Ŵ)‖² / ½‖XŴ‖² of every pruned consumer (W: pruned, "
                     "refit weights; Ŵ: dense), averaged over the layers of each kind: on the calibration "
                     "inputs the solver fitted, and on held-out windows of the calibration text (disjoint from "
                     "the calibration and evaluation windows) pushed through the same pruned blocks; ratio = "
                     "held-out / calibration (> 1: the refit generalises less well than its objective says). "
                     + provenance_caption(sub, "lm")),
            data=data, label_cols=["target", "method"], value_cols=cols,
            directions={c: LOWER for c in cols if not c.endswith("ratio")},
            formats={c: (".2f" if c.endswith("ratio") else ".4f") for c in cols},
            group_by=["target"], notes=fixture_note(sub) + notes
            + ["Errors on raw XᵀX (no damping); calibration column = the layer objective's reconstruction error."]))
    return tables


# ---------------------------------------------------------------------------------------------------
# the LM ablations of #16 (calibration size, damping): spread over seeds, paired ratio to ZipLM per seed


def _x_label(spec: LmAblation, sub: pd.DataFrame) -> pd.Series:
    """The swept setting as a row label: tokens with their n × seqlen, or λ (* = a borrowed run)."""
    if spec.x == "calib_tokens":
        return sub.apply(lambda r: f"{r['calib_tokens']:.0f} ({r['calib_tokens'] / r['seqlen']:.0f} × "
                         f"{r['seqlen']:.0f})", axis=1)
    return sub.apply(lambda r: f"{r[spec.x]:g}" + (" *" if r["borrowed"] else ""), axis=1)


TIE_RULE = ("Ratio per seed: ppl(method) / ppl(ZipLM) of the same calibration seed on the same evaluation windows, "
            "exp of the mean per-window NLL difference (as in the paired table); its mean is the geometric mean "
            "over seeds. Tie rule (vs ZipLM column): a tie when 1 lies inside the spread (min–max) of the per-seed "
            "ratios, lower / higher when every seed's ratio is below / above 1, not called from a single seed; "
            "bold: a mean ratio whose seeds all lie below 1.")


def lm_ablation_tables(records, spec: LmAblation = CALIBRATION) -> list[Table]:
    """Per (group, corpus): rows = setting × method; perplexity over seeds (mean, min, max), the ratio to
    ZipLM per seed and its geometric mean with :func:`reports.lm_ablation.seed_verdict`, and the mean layer
    error on the calibration inputs and on held-out windows."""
    df, notes = ablation_runs(records, spec)
    tables: list[Table] = []
    for g, sub in config_groups(df, list(spec.keys)):
        for c in ab_corpora(sub):
            summ = seed_summary(sub, seed_ratios(sub, c, spec), c, spec.x)
            if summ.empty:
                continue
            label = spec.x_label.split(" (", 1)[0]
            rcols = [k for k in summ.columns if k.startswith("ratio:")]
            data = pd.DataFrame({label: _x_label(spec, summ.assign(seqlen=g.get("seqlen", np.nan))),
                                 "method": summ["method_label"], "seeds": summ["seeds"],
                                 "ppl mean": summ["ppl mean"], "ppl min": summ["ppl min"], "ppl max": summ["ppl max"],
                                 **{f"ratio s={k.split(':', 1)[1]}": summ[k] for k in rcols},
                                 "ratio (geo. mean)": summ["ratio gmean"], f"vs {REFERENCE}": summ["verdict"],
                                 "calib. error": summ["err_calib:all"], "held-out error": summ["err_heldout:all"]})
            data["held-out / calib."] = data["held-out error"] / data["calib. error"]
            vcols = [k for k in data.columns if k not in (label, "method")]
            bold = pd.DataFrame(False, index=data.index, columns=vcols)
            bold["ratio (geo. mean)"] = data[f"vs {REFERENCE}"] == "lower"
            what = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in g.items()
                             if k in ("damping", "n_samples", "target"))
            tables.append(Table(
                name=slug("lm_calibration" if spec is CALIBRATION else "lm_damping", g["model"], g["calib_corpus"], c),
                title=f"{label.capitalize()} ablation — {g['model']}, {c} ({what})",
                caption=(f"Perplexity on {c} per {label} and method over calibration seeds (mean, min, max), the ratio "
                         f"to {REFERENCE}, and the relative layer error ½‖X(W − Ŵ)‖² / ½‖XŴ‖² averaged over every "
                         "pruned layer (attention and MLP) and over seeds, on the calibration inputs and on held-out "
                         "windows of the calibration text. " + TIE_RULE + " " + provenance_caption(sub, "lm")),
                data=data, label_cols=[label, "method"], value_cols=vcols,
                directions={"ppl mean": LOWER, "ratio (geo. mean)": LOWER, "held-out error": LOWER},
                formats={**{k: ".2f" for k in ("ppl mean", "ppl min", "ppl max", "held-out / calib.")},
                         **{k: ".3f" for k in vcols if k.startswith("ratio")}, "seeds": ".0f",
                         "calib. error": ".4f", "held-out error": ".4f"},
                group_by=[label], notes=fixture_note(sub) + notes, significant=bold,
                significant_note="Bold: the per-seed ratio to the reference is below 1 on every seed (not a "
                                 "significance test: see the paired 95% ranges in the figure)"))
    if len(tables) == 1:  # the usual case: one model, one corpus
        tables[0].name = "lm_calibration" if spec is CALIBRATION else "lm_damping"
    return tables


def lm_calibration_tables(records) -> list[Table]:
    return lm_ablation_tables(records, CALIBRATION)


def lm_damping_tables(records) -> list[Table]:
    return lm_ablation_tables(records, DAMPING)


def lm_ablation_layer_error_tables(records, spec: LmAblation) -> list[Table]:
    """The layer-error table of an LM ablation: rows = setting × method, each column the mean over seeds."""
    df, notes = ablation_runs(records, spec)
    tables: list[Table] = []
    if df.empty or not df.get("err_heldout:all", pd.Series(dtype=float)).notna().any():
        return tables
    for g, sub in config_groups(df, list(spec.keys)):
        label = spec.x_label.split(" (", 1)[0]
        means = sub.groupby([spec.x, "method_label"], sort=True).agg(
            borrowed=("borrowed", "any"), seeds=("seed", "nunique"),
            **{name: (col, "mean") for name, col in LAYER_ERROR_COLS}).reset_index()
        means = method_sorted(means, [spec.x]).reset_index(drop=True)
        for part in ("attention", "MLP"):
            means[f"{part} ratio"] = means[f"{part} held-out"] / means[f"{part} calibration"]
        cols = [c for part in ("attention", "MLP") for c in (f"{part} calibration", f"{part} held-out", f"{part} ratio")]
        data = pd.DataFrame({label: _x_label(spec, means.assign(seqlen=g.get("seqlen", np.nan))),
                             "method": means["method_label"], "seeds": means["seeds"], **{c: means[c] for c in cols}})
        tables.append(Table(
            name=slug("lm_layer_error", spec.experiment, g["model"], g["calib_corpus"]),
            title=f"Layer error: calibration vs held-out — {spec.experiment}, {g['model']}",
            caption=(f"As the table above, per {label} and method of {spec.experiment}, each value the mean over "
                     "calibration seeds; ratio = mean held-out / mean calibration error. "
                     + provenance_caption(sub, "lm")),
            data=data, label_cols=[label, "method"], value_cols=["seeds", *cols],
            formats={"seeds": ".0f", **{c: (".2f" if c.endswith("ratio") else ".4f") for c in cols}},
            notes=fixture_note(sub) + notes + ["Not ranked: the spread over seeds is in the ablation's own table."]))
    return tables


def lm_layer_error_section(records) -> list[Table]:
    """The lm_layer_error section: the main experiment's table, then one per LM ablation."""
    return lm_layer_error_tables(records) + [t for spec in (CALIBRATION, DAMPING)
                                             for t in lm_ablation_layer_error_tables(records, spec)]
