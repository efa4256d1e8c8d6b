"""What an adapter owns: it is an abstract base class, it receives the GQA attention unit in its
constructor (no attribute on the Hugging Face config), and it returns the unpruned config of a
sliced model (the FLOPs model's reference)."""

from __future__ import annotations

import copy

import pytest
import torch

from osscar.lm.adapters import ModelAdapter, get_adapter
from osscar.lm.slicing import slice_model

from .conftest import make_model, tiny_llama_config, tiny_opt_config


def test_an_adapter_missing_a_family_method_cannot_be_made():
    class Bare(ModelAdapter):  # not registered (no model_types): only instantiation is tested
        pass

    with pytest.raises(TypeError, match="abstract.*restore_widths"):
        Bare(tiny_llama_config())


@pytest.mark.parametrize("unit,groups,blocks,size", [("head", 6, 3, 8), ("kv-group", 3, 1, 16)])
def test_the_attention_unit_arrives_in_the_constructor(unit, groups, blocks, size):
    cfg = tiny_llama_config()  # 6 query heads over 3 KV heads, head_dim 8
    a = get_adapter(cfg, unit)
    assert (a.attention_unit, a.n_attn_groups, a.attn_blocks, a.attn_group_size) == (unit, groups, blocks, size)
    assert not hasattr(cfg, "osscar_attention_unit")  # nothing was written on the HF config


def test_mha_has_one_unit_and_a_bad_unit_is_refused():
    assert get_adapter(tiny_llama_config(num_key_value_heads=6), "head").attention_unit == "kv-group"
    with pytest.raises(ValueError, match=r"attention_unit='heads'.*allowed: head, kv-group"):
        get_adapter(tiny_llama_config(), "heads")


WIDTHS = {"opt": ("ffn_dim", "num_attention_heads"),
          "llama": ("intermediate_size", "num_attention_heads", "num_key_value_heads")}


@pytest.mark.parametrize("arch", ["opt", "llama"])
@pytest.mark.parametrize("uniform", [True, False])
def test_original_config_of_a_sliced_model_has_the_dense_widths(arch, uniform):
    cfg = tiny_opt_config() if arch == "opt" else tiny_llama_config()
    dense = {k: getattr(cfg, k) for k in WIDTHS[arch]}
    model = make_model(cfg)
    a = get_adapter(model)
    g = torch.Generator().manual_seed(3)
    kept = {i: {"attn": torch.randperm(a.n_attn_groups, generator=g)[:a.n_attn_groups - 1 - (i if not uniform else 0)],
                "mlp": torch.randperm(a.ffn_dim, generator=g)[:a.ffn_dim // 2 - (5 * i if not uniform else 0)]}
            for i in range(2)}
    before = copy.deepcopy(model.config)
    slice_model(model, kept)
    orig = get_adapter(model).original_config()
    assert {k: getattr(orig, k) for k in WIDTHS[arch]} == dense
    assert orig is not model.config and getattr(model.config, "osscar_pruned", None)  # the model's own is untouched
    assert get_adapter(before).original_config().to_dict() == before.to_dict()  # unsliced: a copy of itself


@pytest.mark.parametrize("unit", ["head", "kv-group"])
def test_cache_keys_of_runs_that_wrote_the_unit_on_the_config_stay_valid(unit):
    """Latency tables and candidate databases were keyed by the config with ``osscar_attention_unit`` written on it;
    the unit now comes from the run, and the key must be the same (or every cached table and database is lost)."""
    import copy

    from osscar.lm.evaluation.latency import config_hash

    cfg = tiny_llama_config()
    old = copy.deepcopy(cfg)
    old.osscar_attention_unit = unit  # what run.py did before the unit moved into the adapter
    assert config_hash(cfg, unit) == config_hash(old)
    assert config_hash(cfg) != config_hash(cfg, unit) and config_hash(cfg, "head") != config_hash(cfg, "kv-group")
