"""Where each quantity lives in a run record: the one reader of the record schema.

A record's ``metrics`` is what its pipeline returned (:mod:`osscar.lm.run_record`, :mod:`osscar.vision.pipeline`,
:mod:`benchmarks.solver_pipeline`). The report's rows (:mod:`reports.records`) and the reproduction check's
deterministic metrics (:mod:`benchmarks.compare`) both read it through these functions, so a field that moves
moves here once. Every reader returns None (or leaves a key out) where a record lacks the field: records written
before a field existed stay readable.
"""

from __future__ import annotations

import math
from typing import Any

STATES = ("dense", "pruned")  # the model before and after pruning, as lm and vision records nest their scores


def dig(obj: Any, *path: Any) -> Any:
    """``obj[p0][p1]...`` or None when any step is missing (lists take int indices)."""
    for p in path:
        if isinstance(obj, dict):
            obj = obj.get(p)
        elif isinstance(obj, list) and isinstance(p, int) and -len(obj) <= p < len(obj):
            obj = obj[p]
        else:
            return None
        if obj is None:
            return None
    return obj


def num(x: Any) -> float | None:
    """A finite float, or None (bools, strings, NaN and missing values are not numbers here)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def perplexities(m: dict[str, Any], state: str) -> dict[str, float]:
    """LM: {corpus: perplexity} of the ``state`` model (corpora without a number left out)."""
    return {corpus: num(res["ppl"]) for corpus, res in (m.get(state) or {}).items()
            if isinstance(res, dict) and num(res.get("ppl")) is not None}


def window_nll(m: dict[str, Any], state: str, corpus: str) -> list[float] | None:
    """LM: the mean NLL per evaluation window of the ``state`` model on ``corpus`` (None: not recorded)."""
    return dig(m, state, corpus, "window_nll")


def zero_shot_scores(m: dict[str, Any], state: str) -> dict[str, dict[str, float | None]]:
    """LM: {task: {"acc": …, "acc_norm": …}} of the ``state`` model (lm-eval)."""
    tasks = dig(m, state, "zero_shot", "tasks") or {}
    return {task: {k: num(dig(res, k)) for k in ("acc", "acc_norm")} for task, res in tasks.items()}


def lm_sizes(m: dict[str, Any]) -> dict[str, float | None]:
    """LM: parameter counts and block/total FLOPs ratios (dense / pruned)."""
    size = m.get("size") or {}
    return {"params_dense": num(size.get("params_dense")), "params_pruned": num(size.get("params_pruned")),
            "block_flops_ratio": num(size.get("block_flops_ratio")), "total_flops_ratio": num(size.get("total_flops_ratio"))}


def vision_scores(m: dict[str, Any], state: str) -> dict[str, float | None]:
    """Vision: top-1 accuracy, MACs and parameters of the ``state`` model."""
    return {k: num(dig(m, state, k)) for k in ("top1", "macs", "params")}


def layer_records(m: dict[str, Any]) -> list[dict[str, Any]]:
    """The per-layer records (LM: one per consumer; vision: one per pruned layer), dicts only."""
    return [layer for layer in m.get("layers") or [] if isinstance(layer, dict)]


def layer_objectives(m: dict[str, Any]) -> dict[str, float]:
    """{layer name: objective Q(W)} of the layers that carry one (a layer taken from a candidate database has none)."""
    out = {}
    for layer in layer_records(m):
        name = layer.get("name") or layer.get("unit")
        if name and num(layer.get("objective")) is not None:
            out[name] = num(layer["objective"])
    return out


def kept_groups(pipeline: str, m: dict[str, Any]) -> dict[str, Any]:
    """The discrete outcome of a run: kept groups per layer (solver: one problem's)."""
    if pipeline == "solver":
        return {"kept": m.get("kept")}
    if pipeline == "vision":
        return dict(m.get("kept") or {})
    return {layer["name"]: layer.get("kept") for layer in layer_records(m) if layer.get("name")}


def solver_seconds(pipeline: str, m: dict[str, Any]) -> float | None:
    """The seconds spent pruning (solver: one problem; lm: the solver calls; vision: the prune step)."""
    if pipeline == "solver":
        return num(m.get("prune_seconds"))
    return num(dig(m, "timings", "prune_solver_s" if pipeline == "lm" else "prune"))
