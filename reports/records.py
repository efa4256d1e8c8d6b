"""Records → flat pandas rows, one per run, per pipeline.

Every lookup goes through :func:`dig`, which returns ``None`` for a missing path: a metric a record
does not carry stays missing (NaN in a frame, "—" in a table) and is counted by
:func:`missing_metrics`; nothing is filled in or guessed.

The metric paths follow what the pipelines return (the runner stores that dict as ``metrics``):

* ``lm``  — :func:`osscar.lm.run.run_lm`: ``pruned[<corpus>].ppl``, ``dense[<corpus>].ppl``,
  ``pruned.zero_shot.tasks[<task>].acc|acc_norm``, ``size.*``, ``latency[]``, ``timings.*``,
  ``memory.*``, ``provenance.*``.
* ``vision`` — :func:`osscar.vision.pipeline.run_vision`: ``pruned.top1``, ``dense.top1``,
  ``flops_reduction``, ``params_reduction``, ``latency_speedup``, ``timings.prune``, ``provenance.*``.
* ``solver`` — :func:`benchmarks.solver_pipeline.run_solver`: ``objective``, ``prune_seconds``,
  ``inverse_seconds``, ``p``, ``m``, ``k``.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable
from typing import Any

import pandas as pd

from benchmarks.record_schema import dig, layer_records, lm_sizes, num, perplexities, vision_scores, \
    window_nll, zero_shot_scores
from benchmarks.store import ResultStore, RunRecord


def load_records(store_root: str | Any) -> list[RunRecord]:
    """Every record under ``store_root`` (an empty list when the folder does not exist)."""
    store = ResultStore(store_root)
    if not store.root.is_dir():
        return []
    return list(store.records())


def params_label(params: dict[str, Any] | None) -> str:
    """``{'t_hat': 20, 'p_hat': 10}`` → ``p_hat=10, t_hat=20`` (sorted; '' when empty)."""
    if not params:
        return ""
    return ", ".join(f"{k}={v}" for k, v in sorted(params.items()))


def _method_params(cfg: dict[str, Any]) -> dict[str, Any]:
    params = dict(cfg.get("method_params") or {})
    for k in ("p_hat", "t_hat"):  # vision keeps these as top-level config fields
        if cfg.get(k) is not None:
            params[k] = cfg[k]
    return params


def _device(r: RunRecord) -> str:
    d = r.provenance.get("device") or {}
    if d.get("gpu"):
        return str(d["gpu"])
    if d.get("cpu"):
        return f"{d['cpu']} ({d.get('torch_threads', '?')} thr)"
    return "unknown device"


def _common(r: RunRecord) -> dict[str, Any]:
    cfg = r.config or {}
    params = _method_params(cfg)
    return {
        "experiment": r.experiment, "pipeline": r.pipeline, "key": r.key, "finished": r.finished,
        "method": cfg.get("method"), "method_params": params_label(params),
        "p_hat": num(params.get("p_hat")), "t_hat": num(params.get("t_hat")),
        "seed": cfg.get("seed"), "threads": cfg.get("threads"), "device": _device(r),
        "git_commit": dig(r.provenance, "git", "commit"),
        "fixture": bool(r.provenance.get("fixture") or (r.metrics or {}).get("fixture")),
    }


def _largest_point(rows: Any, field: str = "speedup") -> dict[str, Any] | None:
    """The latency row at the largest (batch × seqlen) point (None when no row has a number in ``field``)."""
    if not isinstance(rows, list):
        return None
    pts = [p for p in rows if isinstance(p, dict) and num(p.get(field)) is not None]
    return max(pts, key=lambda q: (num(q.get("batch")) or 0) * (num(q.get("seqlen")) or 0)) if pts else None


def _latency_point(rows: Any) -> tuple[float | None, str]:
    """Measured speedup at the largest (batch × seqlen) latency point, and that point's label."""
    p = _largest_point(rows)
    if p is None:
        return None, ""
    return num(p["speedup"]), f"batch {p.get('batch')} × {p.get('seqlen')} tok, {p.get('threads', '?')} thr"


def allocation_columns(m: dict[str, Any]) -> dict[str, Any]:
    """A run's allocation as row columns: the measured decoder-block speedup (``blocks_speedup``, at the largest
    latency point), the allocation's predicted speedup, its database-build and search seconds, and the kept
    widths per block (lists)."""
    point = _largest_point(m.get("latency"))
    al = m.get("allocation") or {}
    predicted = next((v for v in (num(dig(al, "budget", "predicted_speedup")), num(al.get("predicted_block_speedup")),
                                  num(al.get("predicted_speedup"))) if v is not None), None)  # of the blocks
    return {"blocks_speedup": num(point.get("blocks_speedup")) if point else None,
            "predicted_speedup": predicted,
            "alloc_seconds": num(dig(m, "timings", "allocation_s")),
            "db_seconds": num(dig(al, "seconds", "database")), "search_seconds": num(dig(al, "seconds", "search")),
            "db_bytes": num(dig(al, "database", "build", "size_bytes")),
            "db_solver_calls": num(dig(al, "database", "build", "solver_calls")),
            "search_evaluations": num(dig(al, "search", "stitched_evaluations")),
            "drift_kl": num(dig(m, "drift", "kl")),
            "drift_final": num((dig(m, "drift", "block_rel_error") or [None])[-1]),
            "drift_blocks": dig(m, "drift", "block_rel_error"),
            "kept_attn_per_block": dig(m, "applied", "attn_groups_kept_per_block"),
            "attn_groups_total": num(dig(m, "applied", "attn_groups_total")),  # in the run's attention unit
            "neurons_total": num(dig(m, "applied", "neurons_total")),
            "kept_mlp_per_block": dig(m, "applied", "neurons_kept_per_block")}


def retimed_speedups(records: Iterable[RunRecord], experiment: str) -> dict[str, float]:
    """{source record key: decoder-block speedup at the largest point} from the records
    :mod:`benchmarks.retime` wrote for ``experiment`` (the latest per source record)."""
    from benchmarks.retime import PIPELINE, SUFFIX

    out: dict[str, float] = {}
    for r in sorted((r for r in records if r.pipeline == PIPELINE and r.experiment == experiment + SUFFIX),
                    key=lambda r: r.finished):
        point = _largest_point((r.metrics or {}).get("rows"), "blocks_speedup")
        if point:
            out[str(r.config.get("source_key"))] = num(point["blocks_speedup"])
    return out


def allocation_label(cfg: dict[str, Any]) -> str:
    """A run's allocation as the reports name it: the allocation, with ``/db`` when a global search's widths took
    the candidate database's weights (``allocation_apply="database"``) instead of a sequential re-solve."""
    name = cfg.get("allocation") or "uniform"
    return f"{name}/db" if cfg.get("allocation_apply") == "database" else name


def layer_error_means(layers: Any) -> dict[str, float | None]:
    """Mean over a run's layer records of ``calib_rel_error`` / ``heldout_rel_error`` per part:
    ``err_calib:attn``, ``err_heldout:attn``, ``err_calib:mlp``, ``err_heldout:mlp``, and over every
    layer of both parts, ``err_calib:all`` / ``err_heldout:all`` (None when absent)."""
    out: dict[str, float | None] = {}
    for part in ("attn", "mlp", "all"):
        parts = ("attn", "mlp") if part == "all" else (part,)
        for which in ("calib", "heldout"):
            vals = [num(L.get(f"{which}_rel_error")) for L in (layers or [])
                    if isinstance(L, dict) and L.get("part") in parts]
            vals = [v for v in vals if v is not None and v == v]
            out[f"err_{which}:{part}"] = sum(vals) / len(vals) if vals else None
    return out


def lm_row(r: RunRecord) -> dict[str, Any]:
    """One lm record → one flat row (``ppl:<corpus>``, ``dense_ppl:<corpus>``, ``acc:<task>``, ...)."""
    cfg, m = r.config or {}, r.metrics or {}
    row = _common(r)
    corpora = list(cfg.get("eval_corpora") or []) or list(perplexities(m, "pruned"))
    speedup = num(cfg.get("speedup"))
    hf = num(cfg.get("head_fraction"))
    nf = num(cfg.get("neuron_fraction"))
    hf_applied = num(dig(m, "applied", "head_fraction_applied"))
    nf_applied = num(dig(m, "applied", "neuron_fraction_applied"))
    if speedup is not None:
        target, target_sort = f"{speedup:g}× speedup", speedup
    else:
        hf = hf if hf is not None else num(dig(m, "applied", "head_fraction_requested"))
        nf = nf if nf is not None else num(dig(m, "applied", "neuron_fraction_requested"))
        target = f"heads {hf:.0%} / neurons {nf:.0%}" if hf is not None and nf is not None else "default target"
        target_sort = 1.0 / max(1e-9, 1 - ((hf or 0) + (nf or 0)) / 2)
    model = dig(m, "provenance", "model") or cfg.get("model")
    lat, lat_point = _latency_point(m.get("latency"))
    size = lm_sizes(m)
    row.update({
        "model": model, "model_source": dig(m, "provenance", "model_source"),
        "calib_corpus": cfg.get("calib_corpus"), "n_samples": cfg.get("n_samples"), "seqlen": cfg.get("seqlen"),
        "damping": num(cfg.get("damping")),
        "eval_seqlen": cfg.get("eval_seqlen") or cfg.get("seqlen"),
        "eval_corpora": ",".join(corpora), "eval_windows": cfg.get("eval_windows"),
        "target": target, "target_sort": target_sort, "speedup_target": speedup,
        "head_fraction": hf_applied if hf_applied is not None else hf,
        "neuron_fraction": nf_applied if nf_applied is not None else nf,
        "params_dense": size["params_dense"], "params_pruned": size["params_pruned"],
        "block_flops_speedup": size["block_flops_ratio"], "flops_speedup": size["total_flops_ratio"],
        "latency_speedup": lat, "latency_point": lat_point, "allocation": allocation_label(cfg),
        **allocation_columns(m),
        "prune_seconds": num(dig(m, "timings", "prune_total_s")),
        "solver_seconds": num(dig(m, "timings", "prune_solver_s")),
        # this run alone (sampled per phase); records before osscar.memory carried only ru_maxrss
        "peak_rss_mb": num(dig(m, "memory", "peak_rss_mb")) if dig(m, "memory", "phases") else None,
        "prune_rss_mb": num(dig(m, "memory", "phases", "prune", "peak_rss_mb")),
        "device_peak_prune_mb": num(dig(m, "memory", "phases", "prune", "device_peak_mb")),
        "zero_shot_limit": dig(m, "pruned", "zero_shot", "limit"),
        "lm_eval_version": dig(m, "pruned", "zero_shot", "lm_eval_version"),
    })
    row.update(layer_error_means(layer_records(m)))
    ppl, dense_ppl = perplexities(m, "pruned"), perplexities(m, "dense")
    for c in corpora:
        row[f"ppl:{c}"], row[f"dense_ppl:{c}"] = ppl.get(c), dense_ppl.get(c)
        row[f"window_nll:{c}"] = window_nll(m, "pruned", c)  # list per window, or None
    for which, prefix in (("pruned", ""), ("dense", "dense_")):
        tasks = zero_shot_scores(m, which)
        for t in list(cfg.get("zero_shot_tasks") or []) or list(tasks):
            row[f"{prefix}acc:{t}"] = dig(tasks, t, "acc")
            row[f"{prefix}acc_norm:{t}"] = dig(tasks, t, "acc_norm")
    return row


def vision_row(r: RunRecord) -> dict[str, Any]:
    cfg, m = r.config or {}, r.metrics or {}
    row = _common(r)
    dense, pruned = vision_scores(m, "dense"), vision_scores(m, "pruned")
    macs_d, macs_p = dense["macs"], pruned["macs"]
    red = num(m.get("flops_reduction"))
    if macs_d and macs_p:
        flops_speedup = macs_d / macs_p
    elif red is not None and red < 1:
        flops_speedup = 1 / (1 - red)
    else:
        flops_speedup = None
    ckpt = dig(m, "provenance", "checkpoint") or cfg.get("checkpoint")
    arch = cfg.get("arch")
    ckpt_label = ("shipped reference" if cfg.get("checkpoint") == "default" else
                  "default recipe, retrained" if cfg.get("checkpoint") == "train" else str(ckpt))
    row.update({
        "model": f"{arch} / {cfg.get('dataset')}", "arch": arch, "dataset": cfg.get("dataset"),
        "checkpoint": ckpt_label, "checkpoint_path": ckpt,
        "checkpoint_sha256": dig(m, "provenance", "checkpoint_sha256"),
        "n_calib": cfg.get("n_calib"), "flops_fraction": num(cfg.get("flops_fraction")),
        "flops_reduction": red, "flops_speedup": flops_speedup,
        "top1": pruned["top1"], "dense_top1": dense["top1"],
        "eval_n": m.get("eval_n"),
        "params_dense": dense["params"], "params_pruned": pruned["params"],
        "latency_speedup": num(m.get("latency_speedup")),
        "latency_point": (f"batch {dig(m, 'latency_setup', 'batch')}, {dig(m, 'latency_setup', 'threads')} thr"
                          if isinstance(m.get("latency_setup"), dict) else ""),
        "prune_seconds": num(dig(m, "timings", "prune")),
    })
    return row


def solver_row(r: RunRecord) -> dict[str, Any]:
    cfg, m = r.config or {}, r.metrics or {}
    row = _common(r)
    row.update({
        "shape": cfg.get("shape"), "keep": num(cfg.get("keep")), "problem": m.get("problem"),
        "p": m.get("p"), "m": m.get("m"), "k": m.get("k"), "n_groups": m.get("n_groups"),
        "group_size": m.get("group_size"),
        "objective": num(m.get("objective")), "dense_objective": num(m.get("dense_objective")),
        "prune_seconds": num(m.get("prune_seconds")), "inverse_seconds": num(m.get("inverse_seconds")),
    })
    return row


ROW_BUILDERS = {"lm": lm_row, "vision": vision_row, "solver": solver_row}


def frame(records: Iterable[RunRecord], experiment: str | None = None, pipeline: str | None = None) -> pd.DataFrame:
    """Flat rows of the records of one experiment (and/or pipeline); later duplicates of a config win."""
    rows = [ROW_BUILDERS[r.pipeline](r) for r in records
            if r.pipeline in ROW_BUILDERS and (experiment is None or r.experiment == experiment)
            and (pipeline is None or r.pipeline == pipeline)]
    df = pd.DataFrame(rows)
    if not df.empty:
        df = df.sort_values("finished", kind="stable").reset_index(drop=True)
        for c in df.columns[df.isna().all()]:  # a metric no record carries: NaN (float), not None objects
            df[c] = df[c].astype(float)
    return df


def missing_metrics(df: pd.DataFrame, columns: Iterable[str]) -> dict[str, int]:
    """Column → number of rows where it is missing (only columns missing somewhere)."""
    out: dict[str, int] = {}
    for c in columns:
        n = len(df) if c not in df.columns else int(df[c].isna().sum())
        if n:
            out[c] = n
    return out


def summarize(records: list[RunRecord]) -> dict[str, Any]:
    """Counts per experiment, devices, commits and versions seen — the report's provenance header."""
    exps = Counter(r.experiment for r in records)
    devices = Counter(_device(r) for r in records)
    commits = Counter(str(dig(r.provenance, "git", "commit") or "unknown")[:10] for r in records)
    dirty = sum(1 for r in records if dig(r.provenance, "git", "dirty"))
    versions: dict[str, set[str]] = {}
    for r in records:
        for k, v in (r.provenance.get("versions") or {}).items():
            if v:
                versions.setdefault(k, set()).add(str(v))
    return {"n": len(records), "experiments": dict(exps), "devices": dict(devices), "commits": dict(commits),
            "dirty": dirty, "versions": {k: sorted(v) for k, v in sorted(versions.items())},
            "fixture": sum(1 for r in records if r.provenance.get("fixture") or (r.metrics or {}).get("fixture"))}


def describe(values: Iterable[Any]) -> str:
    """Distinct non-missing values as 'a, b' (for captions)."""
    seen: list[str] = []
    for v in values:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            continue
        s = v if isinstance(v, str) else json.dumps(v) if isinstance(v, (dict, list)) else f"{v:g}" \
            if isinstance(v, float) else str(v)
        if s not in seen:
            seen.append(s)
    return ", ".join(seen) if seen else "unknown"
