"""What every report table builder shares: method order and labels, grouping by provenance, captions,
de-duplication and the noise levels the tables rank with.

Builders (``reports.tables_*``) return one table per provenance group (model, calibration corpus and
size...), and every caption says which model, corpus and calibration size the numbers came from. Each
ranked column carries its noise (binomial for accuracies, the paired range for perplexities, the
run-to-run spread for single timings), so bold marks only a difference larger than the noise.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from reports.records import describe

# single wall-time measurements on a 2-core machine vary by about this much between runs
TIME_NOISE = 0.3
SPEEDUP_NOISE = 0.05  # medians of repeated latency measurements
MEMORY_NOISE = 0.05  # sampled RSS peaks (allocator caching, sampling interval)


def slug(*parts: Any) -> str:
    s = "_".join(str(p) for p in parts if p is not None and str(p) != "")
    return "".join(ch if ch.isalnum() or ch == "_" else "-" for ch in s).strip("-").lower()


# the paper's order: baselines first, OSSCAR last (unknown methods after, alphabetically)
METHOD_ORDER = ("dense", "mp", "mp+", "lasso", "fpgm", "chip", "thinet", "ziplm", "osscar")


def method_rank(label: Any) -> tuple[int, str]:
    base = str(label).split(" (", 1)[0]
    return (METHOD_ORDER.index(base) if base in METHOD_ORDER else len(METHOD_ORDER), str(label))


def method_sorted(df: pd.DataFrame, first: list[str], col: str = "method_label") -> pd.DataFrame:
    """Sort by ``first`` columns, then by the paper's method order."""
    key = df[col].map(method_rank)
    return df.assign(_mrank=key).sort_values([*first, "_mrank"], kind="stable").drop(columns="_mrank")


def method_labels(df: pd.DataFrame) -> pd.Series:
    """The method name, with its parameters when it has any (so distinct settings stay distinct rows)."""
    params = df.get("method_params", pd.Series("", index=df.index)).fillna("")
    return df["method"].astype(str) + params.map(lambda p: f" ({p})" if p else "")


def dedupe(df: pd.DataFrame, keys: list[str]) -> tuple[pd.DataFrame, list[str]]:
    """Keep the latest record per ``keys`` (frames are sorted by finish time); say so when it drops any."""
    n = len(df)
    df = df.drop_duplicates(keys, keep="last")
    return df, ([f"{n - len(df)} older duplicate record(s) of the same configuration ignored (latest used)."]
                if len(df) < n else [])


def config_groups(df: pd.DataFrame, keys: list[str]):
    keys = [k for k in keys if k in df.columns]
    if not keys:
        yield {}, df
        return
    for vals, sub in df.groupby(keys, sort=True, dropna=False):
        vals = vals if isinstance(vals, tuple) else (vals,)
        yield dict(zip(keys, vals)), sub


def provenance_caption(sub: pd.DataFrame, pipeline: str) -> str:
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


def fixture_note(sub: pd.DataFrame) -> list[str]:
    if "fixture" in sub.columns and sub["fixture"].any():
        return ["FIXTURE DATA (hand-written test records, not measurements)."]
    return []


def eval_n(sub: pd.DataFrame, col: str = "eval_n") -> float:
    n = pd.to_numeric(sub.get(col, pd.Series(dtype=float)), errors="coerce").dropna()
    return float(n.min()) if len(n) else 0.0


BINOMIAL_NOTE = "95% half-width of the difference of two accuracies on {n:g} examples"
TIME_NOTE = f"single wall times: {TIME_NOISE:.0%} of the value, the run-to-run spread on this 2-core machine"


def present_cols(df: pd.DataFrame, prefix: str) -> list[str]:
    return [c for c in df.columns if c.startswith(prefix) and df[c].notna().any()]
