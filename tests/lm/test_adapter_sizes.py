"""What an adapter says about a block's sizes, spelled out for tiny configs: groups per part, the canonical kept
set that rebuilds a sliced block's shapes, the original config behind a sliced one, Phi-3's per-block config view."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch

from osscar.lm.adapters import available_adapters, get_adapter
from osscar.lm.adapters.phi3 import BlockConfig

from .conftest import tiny_llama_config, tiny_opt_config


def test_groups_and_group_sizes_per_unit():
    head, kv = get_adapter(tiny_llama_config(), "head"), get_adapter(tiny_llama_config(), "kv-group")
    assert (head.n_groups("attn"), head.n_groups("mlp"), head.group_size("attn"), head.group_size("mlp")) == (6, 64, 8, 1)
    assert (kv.n_groups("attn"), kv.n_groups("mlp"), kv.group_size("attn"), kv.group_size("mlp")) == (3, 64, 16, 1)
    opt = get_adapter(tiny_opt_config())
    assert (opt.n_groups("attn"), opt.n_groups("mlp"), opt.group_size("attn")) == (4, 64, 8)


def test_canonical_kept_spreads_heads_over_the_kv_groups():
    """Per head (6 query heads over 3 KV heads, 2 each): the first ``count / 3`` heads of every group;
    otherwise (a kv-group unit, MHA, the MLP) the first ``count``."""
    head = get_adapter(tiny_llama_config(), "head")
    assert head.canonical_kept("attn", 3).tolist() == [0, 2, 4]
    assert head.canonical_kept("attn", 6).tolist() == [0, 1, 2, 3, 4, 5]
    assert get_adapter(tiny_llama_config(num_attention_heads=8, num_key_value_heads=2), "head"
                       ).canonical_kept("attn", 4).tolist() == [0, 1, 4, 5]  # 2 KV groups of 4 heads
    assert head.canonical_kept("mlp", 5).tolist() == [0, 1, 2, 3, 4]
    assert get_adapter(tiny_llama_config(), "kv-group").canonical_kept("attn", 2).tolist() == [0, 1]
    assert get_adapter(tiny_opt_config()).canonical_kept("attn", 3).tolist() == [0, 1, 2]


def test_original_config_is_a_copy_with_the_dense_widths():
    a = get_adapter(tiny_llama_config(), "kv-group")
    a.update_config(a.config, 2, 40)
    a.config.osscar_pruned = {"original": {"attn_groups": 3, "ffn_dim": 64, "num_attention_heads": 6,
                                           "num_key_value_heads": 3, "head_dim": 8}}
    original = a.original_config()
    assert (original.num_attention_heads, original.num_key_value_heads, original.intermediate_size) == (6, 3, 64)
    assert (a.config.num_attention_heads, a.config.num_key_value_heads, a.config.intermediate_size) == (4, 2, 40)
    dense = get_adapter(tiny_llama_config())
    assert dense.original_config().to_dict() == dense.config.to_dict() and dense.original_config() is not dense.config


def test_phi3_block_config_view():
    base = tiny_llama_config()
    view = BlockConfig(base, num_attention_heads=3)
    assert view.num_attention_heads == 3 and view.hidden_size == 48 and base.num_attention_heads == 6
    again = BlockConfig(view, num_key_value_heads=1)  # sliced again: one view over the shared config
    assert again._base is base and (again.num_attention_heads, again.num_key_value_heads) == (3, 1)
    for clone in (copy.deepcopy(view), pickle.loads(pickle.dumps(view))):
        assert isinstance(clone, BlockConfig) and clone.num_attention_heads == 3 and clone.hidden_size == 48
    with pytest.raises(AttributeError, match="no_such_field"):
        view.no_such_field  # noqa: B018
    half_built = BlockConfig.__new__(BlockConfig)  # as unpickling makes it, before its state is set
    with pytest.raises(AttributeError, match="_overrides"):  # not an endless recursion through __getattr__
        half_built.hidden_size  # noqa: B018
    object.__setattr__(half_built, "_overrides", {})
    with pytest.raises(AttributeError, match="_base"):
        half_built.hidden_size  # noqa: B018


def test_every_family_is_registered_by_its_model_type():
    assert {"opt", "llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3", "olmo2"} <= \
        set(available_adapters())


@pytest.mark.parametrize("unit, heads, kv, kept, expect", [("head", 4, 1, [0, 1, 3], (3, 1)),
                                                           ("kv-group", 6, 3, [0, 2], (4, 2))])
def test_phi3_sliced_block_config_describes_the_block(unit, heads, kv, kept, expect):
    """Phi-3's attention splits its fused qkv by its config's head counts at every forward: the block's own view
    must give the heads it has (and the KV heads it has: one shared KV head stays one)."""
    from .test_families import family_model

    model = family_model("phi3", heads, kv)
    a = get_adapter(model, unit)
    layer = a.layers(model)[0]
    a.slice_attention(layer, torch.tensor(kept))
    cfg = layer.self_attn.config
    assert (cfg.num_attention_heads, cfg.num_key_value_heads) == expect
    assert (model.config.num_attention_heads, model.config.num_key_value_heads) == (heads, kv)  # shared config intact


def test_lookup_by_model_type_past_unregistered_subclasses():
    """An object without ``model_type`` is a clear ValueError listing the families; a subclass of an adapter
    that registers no model type of its own (a user's extension in progress) leaves the lookup intact."""
    from osscar.lm.adapters.llama import LlamaAdapter

    with pytest.raises(ValueError, match=r"model_type=None; allowed: .*llama.*, opt"):
        get_adapter(object())

    class Draft(LlamaAdapter):  # not registered: no model_types in its own namespace
        pass

    assert type(get_adapter(tiny_llama_config())) is LlamaAdapter and "llama" in available_adapters()
    del Draft
