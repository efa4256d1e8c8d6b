"""Per-head pruning of grouped- and multi-query attention (attention unit "head"): query heads
kept uniformly per KV group, sliced, reloaded with plain from_pretrained, logits equal to the
zeroed model; families Llama, Mistral, Qwen2 (q/k/v biases), Qwen3 (per-head q/k norms), and a
multi-query model with one KV head."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from osscar.lm.adapters import get_adapter
from osscar.lm.calibrate.calibration import prune_model_sequential
from osscar.lm.slicing import save_pruned, slice_model
from osscar.methods import make_method

from .conftest import make_model, zero_out_groups


def _config(family: str, heads: int = 6, kv: int = 3):
    import transformers as tf

    common = dict(vocab_size=300, hidden_size=48, num_attention_heads=heads, num_key_value_heads=kv, head_dim=8,
                  intermediate_size=64, num_hidden_layers=2, max_position_embeddings=128,
                  attn_implementation="eager")
    cls = {"llama": tf.LlamaConfig, "mistral": tf.MistralConfig, "qwen2": tf.Qwen2Config,
           "qwen3": tf.Qwen3Config}[family]
    cfg = cls(**common)
    return cfg


FAMILIES = [("llama", 6, 3), ("mistral", 6, 3), ("qwen2", 6, 3), ("qwen3", 6, 3), ("llama", 4, 1)]


def _uniform_kept(a, seed: int, per_kv: int):
    g = torch.Generator().manual_seed(seed)
    size = a.n_attn_groups // a.attn_blocks
    heads = [torch.randperm(size, generator=g)[:per_kv] + b * size for b in range(a.attn_blocks)]
    return torch.cat(heads).sort().values


@pytest.mark.parametrize("family, heads, kv", FAMILIES, ids=[f"{f}-{h}q{k}kv" for f, h, k in FAMILIES])
def test_per_head_slicing_reloads_with_from_pretrained_and_equal_logits(family, heads, kv, tmp_path):
    model = make_model(_config(family, heads, kv))
    a = get_adapter(model, "head")
    assert a.attention_unit == "head" and a.n_attn_groups == heads and a.group_size("attn") == 8
    assert a.attn_blocks == kv and a.blocks("mlp") == 1
    keep_per = (heads // kv) - 1 if heads // kv > 1 else 1
    if kv == 1:
        keep_per = heads - 1  # multi-query: query heads prune freely
    kept = {i: {"attn": _uniform_kept(a, i, keep_per),
                "mlp": torch.randperm(64, generator=torch.Generator().manual_seed(i))[:40].sort().values}
            for i in range(2)}
    ids = torch.randint(0, 300, (2, 20), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        dense = model(ids).logits
    zero_out_groups(model, kept, a)
    with torch.no_grad():
        zeroed = model(ids).logits
    assert (zeroed - dense).abs().max() > 1e-3
    man = slice_model(model, kept, a)
    cfg = model.config
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (kv * keep_per, kv, 8)
    assert man["attention_unit"] == "head" and not man["needs_load_pruned"]
    attn = model.model.layers[0].self_attn
    assert attn.k_proj.weight.shape == (kv * 8, 48) and attn.q_proj.weight.shape == (kv * keep_per * 8, 48)
    if family == "qwen2":
        assert attn.q_proj.bias.shape == (kv * keep_per * 8,) and attn.k_proj.bias.shape == (kv * 8,)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, zeroed, atol=1e-5, rtol=1e-5)
    save_pruned(model, None, tmp_path / "m")
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "m", attn_implementation="eager").eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(ids).logits, zeroed, atol=1e-5, rtol=1e-5)


def test_sequential_pruning_keeps_the_same_heads_in_every_kv_group():
    model = make_model(_config("llama", 6, 3))
    segments = torch.randint(0, 300, (4, 16), generator=torch.Generator().manual_seed(0))
    out = prune_model_sequential(model, segments, make_method("osscar"), 3, 32, adapter=get_adapter(model, "head"))
    for i, parts in out.kept.items():
        per_group = torch.bincount(parts["attn"] // 2, minlength=3)
        assert per_group.tolist() == [1, 1, 1], (i, parts["attn"])


def test_kv_group_unit_on_a_one_kv_head_model_is_an_error(tmp_path):
    from osscar.lm.run_config import LMRunConfig, check_model

    cfg = _config("llama", 4, 1)
    make_model(cfg).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="one KV head .* use attention_unit='head'"):
        check_model(LMRunConfig(model=str(tmp_path), attention_unit="kv-group", head_fraction=0.5))


def test_heads_removed_rounding_rule():
    from osscar.lm.targets import heads_removed

    assert [heads_removed(f, 3) for f in (0.1, 0.3, 0.5, 0.7, 0.9)] == [0, 1, 2, 2, 2]  # ties remove more; ≥1 kept
    assert [heads_removed(f, 4) for f in (0.125, 0.25, 0.5)] == [1, 1, 2]
    assert heads_removed(0.5, 1) == 0
