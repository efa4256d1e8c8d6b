"""The paper's headline claim (#27) as data: OSSCAR vs ZipLM at a block speedup, in each reading.

Runs come from the ``claim_lm`` sweep: method × allocation × target block speedup × calibration seed. An
**arm** is one (method, allocation); a **reading** pairs a ZipLM arm with an OSSCAR arm (:data:`READINGS`):

* R1: both with uniform widths, the target by block FLOPs (``uniform``) or by the measured latency table
  (``uniform-latency``);
* R2: ZipLM with its runtime-aware, non-uniform widths (``runtime``) against OSSCAR with uniform widths at a
  measured target (``uniform-latency``; by FLOPs as a variant);
* R3: both with the same allocation scheme, each on its own layer solutions (``spdy``; ``runtime``).

Per reading and target: the perplexity ratio ZipLM / OSSCAR (> 1: OSSCAR lower, the paper's direction) paired
on the same evaluation windows of the same seed, pooled over windows and seeds (:func:`pooled_ratio`: exp of
the mean NLL difference, 95% range from its standard error), its per-seed range, and the measured
decoder-block speedups of both arms (``matched`` when within :data:`MATCH_TOLERANCE` of each other).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from reports.records import frame, retimed_speedups
from reports.tables_common import dedupe

CLAIM_EXPERIMENT = "claim_lm"
ALLOCATION_EXPERIMENT = "allocation_lm"  # the global-allocation sweep (#26): same row shape
MATCH_TOLERANCE = 0.10  # measured speedups of a pair within 10% of each other
ARM_KEYS = ("model", "calib_corpus", "n_samples", "seqlen", "eval_seqlen", "eval_windows")


@dataclass(frozen=True)
class Reading:
    """One reading of the claim: which ZipLM arm is compared with which OSSCAR arm."""

    name: str
    ziplm: str  # allocation of the ZipLM arm
    osscar: str  # allocation of the OSSCAR arm
    meaning: str
    nearest_speed: bool = False  # OSSCAR: per seed, the arm's run (any target) nearest in measured block speedup


READINGS = (
    Reading("R1", "uniform", "uniform", "both uniform widths, target by block FLOPs"),
    Reading("R1 (measured)", "uniform-latency", "uniform-latency", "both uniform widths, target by measured latency"),
    Reading("R2", "runtime", "uniform-latency", "ZipLM runtime-aware non-uniform vs OSSCAR uniform (measured target)"),
    Reading("R2 (OSSCAR by FLOPs)", "runtime", "uniform", "ZipLM runtime-aware vs OSSCAR uniform by block FLOPs"),
    Reading("R2 (speed-matched)", "runtime", "uniform",
            "ZipLM runtime-aware vs OSSCAR uniform by FLOPs, per seed the OSSCAR run (any target) nearest in measured "
            "block speedup", nearest_speed=True),
    Reading("R3 (spdy)", "spdy", "spdy", "both with ZipLM's spdy search over their own candidate databases"),
    Reading("R3 (runtime)", "runtime", "runtime", "both with the runtime-aware knapsack on their own loss curves"),
)
R2_REFERENCE = ("ziplm", "runtime")  # the arm the figure's ratios are taken to


def arm_label(method: str, allocation: str) -> str:
    return f"{method} · {allocation}"


def claim_runs(records: Sequence, experiment: str = CLAIM_EXPERIMENT) -> pd.DataFrame:
    """One row per run (the latest per configuration), with ``arm`` = "method · allocation". ``blocks_speedup``: the
    decoder-block speedup timed again after the sweep with nothing else running (:mod:`benchmarks.retime`;
    ``retimed`` True) where that exists, else the run's own measurement (kept as ``blocks_speedup_in_run``)."""
    df = frame(records, experiment, "lm")
    if df.empty:
        return df
    df = df[df["method"].isin(["ziplm", "osscar"]) & df["speedup_target"].notna()].copy()
    df["arm"] = [arm_label(m, a) for m, a in zip(df["method"], df["allocation"])]
    quiet = retimed_speedups(records, experiment)  # timed again after the sweep, alone (benchmarks.retime)
    df["blocks_speedup_in_run"] = df["blocks_speedup"]
    df["blocks_speedup"] = [quiet.get(k, v) for k, v in zip(df["key"], df["blocks_speedup"])]
    df["retimed"] = df["key"].isin(list(quiet))
    df, _ = dedupe(df, [*[k for k in ARM_KEYS if k in df], "arm", "speedup_target", "seed"])
    return df.reset_index(drop=True)


def corpus_of(df: pd.DataFrame) -> str | None:
    """The first evaluation corpus with per-window NLLs."""
    cols = [c for c in df.columns if c.startswith("window_nll:") and df[c].map(lambda v: isinstance(v, list)).any()]
    return cols[0].split(":", 1)[1] if cols else None


def pooled_ratio(pairs: Sequence[tuple[Sequence[float], Sequence[float]]], z: float = 1.96) -> dict[str, float]:
    """ppl(a) / ppl(b) pooled over paired windows of several seeds: exp(mean d) with d = nll_a − nll_b per
    window, and exp(mean ± z·SE), SE = sd(d)/√n over every window of every seed. ``pairs``: (a, b) per seed."""
    diffs = [np.asarray(a, float) - np.asarray(b, float) for a, b in pairs if len(a) == len(b) and len(a)]
    d = np.concatenate(diffs) if diffs else np.zeros(0)
    if not len(d):
        return {"ratio": math.nan, "lo": math.nan, "hi": math.nan, "n": 0}
    mean = float(d.mean())
    se = float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else math.inf
    return {"ratio": math.exp(mean), "lo": math.exp(mean - z * se), "hi": math.exp(mean + z * se), "n": len(d)}


def _nearest_in_speed(df: pd.DataFrame, A: pd.DataFrame, b: str) -> pd.DataFrame:
    """Per seed of ``A`` (indexed by seed), the run of arm ``b`` with that seed, at any target, whose measured
    block speedup is nearest to A's (indexed by seed)."""
    runs = df[(df["arm"] == b) & df["blocks_speedup"].notna()]
    picked = []
    for seed, speed in A["blocks_speedup"].dropna().items():
        mine = runs[runs["seed"] == seed]
        if len(mine):
            picked.append(mine.loc[(mine["blocks_speedup"] - speed).abs().idxmin()])
    return pd.DataFrame(picked).set_index("seed") if picked else runs.iloc[:0].set_index("seed")


def paired_arms(df: pd.DataFrame, a: str, b: str, target: float, corpus: str,
                nearest_speed: bool = False) -> dict[str, float]:
    """ppl(arm a) / ppl(arm b) at ``target``: pooled (:func:`pooled_ratio`) and per-seed min / max, the seeds
    paired, and both arms' mean perplexity and measured block speedup over those seeds. ``nearest_speed``: arm b's
    run of each seed is the one, at any target, nearest to arm a's in measured block speedup (its targets in
    ``targets_b``)."""
    col, wcol = f"ppl:{corpus}", f"window_nll:{corpus}"
    at = df[df["speedup_target"] == target]
    A = at[at["arm"] == a].set_index("seed")
    B = _nearest_in_speed(df, A, b) if nearest_speed else at[at["arm"] == b].set_index("seed")
    seeds = sorted(set(A.index) & set(B.index))
    ok = [s for s in seeds if isinstance(A.at[s, wcol], list) and isinstance(B.at[s, wcol], list)]
    out = pooled_ratio([(A.at[s, wcol], B.at[s, wcol]) for s in ok])
    per_seed = [A.at[s, col] / B.at[s, col] for s in ok]
    out.update({"seeds": len(ok), "seed_min": min(per_seed, default=math.nan),
                "seed_max": max(per_seed, default=math.nan),
                "ppl_a": float(A.loc[ok, col].mean()) if ok else math.nan,
                "ppl_b": float(B.loc[ok, col].mean()) if ok else math.nan,
                "speedup_a": float(A.loc[ok, "blocks_speedup"].mean()) if ok else math.nan,
                "speedup_b": float(B.loc[ok, "blocks_speedup"].mean()) if ok else math.nan,
                "targets_b": sorted({float(B.at[s, "speedup_target"]) for s in ok})})
    return out


def readings(df: pd.DataFrame, corpus: str) -> pd.DataFrame:
    """One row per (reading, target) with both arms present: the ZipLM / OSSCAR ratio and the speedups."""
    rows = []
    for target in sorted(df["speedup_target"].dropna().unique()):
        for r in READINGS:
            z, o = arm_label("ziplm", r.ziplm), arm_label("osscar", r.osscar)
            p = paired_arms(df, z, o, target, corpus, nearest_speed=r.nearest_speed)
            if not p["seeds"] or (r.nearest_speed and p["targets_b"] == [target]):
                continue  # speed-matched: only where it pairs other runs than the plain reading
            gap = p["speedup_a"] / p["speedup_b"] - 1 if p["speedup_b"] else math.nan
            osscar_arm = r.osscar + (f" at {'/'.join(f'{t:g}×' for t in p['targets_b'])}" if r.nearest_speed else "")
            rows.append({"reading": r.name, "target": target, "ziplm arm": r.ziplm, "osscar arm": osscar_arm,
                         "meaning": r.meaning, "ppl ziplm": p["ppl_a"], "ppl osscar": p["ppl_b"],
                         "ratio": p["ratio"], "lo": p["lo"], "hi": p["hi"], "seed_min": p["seed_min"],
                         "seed_max": p["seed_max"], "seeds": p["seeds"], "windows": p["n"],
                         "speedup ziplm": p["speedup_a"], "speedup osscar": p["speedup_b"],
                         "matched": bool(abs(gap) <= MATCH_TOLERANCE) if math.isfinite(gap) else False})
    return pd.DataFrame(rows)


def ratios_to_reference(df: pd.DataFrame, corpus: str) -> pd.DataFrame:
    """Per arm and target: ppl(arm) / ppl(ZipLM · runtime), the R2 ZipLM arm, pooled with 95% range."""
    ref = arm_label(*R2_REFERENCE)
    rows = []
    for target in sorted(df["speedup_target"].dropna().unique()):
        for arm in sorted(df["arm"].unique()):
            p = paired_arms(df, arm, ref, target, corpus)
            if p["seeds"]:
                rows.append({"arm": arm, "target": target, "ratio": p["ratio"], "lo": p["lo"], "hi": p["hi"],
                             "speedup": p["speedup_a"]})
    return pd.DataFrame(rows)


def timing_note(df: pd.DataFrame) -> str:
    """Which block speedups were timed alone after the sweep (benchmarks.retime) and which inside the runs."""
    quiet = int(df["retimed"].sum()) if "retimed" in df else 0
    if quiet == len(df):
        return ("Block speedups: every run's decoder blocks timed again after the sweep with nothing else running "
                "(python -m benchmarks.retime). ")
    return (f"Block speedups: {quiet} of {len(df)} runs timed again after the sweep with nothing else running "
            "(python -m benchmarks.retime), the rest as measured inside the run, while another sweep worker shared "
            "the machine (noisier). ")


def arm_summary(df: pd.DataFrame, corpus: str) -> pd.DataFrame:
    """Per arm and target, over seeds: perplexity mean / min / max, measured block and whole-model speedups,
    predicted and block-FLOPs speedups, allocation and pruning seconds."""
    col = f"ppl:{corpus}"
    rows = []
    for (arm, target), sub in df.groupby(["arm", "speedup_target"], sort=True):
        mean = {k: sub[k].mean() if k in sub and sub[k].notna().any() else math.nan
                for k in ("blocks_speedup", "blocks_speedup_in_run", "latency_speedup", "predicted_speedup",
                          "block_flops_speedup",
                          "alloc_seconds", "db_seconds", "search_seconds", "prune_seconds")}
        rows.append({"arm": arm, "target": target, "seeds": int(sub[col].notna().sum()), "ppl mean": sub[col].mean(),
                     "ppl min": sub[col].min(), "ppl max": sub[col].max(), **mean})
    return pd.DataFrame(rows)


DRIFT_QUANTITIES = {  # column -> what it is (the chain from the layer objective to perplexity)
    "err_calib:all": "layer error on the calibration inputs (the objective, relative; mean over layers)",
    "err_heldout:all": "layer error on held-out inputs (relative; mean over layers)",
    "drift_final": "output error of the last block vs dense, held-out (relative)",
    "drift_kl": "KL(dense ‖ pruned) of the next-token distribution, held-out",
}


def tracking(df: pd.DataFrame, corpus: str) -> pd.DataFrame:
    """Per target: Spearman rank correlation over the runs (every arm and seed) of each quantity of
    :data:`DRIFT_QUANTITIES` with the perplexity, and the number of runs."""
    col = f"ppl:{corpus}"
    rows = []
    for target, sub in df.groupby("speedup_target", sort=True):
        if sub["arm"].nunique() < 2:
            continue  # a target only one arm ran (a speed-matching run): no comparison across runs
        for q, what in DRIFT_QUANTITIES.items():
            if q not in sub:
                continue
            pair = sub[[q, col]].dropna()
            rho = pair[q].rank().corr(pair[col].rank()) if len(pair) > 2 else math.nan
            rows.append({"target": target, "quantity": q, "what": what, "spearman": rho, "runs": len(pair)})
    return pd.DataFrame(rows)


def drift_by_arm(df: pd.DataFrame, corpus: str, target: float) -> pd.DataFrame:
    """Per arm at ``target``, means over seeds: perplexity and the quantities of :data:`DRIFT_QUANTITIES`."""
    at = df[df["speedup_target"] == target]
    cols = [f"ppl:{corpus}", *[q for q in DRIFT_QUANTITIES if q in at]]
    return at.groupby("arm", sort=True)[cols].mean().reset_index()
