"""The LM FLOPs model against the multiply-adds of the sliced model's own Linear layers.

Ground truth: after slicing a tiny random model to per-block widths, 2 × (the weight elements of
every ``nn.Linear`` in a block's attention module) is that block's attention FLOPs per token, and the
same over the block's other Linears its MLP FLOPs (the model's projections, counted off the modules;
no FLOPs formula involved). :func:`osscar.lm.evaluation.measure.flops_per_token` of the *dense*
config and the kept widths must give those numbers, per family (fused Phi-3 projections, GQA, OPT
heads, OLMo 2 with attention kept whole), for non-uniform widths too.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from osscar.lm.adapters import get_adapter
from osscar.lm.evaluation.measure import flops_per_token
from osscar.lm.slicing import slice_model

from .conftest import make_model, tiny_llama_config, tiny_opt_config
from .test_families import family_config

CONFIGS = {"opt": tiny_opt_config, "llama": tiny_llama_config, "phi3": lambda: family_config("phi3"),
           "gemma2": lambda: family_config("gemma2"), "olmo2": lambda: family_config("olmo2")}
UNITS = {"phi3": "head", "olmo2": "head"}  # the attention unit each case slices in (default kv-group)


def linear_flops(module: nn.Module) -> int:
    """2 × the weight elements of every Linear under ``module``: its FLOPs per token."""
    return 2 * sum(m.weight.numel() for m in module.modules() if isinstance(m, nn.Linear))


def _kept(a, block: int) -> dict[str, torch.Tensor]:
    """Per block other widths: attention one or two groups fewer (per KV block), neurons 40 or 24."""
    g = torch.Generator().manual_seed(block)
    if a.attention_fixed_reason:
        attn = torch.arange(a.n_attn_groups)
    else:
        size = a.n_attn_groups // a.attn_blocks
        keep = max(1, size - 1 - block)
        attn = torch.cat([torch.randperm(size, generator=g)[:keep] + b * size for b in range(a.attn_blocks)])
    return {"attn": attn.sort().values, "mlp": torch.randperm(a.ffn_dim, generator=g)[:40 - 16 * block].sort().values}


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_flops_model_equals_the_sliced_models_linear_layers(family):
    cfg = CONFIGS[family]()
    model = make_model(cfg)
    a = get_adapter(model, UNITS.get(family))
    dense = flops_per_token(cfg)
    layers = a.layers(model)
    attn_truth = [linear_flops(getattr(layer, a.attn_module)) for layer in layers]
    assert dense["attn"] == sum(attn_truth)
    assert dense["mlp"] == sum(linear_flops(layer) for layer in layers) - sum(attn_truth)
    kept = {i: _kept(a, i) for i in range(len(layers))}
    slice_model(model, kept, a)
    got = flops_per_token(a.original(), [len(kept[i]["attn"]) for i in kept], [len(kept[i]["mlp"]) for i in kept])
    attn = [linear_flops(getattr(layer, a.attn_module)) for layer in a.layers(model)]
    mlp = [linear_flops(layer) - t for layer, t in zip(a.layers(model), attn)]
    assert (got["attn"], got["mlp"], got["block_flops"]) == (sum(attn), sum(mlp), sum(attn) + sum(mlp))
    assert got["lm_head_flops"] == 2 * model.lm_head.weight.numel()
    assert got["total_flops"] == got["block_flops"] + got["lm_head_flops"]
    if not a.attention_fixed_reason:
        assert got["attn"] < dense["attn"]
    assert got["mlp"] < dense["mlp"]
