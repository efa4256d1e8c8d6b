"""Build the whole report from whatever records exist: ``build_report(store_root, out_dir) -> index.md``.

Layout of ``out_dir``::

    index.md            one page: provenance, published reference numbers beside ours, every table
                        (Markdown, inline) and figure (PNG, embedded), and a "Missing" section
    tables/<name>.md|.tex|.csv
    figures/<name>.png|.pdf

Nothing is invented: an experiment without records, or a metric no record carries, is listed
under "Missing". Published numbers (``reports.reference``) are labelled as such and never mixed
into our tables. Files are written to a temporary name and renamed; files of earlier builds that
this build did not produce are removed from ``tables/`` and ``figures/``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import tomllib

from osscar.io import atomic_write_text as write_text_atomic
from reports import reference as ref
from reports.figures import all_figures
from reports.records import describe, frame, load_records, summarize
from reports.table import Table
from reports.tables import all_tables

REPO_ROOT = Path(__file__).resolve().parent.parent

# the paper's experiments; sweep files in benchmarks/sweeps/ add to this list
EXPECTED_EXPERIMENTS = {
    "lm_perplexity": "language-model perplexity, zero-shot accuracy, speedup and pruning cost",
    "vision_accuracy": "vision top-1 accuracy vs FLOPs removed",
    "pruning_runtime": "solver runtime per layer shape (OSSCAR vs ZipLM vs one inverse)",
    "ablation_calibration": "calibration-size ablation",
    "ablation_tp": "t̂/p̂ ablation of OSSCAR",
}

SECTIONS = [  # (heading, table section, figure section, intro)
    ("Language models: perplexity", "lm_perplexity", "lm_perplexity",
     "Perplexity of the pruned, physically sliced model per evaluation corpus, target and method."),
    ("Language models: paired perplexity comparison", "lm_paired", None,
     "Each method's perplexity over ZipLM's on the same evaluation windows, with a paired 95% range."),
    ("Language models: zero-shot accuracy", "lm_zeroshot", None,
     "lm-eval zero-shot accuracy (acc and acc_norm) per task; mean over the tasks when all are present."),
    ("Language models: pruning cost, memory and speedup", "lm_cost", None,
     "Wall time, peak memory, parameters kept and FLOPs / measured speedups of the same runs."),
    ("Language models: layer error, calibration vs held-out", "lm_layer_error", None,
     "Per-layer reconstruction error on the calibration inputs beside the same error on held-out windows."),
    ("Vision: accuracy vs FLOPs", "vision_accuracy", "vision_accuracy",
     "Top-1 accuracy of the sliced network (no fine-tuning) per method and fraction of FLOPs removed."),
    ("Measured vs FLOPs speedup", "speedup", "speedup",
     "Whether the FLOPs reduction turns into wall-time speedup on the recording device."),
    ("Pruning runtime (solver)", "pruning_runtime", "pruning_runtime",
     "Solver time and objective on OPT-shaped layer problems, next to one p×p inverse."),
    ("Ablation: calibration size", "ablation_calibration", "ablation_calibration",
     "Quality vs the number of calibration samples."),
    ("Ablation: t̂ / p̂", "ablation_tp", "ablation_tp",
     "OSSCAR's quality and time over its two step-size parameters."),
    ("Ablation: calibration size, language model", "lm_calibration", "lm_calibration",
     "Perplexity over calibration seeds and the paired ratio to ZipLM per seed vs the number of calibration "
     "tokens, beside the calibration and held-out layer error (issue #16)."),
    ("Ablation: damping, language model", "lm_damping", "lm_damping",
     "The same against the damping λ of the layer problems; the default λ comes from the calibration-size "
     "sweep's runs of the same configuration (issue #16)."),
    ("The paper's claim: OSSCAR vs ZipLM in every reading", "claim", "claim",
     "OSSCAR and ZipLM at a target decoder-block speedup under every allocation (uniform by FLOPs and by measured "
     "latency, runtime-aware, spdy), three calibration seeds, compared at their measured speedups; the readings "
     "R1–R3 of the claim are stated in the first table (issue #27)."),
    ("Global allocation", "allocation_global", "allocation_global",
     "spdy and evolutionary searches over each method's own per-layer candidate database, and the widths per block "
     "they choose (issue #26)."),
]


def expected_experiments(sweeps_dir: Path | None = None) -> dict[str, str]:
    """The paper's experiments plus every sweep file's ``name`` (read without importing benchmarks)."""
    out = dict(EXPECTED_EXPERIMENTS)
    sweeps_dir = sweeps_dir or Path(__file__).resolve().parent.parent / "benchmarks" / "sweeps"
    for path in sorted(sweeps_dir.glob("*.toml")) if sweeps_dir.is_dir() else []:
        try:
            data = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError):
            continue
        name = data.get("name")
        if isinstance(name, str) and name not in out:
            desc = str(data.get("description", "")).strip().splitlines()
            out[name] = f"sweep {path.name}" + (f": {desc[0]}" if desc else "")
    return out


# ---------------------------------------------------------------------------------------------------
# published numbers beside ours


def _fmt(v: Any, spec: str = ".2f") -> str:
    return "—" if v is None or (isinstance(v, float) and pd.isna(v)) else format(v, spec)


def _claims_section(records) -> list[str]:
    lm = frame(records, "lm_perplexity", "lm")
    solver = frame(records, "pruning_runtime", "solver")
    ours: dict[str, str] = {}

    # 1. perplexity ratio ZipLM / OSSCAR at the same model, target and corpus
    parts = []
    if not lm.empty:
        plain = lm[lm["method_params"].fillna("") == ""]
        for (model, target), sub in plain.groupby(["model", "target"], sort=True):
            o, z = sub[sub["method"] == "osscar"], sub[sub["method"] == "ziplm"]
            if o.empty or z.empty:
                continue
            ratios = [f"{c.split(':', 1)[1]} {z[c].iloc[-1] / o[c].iloc[-1]:.2f}×"
                      for c in sub.columns if c.startswith("ppl:") and pd.notna(o[c].iloc[-1])
                      and pd.notna(z[c].iloc[-1])]
            if ratios:
                parts.append(f"{model} @ {target}: " + ", ".join(ratios))
    ours["ppl_vs_ziplm"] = "; ".join(parts) if parts else "not measured (needs lm_perplexity runs of osscar and ziplm)"

    # 2. prune-time ratio ZipLM / OSSCAR
    parts = []
    if not solver.empty:
        r = []
        for shape, sub in solver.groupby("shape"):
            o = sub.loc[sub["method"] == "osscar", "prune_seconds"]
            z = sub.loc[sub["method"] == "ziplm", "prune_seconds"]
            if len(o) and len(z) and o.iloc[-1]:
                r.append((shape, z.iloc[-1] / o.iloc[-1]))
        if r:
            dev = solver["device"].iloc[-1]
            parts.append("solver layers: " + ", ".join(f"{s} {v:.2f}×" for s, v in r) + f" ({dev})")
    if not lm.empty:
        for (model, target), sub in lm.groupby(["model", "target"], sort=True):
            o = sub.loc[sub["method"] == "osscar", "prune_seconds"].dropna()
            z = sub.loc[sub["method"] == "ziplm", "prune_seconds"].dropna()
            if len(o) and len(z) and o.iloc[-1]:
                parts.append(f"{model} @ {target} (whole model): {z.iloc[-1] / o.iloc[-1]:.2f}×")
    ours["time_vs_ziplm"] = "; ".join(parts) if parts else "not measured (needs pruning_runtime or lm_perplexity runs)"

    # 3. memory: the largest model pruned and its peak memory
    if not lm.empty and lm["peak_rss_mb"].notna().any():
        big = lm.sort_values(["params_dense", "peak_rss_mb"], na_position="first").iloc[-1]
        ours["memory"] = (f"largest model pruned: {big['model']} ({_fmt(big['params_dense'] / 1e6, '.0f')}M params), "
                          f"peak RSS {_fmt(big['peak_rss_mb'], '.0f')} MiB on {big['device']}")
    else:
        ours["memory"] = "not measured (no lm_perplexity record with peak memory)"

    lines = [(f"Source of the claims: {ref.SOURCE_CLAIMS}. Our numbers come from this store's records; they are "
             "comparable only where model, target, corpus and hardware match (the cpu profile uses small "
             "offline models, so usually they do not)."), "",
             "| paper claim (published) | ours (this store) | how ours is computed |", "|:--|:--|:--|"]
    for c in ref.CLAIMS:
        lines.append(f"| {c['claim']} | {ours[c['id']]} | {c['ours']} |")
    return lines


def _dense_section(records) -> list[str]:
    lm = frame(records, None, "lm")
    lines = [(f"Published dense perplexities — {ref.SOURCE_PPL}. \"ours\" is our dense evaluation of the same model "
             "id on the same corpus, when a record has one (eval window length and count as recorded)."), "",
             "| model | corpus | published dense ppl | ours (dense) | our windows |", "|:--|:--|--:|--:|:--|"]
    for model, corpora in ref.DENSE_PPL.items():
        for corpus, pub in corpora.items():
            col = f"dense_ppl:{corpus}"
            ours, win = None, ""
            if not lm.empty and col in lm:
                sub = lm[(lm["model"] == model) & lm[col].notna()]
                if len(sub):
                    ours = sub[col].iloc[-1]
                    win = f"{describe([sub['eval_windows'].iloc[-1]])} × {describe([sub['seqlen'].iloc[-1]])} tok"
            lines.append(f"| {model} | {ref.CORPUS_NAMES.get(corpus, corpus)} | {pub:.2f} | {_fmt(ours)} | "
                         f"{win or 'not run'} |")
    vis = frame(records, None, "vision")
    lines += ["", f"Published dense top-1 — {ref.SOURCE_VISION}.", "",
              "| model | dataset | published dense top-1 (%) | ours (dense, %) |", "|:--|:--|--:|--:|"]
    pairs = dict(ref.DENSE_TOP1)
    if not vis.empty:
        for (a, d), _ in vis.groupby(["arch", "dataset"]):
            pairs.setdefault((a, d), None)
    for (arch, ds), pub in pairs.items():
        ours = None
        if not vis.empty:
            sub = vis[(vis["arch"] == arch) & (vis["dataset"] == ds) & vis["dense_top1"].notna()]
            if len(sub):
                ours = 100 * sub["dense_top1"].iloc[-1]
        lines.append(f"| {arch} | {ds} | {_fmt(pub, '.1f') if pub is not None else 'none published'} | "
                     f"{_fmt(ours) if ours is not None else 'not run'} |")
    return lines


# ---------------------------------------------------------------------------------------------------
# missing


# pipeline -> [(column or prefix*, what, checked in ablations too)]
MISSING_CHECKS: dict[str, list[tuple[str, str, bool]]] = {
    "lm": [("ppl:*", "perplexity", True), ("prune_seconds", "prune time", True),
           ("dense_ppl:*", "dense perplexity (evaluate_dense)", False),
           ("acc:*", "zero-shot acc (zero_shot_tasks)", False), ("acc_norm:*", "zero-shot acc_norm", False),
           ("latency_speedup", "measured latency (latency_points)", False), ("peak_rss_mb", "peak memory", False),
           ("flops_speedup", "FLOPs model", False)],
    "vision": [("top1", "top-1 accuracy", True), ("prune_seconds", "prune time", True),
               ("dense_top1", "dense top-1", False), ("flops_reduction", "achieved FLOPs", False),
               ("latency_speedup", "measured latency", False)],
    "solver": [("objective", "objective", True), ("prune_seconds", "prune time", True),
               ("inverse_seconds", "inverse time", False)],
}


def _missing_section(records, expected: dict[str, str], tables: dict[str, list[Table]]) -> list[str]:
    present = {r.experiment for r in records}
    lines = []
    for name, desc in expected.items():
        if name not in present:
            lines.append(f"- **{name}** — no records ({desc}). Nothing is shown for it; run its sweep "
                         f"(`python -m benchmarks.run benchmarks/sweeps/{name}.toml`) if the file exists.")
    for exp in sorted(present):
        for pipeline, checks in MISSING_CHECKS.items():
            df = frame(records, exp, pipeline)
            if df.empty:
                continue
            for col, what, in_ablation in checks:
                if exp.startswith("ablation") and not in_ablation:
                    continue
                cols = [c for c in df.columns if c.startswith(col[:-1])] if col.endswith("*") else [col]
                cols = [c for c in cols if c in df]
                if not cols:
                    n_missing = len(df)
                else:
                    n_missing = int(df[cols].isna().all(axis=1).sum())
                if col.endswith("*") and len(cols) > 1:  # some of the family present: name the holes
                    has = df[cols].notna().any(axis=1)
                    for c in cols:
                        n = int((has & df[c].isna()).sum())
                        if n:
                            lines.append(f"- {exp} ({pipeline}): {c} missing in {n} of {len(df)} record(s).")
                if n_missing:
                    lines.append(f"- {exp} ({pipeline}): {what} absent from {n_missing} of {len(df)} record(s) "
                                 "(not requested or not returned).")
    from benchmarks.retime import PIPELINE as RETIME, SUFFIX as RETIMED

    retimed = {e for e in present if e.endswith(RETIMED) and e.removesuffix(RETIMED) in expected}  # used by claim
    unknown = sorted(present - set(expected) - retimed)
    for exp in unknown:
        lines.append(f"- {exp}: records present but no report section knows this experiment (not tabulated "
                     "unless it uses a known pipeline and a section's experiment name).")
    bad = sorted({r.pipeline for r in records} - set(MISSING_CHECKS) - {RETIME})
    for p in bad:
        lines.append(f"- records of unknown pipeline {p!r} were skipped.")
    empty = [h for h, ts, _, _ in SECTIONS if not tables.get(ts)]
    if empty:
        lines.append("- Sections without any table: " + "; ".join(empty) + ".")
    return lines or ["Nothing missing: every expected experiment has records and every checked metric is present."]


# ---------------------------------------------------------------------------------------------------


def _clean(folder: Path, keep: set[Path], exts: tuple[str, ...]) -> None:
    if not folder.is_dir():
        return
    for p in folder.iterdir():
        if p.is_file() and p.suffix.lstrip(".") in exts and p not in keep:
            p.unlink()


def _shown(path: Path) -> str:
    """``path`` relative to the repository when inside it (the same text in every clone), else as given."""
    try:
        return path.resolve().relative_to(REPO_ROOT).as_posix()
    except ValueError:
        return str(path)


def build_report(store_root: str | Path, out_dir: str | Path, title: str = "OSSCAR harness: results report") -> Path:
    """Read every record under ``store_root``, write tables, figures and ``index.md`` under ``out_dir``."""
    store_root, out_dir = Path(store_root), Path(out_dir)
    records = load_records(store_root)
    tables = all_tables(records)
    figures = all_figures(records, out_dir / "figures")
    written: set[Path] = set()
    for ts in tables.values():
        for t in ts:
            written |= set(t.write(out_dir / "tables").values())
    for fs in figures.values():
        for f in fs:
            written |= set(f.paths.values())
    _clean(out_dir / "tables", written, ("md", "tex", "csv"))
    _clean(out_dir / "figures", written, ("png", "pdf"))

    info = summarize(records)
    expected = expected_experiments()
    L: list[str] = [f"# {title}", "",
                    (f"Built by `python -m reports` from `{_shown(store_root)}` ({info['n']} record(s)). "
                    "Every number below comes from a record in that store, except in the section "
                    "*Published reference numbers*, which quotes the paper and GPTQ/SparseGPT."), ""]
    if info["fixture"]:
        L += [(f"> **FIXTURE DATA.** {info['fixture']} of {info['n']} record(s) are test fixtures (hand-written or "
              "copied for tests), not measurements. Do not cite this page."), ""]
    if not records:
        L += ["> **No records found.** Run the sweeps first (`python -m benchmarks.run --all`).", ""]
    L += ["## Contents", ""]
    L += [f"- [{h}](#{_anchor(h)})" for h in ["Provenance", "Published reference numbers (not ours)"]
          + [s[0] for s in SECTIONS] + ["Missing"]]
    L += ["", "## Provenance", ""]
    L += ["- Records per experiment: " + (", ".join(f"{k}: {v}" for k, v in sorted(info["experiments"].items()))
                                           or "none")]
    L += ["- Devices: " + (", ".join(f"{k} ({v})" for k, v in info["devices"].items()) or "none")]
    L += ["- Git commits: " + (", ".join(f"`{k}` ({v})" for k, v in info["commits"].items()) or "none")
          + (f"; {info['dirty']} record(s) from a dirty working tree" if info["dirty"] else "")]
    if info["versions"]:
        L += ["- Versions: " + ", ".join(f"{k} {'/'.join(v)}" for k, v in info["versions"].items())]
    L += ["", "## Published reference numbers (not ours)", "",
          ("These are **published numbers, copied from the literature** (see `reports/reference.py` for the "
          "citations); they were not measured by this harness and are shown only beside ours."), "",
          "### Paper headline claims", ""]
    L += _claims_section(records)
    L += ["", "### Dense reference models", ""]
    L += _dense_section(records)

    for heading, tsec, fsec, intro in SECTIONS:
        L += ["", f"## {heading}", "", intro, ""]
        ts, fs = tables.get(tsec, []), figures.get(fsec, []) if fsec else []
        if not ts and not fs:
            L += ["_No records for this section (see [Missing](#missing))._"]
            continue
        for f in fs:
            L += [f"![{f.title}](figures/{f.paths['png'].name})", "",
                  f"*Figure: {f.caption}* ([PDF](figures/{f.paths['pdf'].name}))", ""]
        for t in ts:
            L += [f"### {t.title}", "", f"*{t.full_caption()}*", "", t.to_markdown(),
                  f"[CSV](tables/{t.name}.csv) · [LaTeX](tables/{t.name}.tex)", ""]
    L += ["", "## Missing", ""]
    L += _missing_section(records, expected, tables)
    index = write_text_atomic(out_dir / "index.md", "\n".join(L).rstrip() + "\n")
    return index


def _anchor(heading: str) -> str:
    """GitHub-style anchor of a heading."""
    s = heading.strip().lower()
    s = "".join(ch for ch in s if ch.isalnum() or ch in " -_")
    return s.replace(" ", "-")
