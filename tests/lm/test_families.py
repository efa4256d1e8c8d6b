"""Families beyond Llama/OPT on tiny random configs: Gemma, Gemma 2, Gemma 3 (text), Phi-3 (fused
qkv / gate_up), OLMo 2 (MLP only). Per family: per-head (GQA, and one KV head) and whole-KV-group
slicing, reload with plain ``from_pretrained`` in float64 with logits equal to the zeroed model,
the ``mlp_output_is_residual`` flag checked against the block itself, and sequential calibration
with each block's own kwargs (sliding-window and full attention)."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from osscar.lm.adapters import available_adapters, get_adapter
from osscar.lm.calibrate.calibration import capture_inputs, prune_model_sequential
from osscar.lm.slicing import save_pruned, slice_model
from osscar.methods import make_method

from .conftest import make_model, zero_out_groups

IDS = torch.randint(0, 300, (2, 20), generator=torch.Generator().manual_seed(3))
SLIDING = ["sliding_attention", "full_attention"]  # block 0 sliding (window 5 < 20 tokens), block 1 full


def family_config(family: str, heads: int = 6, kv: int = 3):
    import transformers as tf

    common = dict(vocab_size=300, hidden_size=48, num_attention_heads=heads, num_key_value_heads=kv, head_dim=8,
                  intermediate_size=64, num_hidden_layers=2, max_position_embeddings=128,
                  attn_implementation="eager", pad_token_id=0, bos_token_id=0, eos_token_id=0)
    extra = {"gemma": {}, "phi3": {}, "olmo2": {},
             "gemma2": dict(sliding_window=5, layer_types=SLIDING, query_pre_attn_scalar=8,
                            attn_logit_softcapping=5.0, final_logit_softcapping=3.0),
             "gemma3_text": dict(sliding_window=5, layer_types=SLIDING, query_pre_attn_scalar=8,
                                 final_logit_softcapping=3.0)}[family]
    cls = {"gemma": tf.GemmaConfig, "gemma2": tf.Gemma2Config, "gemma3_text": tf.Gemma3TextConfig,
           "phi3": tf.Phi3Config, "olmo2": tf.Olmo2Config}[family]
    if family in ("phi3", "olmo2"):  # their hub configs derive head_dim = hidden/heads: the slicer must write it
        del common["head_dim"]
    cfg = cls(**common, **extra)
    return cfg


def family_model(family: str, heads: int = 6, kv: int = 3):
    """``make_model``'s weights, built in float64 (as from_pretrained(dtype=float64) builds the reload:
    Gemma's embedding scale buffer is computed in the build dtype)."""
    cfg = family_config(family, heads, kv)
    model = make_model(cfg)
    model64 = AutoModelForCausalLM.from_config(cfg, dtype=torch.float64).eval()
    model64.load_state_dict(model.state_dict())
    return model64


ATTN_FAMILIES = ["gemma", "gemma2", "gemma3_text", "phi3"]  # OLMo 2: MLP only (test below)
CASES = [(f, 6, 3) for f in ATTN_FAMILIES] + [(f, 4, 1) for f in ATTN_FAMILIES]


def _kept_heads(a, per_kv: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    size = a.n_attn_groups // a.attn_blocks
    return torch.cat([torch.randperm(size, generator=g)[:per_kv] + b * size for b in range(a.attn_blocks)]).sort().values


def _kept_neurons(seed: int, n: int = 40):
    return torch.randperm(64, generator=torch.Generator().manual_seed(seed))[:n].sort().values


def _zero_slice_reload(model, kept, adapter, tmp_path):
    """Zero the pruned groups, slice, save, reload with from_pretrained; return (zeroed, sliced, reloaded) logits."""
    with torch.no_grad():
        dense = model(IDS).logits
    zero_out_groups(model, kept, adapter)
    with torch.no_grad():
        zeroed = model(IDS).logits
    assert (zeroed - dense).abs().max() > 1e-3  # pruning changed the function
    man = slice_model(model, kept, adapter)
    with torch.no_grad():
        sliced = model(IDS).logits
    save_pruned(model, None, tmp_path / "m")
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "m", dtype=torch.float64,
                                                 attn_implementation="eager").eval()
    with torch.no_grad():
        reloaded = plain(IDS).logits
    return zeroed, sliced, reloaded, man, plain


def _assert_equal(a, b):
    torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("family, heads, kv", CASES, ids=[f"{f}-{h}q{k}kv" for f, h, k in CASES])
def test_per_head_slicing_reloads_with_equal_logits(family, heads, kv, tmp_path):
    model = family_model(family, heads, kv)
    a = get_adapter(model, "head")
    assert a.attention_unit == "head" and a.n_attn_groups == heads and a.attn_blocks == kv
    hd = a.head_dim  # 8, or 48 / 4 for a Phi-3 config without head_dim
    per_kv = heads - 1 if kv == 1 else heads // kv - 1  # one KV head: query heads prune freely
    kept = {i: {"attn": _kept_heads(a, per_kv, i), "mlp": _kept_neurons(i)} for i in range(2)}
    zeroed, sliced, reloaded, man, plain = _zero_slice_reload(model, kept, a, tmp_path)
    _assert_equal(sliced, zeroed)
    _assert_equal(reloaded, zeroed)
    assert not man["needs_load_pruned"] and man["attention_unit"] == "head"
    assert "osscar_attention_unit" not in json.loads((tmp_path / "m" / "config.json").read_text())
    saved = json.loads((tmp_path / "m" / "config.json").read_text())
    assert (saved["num_attention_heads"], saved["num_key_value_heads"], saved["head_dim"],
            saved["intermediate_size"]) == (kv * per_kv, kv, hd, 40)
    cfg = plain.config
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (kv * per_kv, kv, hd)


@pytest.mark.parametrize("family", ATTN_FAMILIES)
def test_kv_group_slicing_reloads_with_equal_logits(family, tmp_path):
    model = family_model(family, 6, 3)
    a = get_adapter(model, "kv-group")
    assert a.attention_unit == "kv-group" and a.n_attn_groups == 3 and a.group_size("attn") == 16
    kept = {i: {"attn": torch.tensor([0, 2]) if i == 0 else torch.tensor([1, 2]), "mlp": _kept_neurons(i)}
            for i in range(2)}
    zeroed, sliced, reloaded, man, plain = _zero_slice_reload(model, kept, a, tmp_path)
    _assert_equal(sliced, zeroed)
    _assert_equal(reloaded, zeroed)
    assert (plain.config.num_attention_heads, plain.config.num_key_value_heads, plain.config.head_dim) == (4, 2, 8)


def test_phi3_fused_rows_follow_the_kept_groups():
    """The fused matrices keep exactly the rows of the kept heads / neurons, in segment order."""
    model = family_model("phi3", 6, 3)
    a = get_adapter(model, "head")
    layer = a.layers(model)[0]
    qkv, gate_up = layer.self_attn.qkv_proj.weight.clone(), layer.mlp.gate_up_proj.weight.clone()
    a.slice_attention(layer, torch.tensor([1, 2, 5]))  # one query head per KV group
    a.slice_mlp(layer, torch.tensor([3, 60]))
    q_rows = torch.cat([torch.arange(h * 8, h * 8 + 8) for h in (1, 2, 5)])
    torch.testing.assert_close(layer.self_attn.qkv_proj.weight, torch.cat([qkv[q_rows], qkv[48:]]), rtol=0, atol=0)
    torch.testing.assert_close(layer.mlp.gate_up_proj.weight, gate_up[[3, 60, 67, 124]], rtol=0, atol=0)
    assert layer.self_attn.config.num_attention_heads == 3 and model.config.num_attention_heads == 6


def test_phi3_non_uniform_widths_run_per_block(tmp_path):
    """Blocks of different head counts: each sliced block splits its own qkv (its own config copy)."""
    from osscar.lm.slicing import load_pruned

    model = family_model("phi3", 6, 3)
    a = get_adapter(model, "head")
    kept = {0: {"attn": _kept_heads(a, 1, 0), "mlp": _kept_neurons(0)},
            1: {"attn": _kept_heads(a, 2, 1), "mlp": _kept_neurons(1, 30)}}
    zero_out_groups(model, kept, a)
    with torch.no_grad():
        zeroed = model(IDS).logits
    man = slice_model(model, kept, a)
    assert not man["uniform"]
    with torch.no_grad():
        _assert_equal(model(IDS).logits, zeroed)
    save_pruned(model, None, tmp_path / "m")
    reloaded = load_pruned(tmp_path / "m", dtype=torch.float64)
    reloaded.set_attn_implementation("eager")  # reaches the blocks' own configs too
    assert {layer.self_attn.config._attn_implementation for layer in a.layers(reloaded)} == {"eager"}
    with torch.no_grad():
        _assert_equal(reloaded(IDS).logits, zeroed)
    import copy

    block = copy.deepcopy(a.layers(reloaded)[0])  # latency tables time deep copies of one block
    assert block.self_attn.config.num_attention_heads == 3


def test_olmo2_prunes_the_mlp_only(tmp_path):
    model = family_model("olmo2", 6, 3)
    a = get_adapter(model, "head")
    kept = {i: {"attn": torch.arange(6), "mlp": _kept_neurons(i)} for i in range(2)}
    zeroed, sliced, reloaded, man, plain = _zero_slice_reload(model, kept, a, tmp_path)
    _assert_equal(sliced, zeroed)
    _assert_equal(reloaded, zeroed)
    assert plain.config.intermediate_size == 40 and plain.config.num_attention_heads == 6
    with pytest.raises(ValueError, match="q_norm/k_norm normalise over all heads"):
        a.slice_attention(a.layers(model)[0], torch.tensor([0, 2, 4]))
    segments = torch.randint(0, 300, (2, 12), generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="keep_attn < 6: olmo2 attention heads cannot be pruned exactly"):
        prune_model_sequential(family_model("olmo2"), segments, make_method("mp"), 3, 32, adapter=a)


def test_olmo2_head_slicing_would_not_be_exact():
    """Why OLMo 2 is MLP only: slicing heads out of q_proj and its whole-projection q_norm/k_norm
    (weights sliced too) changes the kept heads' normalisation, so the sliced model is not the
    zeroed one."""
    from osscar.lm.adapters.base import slice_linear

    model = family_model("olmo2", 6, 6)  # MHA: a head is q, k, v rows + o_proj columns
    a = get_adapter(model)
    kept = torch.tensor([0, 2, 3, 5])
    zero_out_groups(model, {i: {"attn": kept, "mlp": torch.arange(64)} for i in range(2)})
    with torch.no_grad():
        zeroed = model(IDS).logits
    rows = torch.cat([torch.arange(h * 8, h * 8 + 8) for h in kept])
    for layer in a.layers(model):
        attn = layer.self_attn
        for name in ("q_proj", "k_proj", "v_proj"):
            setattr(attn, name, slice_linear(getattr(attn, name), rows=rows))
        attn.o_proj = slice_linear(attn.o_proj, cols=rows)
        for norm in (attn.q_norm, attn.k_norm):
            norm.weight = torch.nn.Parameter(norm.weight.data[rows])
    with torch.no_grad():
        assert (model(IDS).logits - zeroed).abs().max() > 1e-3


def test_olmo2_head_fraction_is_a_one_line_error_naming_the_flag(tmp_path, capsys):
    from osscar.lm.cli import main

    make_model(family_config("olmo2")).save_pretrained(tmp_path / "olmo2")
    capsys.readouterr()
    assert main(["--model", str(tmp_path / "olmo2"), "--head-fraction", "0.5", "--output-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("osscar lm: error: --head-fraction=0.5: ")
    assert "olmo2 attention heads cannot be pruned exactly" in err


def test_every_registered_family_is_named_by_the_cli():
    from osscar.lm.cli import LM_FAMILIES

    named = {w.strip(",() ") for w in LM_FAMILIES.split()}
    assert set(available_adapters()) <= named


FLAG_FAMILIES = ["gemma", "gemma2", "gemma3_text", "phi3", "olmo2"]


@pytest.mark.parametrize("family", FLAG_FAMILIES)
def test_mlp_output_is_residual_matches_the_block(family):
    """True exactly when changing down_proj by ΔW shifts the block output by X ΔWᵀ (the calibration
    shortcut); a family whose flag is False must really break that identity."""
    model = family_model(family)
    a = get_adapter(model)
    inputs, per_layer = capture_inputs(model, a, IDS, batch_size=2)
    layer = a.layers(model)[0]
    (x, kwargs), = inputs
    seen = []
    handle = a.consumer(layer, "mlp").register_forward_hook(lambda m, i, o: seen.append(i[0].reshape(-1, 64)))
    with torch.no_grad():
        y = layer(x, **kwargs)
        dW = torch.randn_like(layer.mlp.down_proj.weight)
        layer.mlp.down_proj.weight.add_(dW)
        y2 = layer(x, **kwargs)
    handle.remove()
    y, y2 = (t[0] if isinstance(t, tuple) else t for t in (y, y2))
    shifted = y + (seen[0] @ dW.T).reshape(y.shape)
    exact = torch.allclose(y2, shifted, atol=1e-9, rtol=1e-9)
    assert exact == a.mlp_output_is_residual(), (family, a.mlp_output_is_residual())


@pytest.mark.parametrize("family", ["gemma2", "gemma3_text"])
def test_calibration_gives_each_block_its_own_mask_and_rotary(family):
    """Block 1 (full attention) is calibrated with its own inputs: its H equals XᵀX from the model's
    own forward (a sliding-window mask or local rotary table there would change H)."""
    model = family_model(family)
    a = get_adapter(model, "head")
    got = {}
    ref = []
    handle = a.consumer(a.layers(model)[1], "attn").register_forward_hook(
        lambda m, i, o: ref.append(i[0].reshape(-1, i[0].shape[-1])))
    with torch.no_grad():
        model(IDS)
    handle.remove()
    X = torch.cat(ref)
    prune_model_sequential(model, IDS, make_method("mp"), 6, 64, layers=[1], batch_size=2, adapter=a,
                           hessian_hook=lambda i, part, H: got.setdefault((i, part), H.clone()))
    torch.testing.assert_close(got[(1, "attn")], X.T @ X, atol=1e-8, rtol=1e-8)


@pytest.mark.parametrize("family", FLAG_FAMILIES)
def test_sequential_pruning_then_slicing_matches_the_zeroed_model(family, tmp_path):
    model = family_model(family)
    a = get_adapter(model, "head")
    keep_attn = 6 if family == "olmo2" else 3  # one query head per KV group
    out = prune_model_sequential(model, IDS, make_method("osscar"), keep_attn, 32, batch_size=1, adapter=a)
    if family != "olmo2":
        for parts in out.kept.values():
            assert torch.bincount(parts["attn"] // 2, minlength=3).tolist() == [1, 1, 1]
    with torch.no_grad():
        zeroed = model(IDS).logits
    slice_model(model, out.kept, a)
    save_pruned(model, None, tmp_path / "m")
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "m", dtype=torch.float64,
                                                 attn_implementation="eager").eval()
    with torch.no_grad():
        _assert_equal(plain(IDS).logits, zeroed)


@pytest.mark.parametrize("family", ["phi3", "gemma3_text"])
def test_latency_table_slices_one_block(family, tmp_path):
    """Runtime allocation's table times one sliced block per level (Phi-3: its own head counts)."""
    from osscar.lm.evaluation.latency import latency_table

    table = latency_table(family_config(family, 6, 3), batch=1, seqlen=8, repeats=1, warmup=0,
                          mlp_levels=2, cache_dir=tmp_path, use_cache=False)
    assert sorted(table.attn) == [1, 2, 3] and sorted(table.mlp) == [32, 64]
