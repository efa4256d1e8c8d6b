"""The language-model ablations of issue #16 as data, shared by their tables and figures.

* ``ablation_calibration_lm``: x = calibration tokens (n_samples × seqlen), OSSCAR / ZipLM / MP+.
* ``ablation_damping_lm``: x = damping λ (H + λ·mean(diag H)·I), OSSCAR / ZipLM. Its default-λ points
  are the ``ablation_calibration_lm`` runs whose configuration equals a damping run's apart from
  damping, method and seed: they are read from there (*borrowed*), not rerun.

Per run: perplexity per corpus and the per-window NLLs; per (setting, seed): each method's
perplexity over ZipLM's on the same windows (:func:`reports.paired.paired_ratios`, the same paired
ratio as the ``lm_paired`` table; the seed fixes the calibration draw, so both runs saw the same
calibration data); per (setting, method): the spread over seeds and :func:`seed_verdict`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from reports.paired import paired_ratios
from reports.records import frame
from reports.tables_common import dedupe, method_labels, method_rank
from benchmarks.store import RunRecord, canonical_json

REFERENCE = "ziplm"
GRID_FIELDS = ("method", "seed", "damping")  # ignored when matching a borrowed run to the damping runs


@dataclass(frozen=True)
class LmAblation:
    """One swept setting: its experiment, the frame column it sweeps, and the provenance group keys."""

    experiment: str
    x: str  # frame column of the swept setting
    x_label: str  # axis label, with units
    keys: tuple[str, ...]  # one table / figure per distinct value of these columns
    borrow_from: str | None = None  # experiment whose matching runs give this sweep's default point


CALIBRATION = LmAblation("ablation_calibration_lm", "calib_tokens", "calibration tokens (n_samples × seqlen, log)",
                         ("model", "calib_corpus", "seqlen", "target", "damping"))
DAMPING = LmAblation("ablation_damping_lm", "damping", "damping λ (H + λ·mean diag(H)·I, log)",
                     ("model", "calib_corpus", "n_samples", "seqlen", "target"), borrow_from=CALIBRATION.experiment)


def _shared(cfg: dict) -> str:
    return canonical_json({k: v for k, v in cfg.items() if k not in GRID_FIELDS})


def borrowed_records(records: Sequence[RunRecord], spec: LmAblation) -> tuple[list[RunRecord], list[str]]:
    """Runs of ``spec.borrow_from`` with a method of ``spec`` and a configuration equal to one of its
    runs' apart from :data:`GRID_FIELDS`; and a note saying what was borrowed (or why nothing was)."""
    own = [r for r in records if r.experiment == spec.experiment and r.pipeline == "lm"]
    if spec.borrow_from is None or not own:
        return [], []
    shared = {_shared(r.config) for r in own}
    methods = {r.config.get("method") for r in own}
    sizes = {r.config.get("n_samples") for r in own}
    cands = [r for r in records if r.experiment == spec.borrow_from and r.pipeline == "lm"
             and r.config.get("method") in methods]
    used = [r for r in cands if _shared(r.config) in shared]
    lams = sorted({r.config.get("damping") for r in used if r.config.get("damping") is not None})
    if used:
        note = (f"λ = {', '.join(f'{v:g}' for v in lams)} (marked *): {len(used)} run(s) of {spec.borrow_from}, "
                "whose configuration equals this sweep's apart from damping, method and seed (read, not rerun).")
    else:
        near = [r for r in cands if r.config.get("n_samples") in sizes]
        diff = sorted({k for r in near for k in set(r.config) | set(own[0].config)
                       if k not in GRID_FIELDS and r.config.get(k) != own[0].config.get(k)})
        note = (f"No run of {spec.borrow_from} matches this sweep's configuration apart from damping, method and "
                "seed: the default-λ points are absent"
                + (f" ({len(near)} run(s) at the same n_samples differ in: {', '.join(diff)})." if near else "."))
    return used, [note]


def ablation_runs(records: Sequence[RunRecord], spec: LmAblation) -> tuple[pd.DataFrame, list[str]]:
    """One row per run of ``spec`` (plus the borrowed ones, ``borrowed`` True), the latest per
    (group, x, method, seed); columns of :func:`reports.records.lm_row` plus ``method_label``,
    ``calib_tokens`` and ``borrowed``. Empty when ``spec.experiment`` has no lm record."""
    own = [r for r in records if r.experiment == spec.experiment and r.pipeline == "lm"]
    if not own:
        return pd.DataFrame(), []
    borrowed, notes = borrowed_records(records, spec)
    df = frame(own + borrowed, None, "lm")
    df = df.assign(method_label=method_labels(df), borrowed=df["experiment"] != spec.experiment,
                   calib_tokens=pd.to_numeric(df["n_samples"], errors="coerce")
                   * pd.to_numeric(df["seqlen"], errors="coerce"))
    for k in spec.keys:
        if k not in df:
            df[k] = np.nan
    df, more = dedupe(df, [*spec.keys, spec.x, "method_label", "seed"])
    return df.reset_index(drop=True), notes + more


def corpora(df: pd.DataFrame) -> list[str]:
    """Evaluation corpora with a perplexity in some row."""
    return [c.split(":", 1)[1] for c in df.columns if c.startswith("ppl:") and df[c].notna().any()]


def seed_ratios(df: pd.DataFrame, corpus: str, spec: LmAblation) -> pd.DataFrame:
    """Per (group, x, seed) and method: ppl / ppl(ZipLM) of the same seed on the same windows, with
    the paired 95% range over windows. Columns: ``spec.keys``, x, seed, method_label, ratio, lo, hi, windows."""
    rows = []
    if df.empty or f"window_nll:{corpus}" not in df:
        return pd.DataFrame(rows)
    for vals, sub in df.groupby([*spec.keys, spec.x, "seed"], dropna=False, sort=True):
        pr = paired_ratios(sub, corpus, REFERENCE)
        if pr.empty:
            continue
        for _, r in pr[~pr["is_reference"]].iterrows():
            rows.append({**dict(zip([*spec.keys, spec.x, "seed"], vals)), "method_label": r["method_label"],
                         "ratio": r["ratio"], "lo": r["lo"], "hi": r["hi"], "windows": r["windows"]})
    return pd.DataFrame(rows)


def geo_mean(values: Iterable[float]) -> float:
    """exp(mean log v) of the finite positive values (NaN when there are none)."""
    v = [math.log(x) for x in values if x is not None and math.isfinite(x) and x > 0]
    return math.exp(sum(v) / len(v)) if v else math.nan


def seed_verdict(ratios: Sequence[float]) -> str:
    """The tie rule: a method ties ZipLM when 1 lies inside the spread (min–max) of its per-seed
    ratios; ``lower`` / ``higher`` when every seed's ratio is below / above 1; not called from one seed."""
    r = [x for x in ratios if x is not None and math.isfinite(x)]
    if len(r) < 2:
        return "1 seed" if r else "—"
    if max(r) < 1:
        return "lower"
    if min(r) > 1:
        return "higher"
    return "tie"


def seed_summary(df: pd.DataFrame, ratios: pd.DataFrame, corpus: str, x: str) -> pd.DataFrame:
    """One group's rows per (x, method): seeds, ppl mean/min/max over seeds, the per-seed ratio to
    ZipLM (``ratio:<seed>``), their geometric mean and verdict, and the mean layer errors over seeds."""
    col = f"ppl:{corpus}"
    seeds = sorted(df["seed"].dropna().unique())
    rows = []
    for (xv, m), sub in df.groupby([x, "method_label"], sort=True):
        ppl = sub[col].dropna() if col in sub else pd.Series(dtype=float)
        row = {x: xv, "method_label": m, "borrowed": bool(sub["borrowed"].any()), "seeds": len(ppl),
               "ppl mean": ppl.mean(), "ppl min": ppl.min(), "ppl max": ppl.max()}
        r = ratios[(ratios[x] == xv) & (ratios["method_label"] == m)] if not ratios.empty else ratios
        per_seed = dict(zip(r["seed"], r["ratio"])) if not r.empty else {}
        is_ref = str(m) == REFERENCE
        for s in seeds:
            row[f"ratio:{s}"] = 1.0 if is_ref and s in set(sub["seed"]) else per_seed.get(s, math.nan)
        row["ratio gmean"] = 1.0 if is_ref else geo_mean(per_seed.values())
        row["verdict"] = "reference" if is_ref else seed_verdict(list(per_seed.values()))
        for which in ("calib", "heldout"):
            c = f"err_{which}:all"
            row[c] = sub[c].mean() if c in sub and sub[c].notna().any() else math.nan
        rows.append(row)
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    out["_m"] = out["method_label"].map(method_rank)
    return out.sort_values([x, "_m"], kind="stable").drop(columns="_m").reset_index(drop=True)
