"""The level ladders of one decoder block: which widths a consumer may take in an allocation.

A level is a kept count in the adapter's attention units or in MLP neurons; **0 removes the
module whole** (:mod:`osscar.lm.removed`).

* Attention: with the ``head`` unit (GQA/MQA, ``get_adapter(model, "head")``) a level is
  ``L · num_key_value_heads`` query heads, ``L`` = 1 … heads per KV group: every KV group keeps the
  same ``L`` heads (the partition constraint of :class:`~osscar.problem.LayerProblem`), so a sliced
  block stays a valid attention. With MHA (one unit: a head with its k/v) every head count is a
  level; with the ``kv-group`` unit every KV-group count. A family whose heads cannot be pruned
  exactly (OLMo 2, ``attention_fixed_reason``) has only 0 and all.
* MLP: ``steps`` evenly spaced widths (:func:`osscar.lm.evaluation.latency.default_levels`) and 0.

Per-level **costs** of one block's part (:func:`level_costs`): ``params`` (counted on a one-block
copy of the architecture, built on the meta device and sliced by the adapter at every level, so
biases, norms inside the attention and fused projections count as they are) or ``flops``
(:meth:`~osscar.lm.adapters.base.ModelAdapter.layer_flops`, the project's multiply-add model of the
prunable projections per token; 0 for a removed module).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from osscar.lm.adapters import _get, get_adapter
from osscar.lm.evaluation.latency import default_levels
from osscar.lm.removed import remove_attention, remove_mlp

PARTS = ("attn", "mlp")
COST_KINDS = ("params", "flops")


def attention_levels(adapter: Any) -> list[int]:
    """Kept attention groups a block may take, ascending, 0 first (module docstring)."""
    n, step = adapter.n_attn_groups, adapter.attn_blocks
    if adapter.attention_fixed_reason:
        return [0, n]
    return [0, *range(step, n + 1, step)]


def mlp_levels(adapter: Any, steps: int) -> list[int]:
    """0 and ``steps`` evenly spaced neuron counts in [1, ffn_dim] (ffn_dim included), ascending."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"mlp steps must be a positive integer, got {steps!r}")
    return [0, *default_levels(adapter.ffn_dim, steps)]


def ladder(adapter: Any, mlp_steps: int) -> dict[str, list[int]]:
    """{"attn": attention levels, "mlp": MLP levels} of every block of ``adapter``'s model."""
    return {"attn": attention_levels(adapter), "mlp": mlp_levels(adapter, mlp_steps)}


def level_costs(config: Any, mlp_steps: int, kind: str, attention_unit: str | None = None
                ) -> dict[str, dict[int, float]]:
    """{"attn" | "mlp": {level: cost}} of one block (module docstring); ``config``: the dense model's;
    ``attention_unit``: the run's (None: kv-group)."""
    adapter = get_adapter(getattr(config, "config", config), attention_unit)
    levels = ladder(adapter, mlp_steps)
    if kind == "flops":
        return {"attn": {k: float(adapter.layer_flops(kept_attn_groups=k)["attn"]) if k else 0.0 for k in levels["attn"]},
                "mlp": {k: float(adapter.layer_flops(kept_neurons=k)["mlp"]) if k else 0.0 for k in levels["mlp"]}}
    if kind == "params":
        return _param_counts(adapter, levels)
    raise ValueError(f"cost kind {kind!r} is unknown; allowed: {', '.join(COST_KINDS)}")


def _param_counts(adapter: Any, levels: dict[str, list[int]]) -> dict[str, dict[int, float]]:
    from transformers import AutoModelForCausalLM

    cfg = copy.deepcopy(adapter.config)
    cfg.num_hidden_layers = 1
    if getattr(cfg, "layer_types", None) is not None:
        cfg.layer_types = list(cfg.layer_types)[:1]
    with torch.device("meta"):
        block = adapter.layers(AutoModelForCausalLM.from_config(cfg))[0]

    def count(layer: nn.Module, part: str) -> float:
        if part == "attn":
            return float(sum(p.numel() for p in _get(layer, adapter.attn_module).parameters()))
        paths = (*adapter.mlp_producers, adapter.mlp_consumer)
        return float(sum(p.numel() for path in paths for p in _get(layer, path).parameters()))

    out: dict[str, dict[int, float]] = {"attn": {}, "mlp": {}}
    for part in PARTS:
        for k in levels[part]:
            layer = copy.deepcopy(block)
            if k == 0:
                (remove_attention if part == "attn" else remove_mlp)(adapter, layer)
            elif part == "attn" and k < adapter.n_attn_groups:
                adapter.slice_attention(layer, adapter.canonical_kept("attn", k))
            elif part == "mlp" and k < adapter.ffn_dim:
                adapter.slice_mlp(layer, torch.arange(k))
            out[part][k] = count(layer, part)
    return out


def latency_costs(table: Any, levels: dict[str, list[int]]) -> dict[str, dict[int, float]]:
    """{"attn" | "mlp": {level: seconds}} of one block from a measured
    :class:`~osscar.lm.evaluation.latency.LatencyTable` (interpolated between its MLP widths).
    ValueError if a level 0 is asked of a table measured without ``removal=True``."""
    for part, tab in (("attn", table.attn), ("mlp", table.mlp)):
        if 0 in levels[part] and 0 not in tab:
            raise ValueError(f"the latency table has no level 0 for {part}; measure it with latency_table(..., removal=True)")
    return {"attn": {k: table.attn_latency(k) for k in levels["attn"]},
            "mlp": {k: table.mlp_latency(k) for k in levels["mlp"]}}
