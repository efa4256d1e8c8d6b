"""Level 0 (a module removed whole) and per-head levels on tiny random configs of every family,
with random biases and norms, in float64: the sliced model, and its save / ``load_pruned`` reload,
give the logits of the dense model with the removed module's consumer weights zeroed (its bias
kept) and the pruned heads' / neurons' consumer columns zeroed. Blocks take different widths."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from osscar.lm.adapters import get_adapter
from osscar.lm.allocation.levels import attention_levels, ladder, mlp_levels
from osscar.lm.removed import RemovedAttention
from osscar.lm.slicing import MANIFEST, load_pruned, save_pruned, slice_model

IDS = torch.randint(0, 300, (2, 12), generator=torch.Generator().manual_seed(3))
N_LAYERS = 3


def _config(family: str, heads: int, kv: int):
    import transformers as tf

    common = dict(vocab_size=300, hidden_size=48, num_attention_heads=heads, num_key_value_heads=kv, head_dim=8,
                  intermediate_size=64, num_hidden_layers=N_LAYERS, max_position_embeddings=64,
                  attn_implementation="eager", pad_token_id=0, bos_token_id=0, eos_token_id=0)
    layer_types = ["sliding_attention", "full_attention", "sliding_attention"]
    if family == "opt":
        return tf.OPTConfig(vocab_size=300, hidden_size=32, num_attention_heads=4, ffn_dim=64,
                            num_hidden_layers=N_LAYERS, max_position_embeddings=64, word_embed_proj_dim=32,
                            attn_implementation="eager")
    extra = {"llama": dict(attention_bias=True, mlp_bias=True),  # biases on o_proj / down_proj: kept by level 0
             "mistral": {}, "qwen2": {}, "qwen3": {}, "gemma": {}, "phi3": {}, "olmo2": {},
             "gemma2": dict(sliding_window=5, layer_types=layer_types, query_pre_attn_scalar=8,
                            attn_logit_softcapping=5.0, final_logit_softcapping=3.0),
             "gemma3_text": dict(sliding_window=5, layer_types=layer_types, query_pre_attn_scalar=8)}[family]
    cls = {"llama": tf.LlamaConfig, "mistral": tf.MistralConfig, "qwen2": tf.Qwen2Config, "qwen3": tf.Qwen3Config,
           "gemma": tf.GemmaConfig, "gemma2": tf.Gemma2Config, "gemma3_text": tf.Gemma3TextConfig,
           "phi3": tf.Phi3Config, "olmo2": tf.Olmo2Config}[family]
    cfg = cls(**common, **extra)
    return cfg


def random_model(config, seed: int = 0):
    """float64, every weight random: matrices ×5 (pruning visibly changes the function), biases
    N(0, 0.5²), norm weights U(0.5, 1.5) (HF initialises both to constants)."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float64).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2 and "embed" not in name:
                p.mul_(5.0)
            elif p.ndim == 1 and "norm" in name:
                p.copy_(torch.rand(p.shape, generator=g, dtype=p.dtype) + 0.5)
            elif p.ndim == 1:
                p.copy_(0.5 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


def reload(path):
    model = load_pruned(path, dtype=torch.float64)
    model.set_attn_implementation("eager")  # as the reference (sdpa rounds differently)
    return model


def zeroed_reference(model, widths):
    """The ground truth: the dense HF model with consumer columns zeroed (biases untouched).

    widths: per block (attention kept, neurons kept); the first heads of every KV group / the
    first neurons are kept, a width of 0 zeroes the whole consumer."""
    a = get_adapter(model, "head")
    for layer, (ka, km) in zip(a.layers(model), widths):
        for part, k in (("attn", ka), ("mlp", km)):
            W = a.consumer(layer, part).weight.data
            s = a.group_size(part)
            live = torch.zeros(a.n_groups(part), dtype=torch.bool)
            if k:
                live[a.canonical_kept(part, k)] = True
            W[:, ~live.repeat_interleave(s)] = 0
    return model


def _kept(a, widths):
    return {i: {"attn": a.canonical_kept("attn", ka) if ka else torch.zeros(0, dtype=torch.long),
                "mlp": torch.arange(km)} for i, (ka, km) in enumerate(widths)}


def _widths(a):
    """Three blocks of different widths: attention removed | per-head level | another level (or all),
    MLP partial | removed | all (every block different, level 0 in two of them)."""
    levels = attention_levels(a)
    mid = levels[1] if len(levels) > 2 else levels[-1]
    return [(0, 40), (mid, 0), (levels[-1] if len(levels) <= 3 else levels[2], a.ffn_dim)]


CASES = [("opt", 4, 4), ("llama", 6, 3), ("llama", 4, 4), ("llama", 4, 1), ("mistral", 6, 3), ("qwen2", 6, 3),
         ("qwen3", 6, 2), ("gemma", 6, 3), ("gemma2", 6, 3), ("gemma3_text", 6, 3), ("phi3", 6, 3),
         ("phi3", 4, 4), ("olmo2", 6, 3)]


@pytest.mark.parametrize("family, heads, kv", CASES, ids=[f"{f}-{h}q{k}kv" for f, h, k in CASES])
def test_level0_and_per_head_levels_slice_and_reload_with_the_zeroed_logits(family, heads, kv, tmp_path):
    model = random_model(_config(family, heads, kv))
    a = get_adapter(model, "head")
    widths = _widths(a)
    with torch.no_grad():
        dense = model(IDS).logits
    zeroed_model = zeroed_reference(random_model(_config(family, heads, kv)), widths)
    with torch.no_grad():
        zeroed = zeroed_model(IDS).logits
    assert (zeroed - dense).abs().max() > 1e-3  # the removal is visible
    man = slice_model(model, _kept(a, widths), a)
    layers = a.layers(model)
    assert isinstance(layers[0].self_attn, RemovedAttention) and not isinstance(layers[1].self_attn, RemovedAttention)
    assert a.consumer(layers[1], "mlp").weight.shape[1] == 0
    assert man["needs_load_pruned"] and [(w["attn_groups"], w["neurons"]) for w in man["per_layer"]] == widths
    with torch.no_grad():
        torch.testing.assert_close(model(IDS).logits, zeroed, atol=1e-10, rtol=1e-10)
    save_pruned(model, None, tmp_path / "m")
    reloaded = reload(tmp_path / "m")
    assert isinstance(a.layers(reloaded)[0].self_attn, RemovedAttention)
    assert sum(p.numel() for p in reloaded.parameters()) == sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        torch.testing.assert_close(reloaded(IDS).logits, zeroed, atol=1e-10, rtol=1e-10)
    assert (tmp_path / "m" / MANIFEST).is_file()


@pytest.mark.parametrize("family", ["opt", "llama", "phi3", "gemma2"])
def test_a_block_with_both_modules_removed_passes_the_residual_stream(family, tmp_path):
    model = random_model(_config(family, 6 if family != "opt" else 4, 3 if family != "opt" else 4))
    a = get_adapter(model, "head")
    widths = [(0, 0), (a.n_attn_groups, a.ffn_dim), (a.n_attn_groups, a.ffn_dim)]
    zeroed = zeroed_reference(random_model(model.config), widths)
    with torch.no_grad():
        ref = zeroed(IDS).logits
    slice_model(model, _kept(a, widths), a)
    state = model.state_dict()
    block0 = f"{a.layers_path}.0."
    assert not any(k.startswith(block0) and ("q_proj" in k or "qkv_proj" in k) for k in state)
    save_pruned(model, None, tmp_path / "m")
    with torch.no_grad():
        torch.testing.assert_close(reload(tmp_path / "m")(IDS).logits, ref,
                                   atol=1e-10, rtol=1e-10)


def test_level_ladders():
    llama = get_adapter(_config("llama", 6, 3), "head")
    assert attention_levels(llama) == [0, 3, 6]  # 0, 1 or 2 query heads in each of the 3 KV groups
    assert attention_levels(get_adapter(_config("llama", 4, 4), "head")) == [0, 1, 2, 3, 4]  # MHA: every head count
    assert attention_levels(get_adapter(_config("llama", 4, 1), "head")) == [0, 1, 2, 3, 4]  # MQA: query heads freely
    assert attention_levels(get_adapter(_config("llama", 6, 3), "kv-group")) == [0, 1, 2, 3]
    assert attention_levels(get_adapter(_config("olmo2", 6, 3), "head")) == [0, 6]  # heads not exact; removal is
    assert mlp_levels(llama, 4) == [0, 16, 32, 48, 64]
    assert ladder(llama, 2) == {"attn": [0, 3, 6], "mlp": [0, 32, 64]}
    with pytest.raises(ValueError, match="mlp steps must be a positive integer"):
        mlp_levels(llama, 0)


def test_level_costs_match_hand_counts():
    """params: counted from the shapes by hand (d = 48, head_dim 8, 3 KV heads, F = 64; OPT d = 32,
    4 heads of 8, F = 64, every Linear with a bias); flops: 2 per multiply-add, 0 when removed."""
    from osscar.lm.allocation.levels import level_costs

    llama = _config("llama", 6, 3)
    llama.attention_bias = llama.mlp_bias = False
    p = level_costs(llama, 2, "params", "head")
    d, hd, kv = 48, 8, 3
    assert p["attn"] == {0: 0, 3: 2 * d * 3 * hd + 2 * d * kv * hd, 6: 2 * d * 6 * hd + 2 * d * kv * hd}
    assert p["mlp"] == {0: 0, 32: 3 * d * 32, 64: 3 * d * 64}
    opt = level_costs(_config("opt", 4, 4), 1, "params", "head")
    assert opt["attn"] == {k: 4 * 32 * 8 * k + 3 * 8 * k + 32 for k in range(5)}  # q,k,v,out; out_proj bias stays
    assert opt["mlp"] == {0: 32, 64: 2 * 32 * 64 + 64 + 32}  # fc2's bias stays with level 0
    f = level_costs(llama, 2, "flops", "head")
    assert f["attn"] == {0: 0, 3: 2 * (2 * d * 3 * hd + 2 * d * kv * hd), 6: 2 * (2 * d * 6 * hd + 2 * d * kv * hd)}
    assert f["mlp"] == {0: 0, 32: 2 * 3 * d * 32, 64: 2 * 3 * d * 64}
    from osscar.lm.evaluation.measure import flops_per_token

    got = flops_per_token(get_adapter(llama, "head"), [0, 6, 3], [0, 64, 32])  # widths count query heads
    assert (got["attn"], got["mlp"]) == (f["attn"][6] + f["attn"][3], f["mlp"][64] + f["mlp"][32])
    with pytest.raises(ValueError, match="cost kind 'time' is unknown; allowed: params, flops"):
        level_costs(llama, 2, "time", "head")


def test_latency_table_times_per_head_levels_and_level0(tmp_path):
    """Timings are not asserted on: only which levels are timed, the keys, and that level 0 runs."""
    from osscar.lm.allocation.levels import latency_costs
    from osscar.lm.evaluation.latency import latency_table

    cfg = _config("llama", 6, 3)
    kw = dict(batch=1, seqlen=4, repeats=1, warmup=0, mlp_levels=2, cache_dir=tmp_path, use_cache=False,
              attention_unit="head")
    plain = latency_table(cfg, **kw)
    assert sorted(plain.attn) == [3, 6] and sorted(plain.mlp) == [32, 64]  # per-head levels: 1 or 2 per KV group
    assert plain.key["attn_levels"] == [3, 6] and plain.key["mlp_levels"] == [32, 64]  # keys as before
    with pytest.raises(ValueError, match="no level 0 for attn; measure it with latency_table"):
        latency_costs(plain, ladder(get_adapter(cfg, "head"), 2))
    full = latency_table(cfg, removal=True, **kw)
    assert sorted(full.attn) == [0, 3, 6] and sorted(full.mlp) == [0, 32, 64]
    assert full.key["attn_levels"] == [0, 3, 6] and full.key != plain.key
    costs = latency_costs(full, ladder(get_adapter(cfg, "head"), 2))
    assert set(costs["attn"]) == {0, 3, 6} and all(v >= 0 for v in costs["mlp"].values())
    opt = latency_table(_config("opt", 4, 4), removal=True, **kw)  # MHA with biases: every head count
    assert sorted(opt.attn) == [0, 1, 2, 3, 4] and sorted(opt.mlp) == [0, 32, 64]


def test_the_same_removal_in_every_block_is_written_per_block(tmp_path):
    """Uniform widths with a removed module: no HF config describes it, so the manifest is per block."""
    model = random_model(_config("qwen2", 6, 3))
    a = get_adapter(model, "head")
    widths = [(6, 0)] * N_LAYERS
    ref = zeroed_reference(random_model(_config("qwen2", 6, 3)), widths)
    man = slice_model(model, _kept(a, widths), a)
    assert not man["uniform"] and man["needs_load_pruned"] and model.config.intermediate_size == 64
    save_pruned(model, None, tmp_path / "m")
    with torch.no_grad():
        torch.testing.assert_close(reload(tmp_path / "m")(IDS).logits, ref(IDS).logits, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("family", ["llama", "opt", "gemma2", "phi3"])
def test_a_removed_attention_keeps_cached_decoding_right(family):
    """Prefill 7 tokens, then decode 5 with the KV cache: with block 0's attention removed (its
    cache layer never written), positions and masks still come out as in the zeroed model."""
    cfg = _config(family, 6 if family != "opt" else 4, 3 if family != "opt" else 4)
    model = random_model(cfg)
    a = get_adapter(model, "head")
    widths = [(0, 32), (a.n_attn_groups, a.ffn_dim), (attention_levels(a)[1], 0)]
    ref = zeroed_reference(random_model(cfg), widths)
    slice_model(model, _kept(a, widths), a)
    with torch.no_grad():
        outs = []
        for m in (model, ref):
            first = m(IDS[:, :7], use_cache=True)
            outs.append(m(IDS[:, 7:], cache=first.cache, use_cache=True).logits)  # transformers 5: ``cache``
    torch.testing.assert_close(outs[0], outs[1], atol=1e-10, rtol=1e-10)
