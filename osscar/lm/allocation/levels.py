"""The level ladders of one decoder block: which widths a consumer may take in an allocation.

A level is a kept count in the adapter's attention units or in MLP neurons; **0 removes the
module whole** (:mod:`osscar.lm.removed`).

* Attention: with the ``head`` unit (GQA/MQA, ``config.osscar_attention_unit = "head"``) a level is
  ``L · num_key_value_heads`` query heads, ``L`` = 1 … heads per KV group: every KV group keeps the
  same ``L`` heads (the partition constraint of :class:`~osscar.problem.LayerProblem`), so a sliced
  block stays a valid attention. With MHA (one unit: a head with its k/v) every head count is a
  level; with the ``kv-group`` unit every KV-group count. A family whose heads cannot be pruned
  exactly (OLMo 2, ``attention_fixed_reason``) has only 0 and all.
* MLP: ``steps`` evenly spaced widths (:func:`osscar.lm.evaluation.latency.default_levels`) and 0.
"""

from __future__ import annotations

from typing import Any

from osscar.lm.evaluation.latency import default_levels

PARTS = ("attn", "mlp")


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
