"""Tables of the claim (#27) and global-allocation (#26) sweeps: the readings, the arms, the allocations."""

from __future__ import annotations

import math

import pandas as pd

from reports.claim import (ALLOCATION_EXPERIMENT, CLAIM_EXPERIMENT, DRIFT_QUANTITIES, MATCH_TOLERANCE, arm_summary,
                           claim_runs, corpus_of, drift_by_arm, readings, timing_note, tracking)
from reports.records import describe
from reports.table import LOWER, Table
from reports.tables_common import fixture_note, provenance_caption, slug



def _range(lo: float, hi: float, spec: str = ".3g") -> str:
    return "—" if not (math.isfinite(lo) and math.isfinite(hi)) else f"{lo:{spec}}–{hi:{spec}}"


def claim_reading_table(df: pd.DataFrame, corpus: str) -> Table | None:
    r = readings(df, corpus)
    if r.empty:
        return None
    data = pd.DataFrame({
        "target": [f"{t:g}×" for t in r["target"]], "reading": r["reading"],
        "ZipLM arm": r["ziplm arm"], "OSSCAR arm": r["osscar arm"],
        "ppl ZipLM": r["ppl ziplm"], "ppl OSSCAR": r["ppl osscar"], "ZipLM/OSSCAR": r["ratio"],
        "95% range": [_range(a, b) for a, b in zip(r["lo"], r["hi"])],
        "per-seed range": [_range(a, b) for a, b in zip(r["seed_min"], r["seed_max"])],
        "seeds": r["seeds"], "block speedup ZipLM": r["speedup ziplm"], "block speedup OSSCAR": r["speedup osscar"],
        "matched": ["yes" if m else "no" for m in r["matched"]]})
    return Table(
        name=slug("claim_readings", corpus), title=f"The claim in each reading — {corpus}",
        caption=(f"Perplexity on {corpus} of ZipLM and OSSCAR (mean over seeds) and their ratio ZipLM/OSSCAR "
                 "(> 1: OSSCAR lower, the paper's direction; the paper reports 125× for OPT-2.7B at 2×), paired on "
                 "the same evaluation windows of the same calibration seed and pooled over windows and seeds, with "
                 "its 95% range and the range of the per-seed ratios. Block speedup: measured decoder-block prefill "
                 f"speedup (mean over seeds); matched: within {MATCH_TOLERANCE:.0%} of each other. "
                 + timing_note(df) + provenance_caption(df, "lm")),
        data=data, label_cols=["target", "reading", "ZipLM arm", "OSSCAR arm", "95% range", "per-seed range",
                               "matched"],
        value_cols=["ppl ZipLM", "ppl OSSCAR", "ZipLM/OSSCAR", "seeds", "block speedup ZipLM",
                    "block speedup OSSCAR"],
        formats={"ppl ZipLM": ".2f", "ppl OSSCAR": ".2f", "ZipLM/OSSCAR": ".3f", "seeds": ".0f",
                 "block speedup ZipLM": ".2f", "block speedup OSSCAR": ".2f"},
        notes=fixture_note(df))


def claim_arm_table(df: pd.DataFrame, corpus: str) -> Table | None:
    s = arm_summary(df, corpus)
    if s.empty:
        return None
    data = pd.DataFrame({
        "target": [f"{t:g}×" for t in s["target"]], "method · allocation": s["arm"], "seeds": s["seeds"],
        "ppl mean": s["ppl mean"], "ppl range": [_range(a, b, ".2f") for a, b in zip(s["ppl min"], s["ppl max"])],
        "block speedup": s["blocks_speedup"], "in run": s["blocks_speedup_in_run"], "model speedup": s["latency_speedup"],
        "predicted": s["predicted_speedup"], "block FLOPs": s["block_flops_speedup"],
        "allocation s": s["alloc_seconds"], "prune s": s["prune_seconds"]})
    return Table(
        name=slug("claim_arms", corpus), title=f"Every arm of the claim sweep — {corpus}",
        caption=(f"Per method, allocation and target block speedup, over calibration seeds: perplexity on {corpus} "
                 "(mean, range), the measured speedup of the decoder blocks and of the whole model (LM head "
                 "included) at prefill, the speedup the allocation predicted from its latency table, the block-FLOPs "
                 "ratio, and the seconds spent allocating (latency table, loss curves or candidate database, "
                 "search; databases are cached, so later runs reuse them) and pruning; in run: the block speedup "
                 "measured inside the run. " + timing_note(df) + provenance_caption(df, "lm")),
        data=data, label_cols=["target", "method · allocation", "ppl range"],
        value_cols=["seeds", "ppl mean", "block speedup", "in run", "model speedup", "predicted", "block FLOPs",
                    "allocation s", "prune s"],
        directions={"ppl mean": LOWER}, group_by=["target"],
        formats={"seeds": ".0f", "ppl mean": ".2f", "block speedup": ".2f", "in run": ".2f", "model speedup": ".2f",
                 "predicted": ".2f", "block FLOPs": ".2f", "allocation s": ".0f", "prune s": ".0f"},
        notes=fixture_note(df))


def drift_tables(df: pd.DataFrame, corpus: str) -> list[Table]:
    """#27 item 5: which quantity tracks perplexity (rank correlations over runs), and the quantities per arm."""
    if "drift_kl" not in df or df["drift_kl"].isna().all():
        return []
    tr = tracking(df, corpus)
    out = [Table(
        name=slug("claim_tracking", corpus), title=f"What tracks perplexity — {corpus}",
        caption=("Spearman rank correlation, over every run of the claim sweep at a target (each method, "
                 f"allocation and seed), between perplexity on {corpus} and each quantity of the chain from the "
                 "layer objective to the model's output; 1: the quantity orders the runs exactly as perplexity "
                 "does. Held-out: the run's held-out calibration windows, never used to prune. "
                 + provenance_caption(df, "lm")),
        data=pd.DataFrame({"target": [f"{t:g}×" for t in tr["target"]], "quantity": tr["what"],
                           "Spearman ρ with ppl": tr["spearman"], "runs": tr["runs"]}),
        label_cols=["target", "quantity"], value_cols=["Spearman ρ with ppl", "runs"],
        formats={"Spearman ρ with ppl": ".2f", "runs": ".0f"}, notes=fixture_note(df))]
    target = df["speedup_target"].max()
    by = drift_by_arm(df, corpus, target)
    names = {f"ppl:{corpus}": "ppl", "err_calib:all": "layer err (calib)", "err_heldout:all": "layer err (held-out)",
             "drift_final": "last-block drift", "drift_kl": "KL"}
    data = by.rename(columns={"arm": "method · allocation", **names})
    vcols = [names[c] for c in by.columns if c in names]
    out.append(Table(
        name=slug("claim_drift", corpus), title=f"From layer error to perplexity, per arm at {target:g}× — {corpus}",
        caption=("Means over seeds: perplexity, the layer objective (relative error on the calibration inputs), the "
                 "same on held-out inputs, the relative output error of the last block against the dense model "
                 "and the KL of the next-token distribution, both on held-out windows "
                 f"({'; '.join(f'{k}: {v}' for k, v in DRIFT_QUANTITIES.items())}). " + provenance_caption(df, "lm")),
        data=data, label_cols=["method · allocation"], value_cols=vcols, directions={v: LOWER for v in vcols},
        formats={v: ".4g" for v in vcols}, notes=fixture_note(df)))
    return out


def claim_tables(records) -> list[Table]:
    df = claim_runs(records)
    corpus = corpus_of(df) if not df.empty else None
    if corpus is None:
        return []
    tables = [t for t in (claim_reading_table(df, corpus), claim_arm_table(df, corpus)) if t is not None]
    return tables + drift_tables(df, corpus)


def allocation_tables(records) -> list[Table]:
    """The global-allocation sweep: per method and allocator, perplexity, predicted and measured block speedup,
    database build (seconds, size, solves) and search (seconds, stitched-model evaluations)."""
    df = claim_runs(records, ALLOCATION_EXPERIMENT)
    corpus = corpus_of(df) if not df.empty else None
    if corpus is None:
        return []
    claim = claim_runs(records, CLAIM_EXPERIMENT)
    if not claim.empty:  # the spdy counterparts: the claim sweep's runs at the same targets and seeds
        spdy = claim[(claim["allocation"] == "spdy") & claim["speedup_target"].isin(df["speedup_target"])
                     & claim["seed"].isin(df["seed"])]
        df = pd.concat([spdy, df], ignore_index=True)
    data = pd.DataFrame({
        "sweep": df["experiment"], "method · allocation": df["arm"], "target": [f"{t:g}×" for t in df["speedup_target"]], "seed": df["seed"],
        "ppl": df[f"ppl:{corpus}"], "layer error": df["err_calib:all"] if "err_calib:all" in df else math.nan,
        "predicted": df["predicted_speedup"], "block speedup": df["blocks_speedup"],
        "database s": df["db_seconds"], "database MB": df["db_bytes"] / 2**20, "solves": df["db_solver_calls"],
        "search s": df["search_seconds"], "evaluations": df["search_evaluations"]})
    return [Table(
        name=slug("allocation_global", corpus), title=f"Global allocation — {corpus}",
        caption=(f"spdy (the claim sweep's runs) and evolutionary searches over each method's own candidate database "
                 f"({describe(df['model'])}), then sequential pruning at the searched widths (except spdy/db). ppl on {corpus}; "
                 "spdy/db: the searched widths with the database's own weights (solved on the dense model's inputs, "
                 "no re-solve). Layer error: mean relative layer error on the calibration inputs the weights were "
                 "solved on (dense inputs for spdy/db, the pruned model's for the others). "
                 "predicted: the search's block speedup from the latency table; block speedup: measured at prefill. "
                 + timing_note(df) +
                 "database s / solves: this run's build (0 solves: reused from an earlier run, e.g. the claim "
                 "sweep's); search s / evaluations: stitched-model fitness calls. " + provenance_caption(df, "lm")),
        data=data, label_cols=["sweep", "method · allocation", "target", "seed"],
        value_cols=["ppl", "layer error", "predicted", "block speedup", "database s", "database MB", "solves",
                    "search s", "evaluations"],
        directions={"ppl": LOWER},
        formats={"ppl": ".2f", "layer error": ".4f", "predicted": ".2f", "block speedup": ".2f", "database s": ".0f",
                 "database MB": ".0f",
                 "solves": ".0f", "search s": ".0f", "evaluations": ".0f"},
        notes=fixture_note(df))]


__all__ = ["ALLOCATION_EXPERIMENT", "CLAIM_EXPERIMENT", "allocation_tables", "claim_tables"]
