"""Golden manifests: the ``osscar_pruned.json`` a slice writes, spelled out by hand for tiny models.

``load_pruned``, the reports and users' own loaders read these keys; a misspelt or dropped key, a swapped
width or a wrong flag would still reload in this process (the config object is in memory) and pass every
logit test, so the manifest itself is compared, literally, against what the slicing contract says.
"""

from __future__ import annotations

import json

import torch

from osscar.lm.adapters import get_adapter
from osscar.lm.slicing import MANIFEST, save_pruned, slice_model

from .conftest import make_model, tiny_llama_config, tiny_opt_config


def _kept(attn: list[int], mlp: int) -> dict[str, torch.Tensor]:
    return {"attn": torch.tensor(attn), "mlp": torch.arange(mlp)}


def _sliced(model, kept, adapter, tmp_path) -> tuple[dict, dict]:
    """(the manifest slice_model returns, the manifest file save_pruned writes)."""
    manifest = slice_model(model, kept, adapter)
    save_pruned(model, None, tmp_path / "m")
    return manifest, json.loads((tmp_path / "m" / MANIFEST).read_text())


LLAMA_ORIGINAL = {"attn_groups": 6, "ffn_dim": 64, "num_attention_heads": 6, "num_key_value_heads": 3, "head_dim": 8,
                  "attention_unit": "head"}


def test_uniform_llama_per_head_manifest(tmp_path):
    model = make_model(tiny_llama_config())  # 6 query heads over 3 KV heads, head_dim 8, FFN 64
    a = get_adapter(model, "head")
    kept = {i: _kept([0, 3, 5], 40) for i in range(2)}  # one query head per KV group (heads 0-1, 2-3, 4-5)
    manifest, written = _sliced(model, kept, a, tmp_path)
    assert manifest == written == {
        "num_attention_heads": 3, "num_key_value_heads": 3, "intermediate_size": 40, "head_dim": 8,
        "attention_unit": "head", "needs_load_pruned": False, "model_type": "llama", "original": LLAMA_ORIGINAL,
        "uniform": True, "kept_attn_groups": 3, "kept_neurons": 40}
    saved = json.loads((tmp_path / "m" / "config.json").read_text())
    assert (saved["num_attention_heads"], saved["num_key_value_heads"], saved["intermediate_size"],
            saved["head_dim"]) == (3, 3, 40, 8)


def test_uniform_llama_kv_group_manifest(tmp_path):
    model = make_model(tiny_llama_config())
    a = get_adapter(model, "kv-group")
    kept = {i: _kept([0, 2], 24) for i in range(2)}  # KV groups 0 and 2, each with its 2 query heads
    manifest, written = _sliced(model, kept, a, tmp_path)
    assert manifest == written == {
        "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 24, "head_dim": 8,
        "attention_unit": "kv-group", "needs_load_pruned": False, "model_type": "llama",
        "original": {**LLAMA_ORIGINAL, "attn_groups": 3, "attention_unit": "kv-group"},
        "uniform": True, "kept_attn_groups": 2, "kept_neurons": 24}


def test_non_uniform_llama_manifest_lists_every_block(tmp_path):
    model = make_model(tiny_llama_config())
    a = get_adapter(model, "head")
    kept = {0: _kept([1, 2, 4], 40), 1: _kept([0, 1, 2, 3, 4, 5], 16)}  # block 1: every head, fewer neurons
    manifest, written = _sliced(model, kept, a, tmp_path)
    assert manifest == written == {
        "model_type": "llama", "original": LLAMA_ORIGINAL, "uniform": False, "needs_load_pruned": True, "head_dim": 8,
        "per_layer": [{"attn_groups": 3, "neurons": 40}, {"attn_groups": 6, "neurons": 16}],
        "kept_attn_groups": [3, 6], "kept_neurons": [40, 16]}
    saved = json.loads((tmp_path / "m" / "config.json").read_text())
    assert (saved["num_attention_heads"], saved["intermediate_size"]) == (6, 64)  # the dense widths stay


def test_uniform_opt_manifest_keeps_the_config_head_count(tmp_path):
    model = make_model(tiny_opt_config())  # 4 heads of 8, FFN 64
    a = get_adapter(model)
    kept = {i: _kept([1, 3], 48) for i in range(2)}
    manifest, written = _sliced(model, kept, a, tmp_path)
    assert manifest == written == {
        "num_attention_heads": 2, "ffn_dim": 48, "head_dim": 8, "needs_load_pruned": True, "model_type": "opt",
        "original": {"attn_groups": 4, "ffn_dim": 64, "num_attention_heads": 4, "num_key_value_heads": 4, "head_dim": 8,
                     "attention_unit": "kv-group"},
        "uniform": True, "kept_attn_groups": 2, "kept_neurons": 48}
    saved = json.loads((tmp_path / "m" / "config.json").read_text())
    assert (saved["num_attention_heads"], saved["ffn_dim"], saved["osscar_num_attention_heads"]) == (4, 48, 2)  # OPT: head_dim from the head count


def test_original_config_undoes_the_slice():
    model = make_model(tiny_llama_config())
    a = get_adapter(model, "head")
    slice_model(model, {i: _kept([0, 2, 4], 40) for i in range(2)}, a)
    original = a.original()
    assert (original.config.num_attention_heads, original.config.num_key_value_heads,
            original.config.intermediate_size) == (6, 3, 64)
    assert original.attention_unit == "head" and original.n_attn_groups == 6
    assert (model.config.num_attention_heads, model.config.intermediate_size) == (3, 40)  # the model's own is sliced


# -- reading a folder back: load_pruned ------------------------------------------------------------------------
IDS = torch.randint(0, 300, (2, 12), generator=torch.Generator().manual_seed(4))


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits


def test_load_pruned_rebuilds_per_head_blocks_in_the_manifest_unit(tmp_path):
    """Per-block head counts (Llama, 6 heads over 3 KV heads): the canonical kept heads must be spread over the
    KV groups as they were pruned (one per group, not the first three heads), a width of 1 query head per group
    is a width (not a removed module) and the full width is left alone; float64 is honoured."""
    from osscar.lm.slicing import load_pruned

    model = make_model(tiny_llama_config())
    a = get_adapter(model, "head")
    kept = {0: _kept([1, 2, 5], 1), 1: _kept([0, 1, 2, 3, 4, 5], 63)}  # one neuron in block 0; all heads in block 1
    slice_model(model, kept, a)
    save_pruned(model, None, tmp_path / "m")
    model.config.osscar_pruned = None
    reloaded = load_pruned(tmp_path / "m", dtype=torch.float64)
    assert {p.dtype for p in reloaded.parameters()} == {torch.float64}
    assert reloaded.config.osscar_pruned == json.loads((tmp_path / "m" / MANIFEST).read_text())
    torch.testing.assert_close(_logits(reloaded).float(), _logits(model), atol=1e-4, rtol=1e-4)


def test_load_pruned_of_sharded_opt_with_one_head_and_one_neuron(tmp_path):
    """A block with one head and one neuron (widths, not removals), weights in several shards (read through the
    index), float32 kept."""
    from osscar.lm.slicing import load_pruned

    model = make_model(tiny_opt_config())
    a = get_adapter(model)
    slice_model(model, {0: _kept([2], 1), 1: _kept([0, 1, 3], 64)}, a)
    save_pruned(model, None, tmp_path / "m")
    for f in (tmp_path / "m").glob("model*.safetensors*"):
        f.unlink()
    model.save_pretrained(tmp_path / "m", max_shard_size="20KB")
    assert (tmp_path / "m" / "model.safetensors.index.json").is_file()
    reloaded = load_pruned(tmp_path / "m", dtype=torch.float32)
    assert {p.dtype for p in reloaded.parameters()} == {torch.float32}
    torch.testing.assert_close(_logits(reloaded), _logits(model), atol=1e-5, rtol=1e-5)


def test_load_pruned_refuses_missing_or_unexpected_tensors(tmp_path):
    import pytest
    from safetensors.torch import load_file, save_file

    from osscar.lm.slicing import load_pruned

    model = make_model(tiny_opt_config(tie_word_embeddings=False))  # lm_head.weight is its own tensor
    slice_model(model, {0: _kept([2], 8), 1: _kept([0, 1], 16)}, get_adapter(model))
    save_pruned(model, None, tmp_path / "m")
    path = tmp_path / "m" / "model.safetensors"
    state = load_file(str(path))
    for name, edit in (("missing", lambda sd: sd.pop("lm_head.weight")),
                       ("unexpected", lambda sd: sd.__setitem__("extra.weight", torch.zeros(1)))):
        sd = dict(state)
        edit(sd)
        save_file(sd, str(path), metadata={"format": "pt"})
        with pytest.raises(RuntimeError, match=f"load_pruned\\(.*\\): missing .*{'lm_head' if name == 'missing' else 'extra'}"):
            load_pruned(tmp_path / "m")


def test_a_plain_folder_loads_with_from_pretrained(tmp_path):
    """No manifest (a dense model, or a slice every transformers loader reads): from_pretrained, in the dtype."""
    from osscar.lm.slicing import load_pruned

    model = make_model(tiny_llama_config())
    model.save_pretrained(tmp_path / "m")
    reloaded = load_pruned(tmp_path / "m", dtype=torch.float64)
    assert {p.dtype for p in reloaded.parameters()} == {torch.float64} and not hasattr(reloaded.config, "osscar_pruned")
    torch.testing.assert_close(_logits(reloaded).float(), _logits(model), atol=1e-4, rtol=1e-4)


def test_kept_groups_read_back_from_zeroed_columns():
    from osscar.lm.slicing import kept_from_zero_columns

    from .conftest import zero_out_groups

    model = make_model(tiny_llama_config())
    kept = {0: {"attn": torch.tensor([0, 2]), "mlp": torch.tensor([1, 5, 63])},
            1: {"attn": torch.tensor([1]), "mlp": torch.arange(10, 30)}}
    zero_out_groups(model, kept, get_adapter(model, "kv-group"))
    got = kept_from_zero_columns(model)  # kv-group: 3 groups of 16 columns
    assert {i: {p: t.tolist() for p, t in parts.items()} for i, parts in got.items()} == \
        {i: {p: t.tolist() for p, t in parts.items()} for i, parts in kept.items()}


def test_one_block_model_and_blocks_left_out(tmp_path):
    """A one-block model slices uniformly; blocks absent from ``kept`` keep their width; an unsliced model saves
    an empty manifest."""
    one = make_model(tiny_llama_config(num_hidden_layers=1))
    manifest = slice_model(one, {0: _kept([0, 2], 16)}, get_adapter(one, "kv-group"))
    assert manifest["uniform"] and (manifest["kept_attn_groups"], manifest["kept_neurons"]) == (2, 16)
    model = make_model(tiny_llama_config())
    manifest = slice_model(model, {1: _kept([1], 8)}, get_adapter(model, "kv-group"))  # block 0 absent: whole
    assert manifest["per_layer"] == [{"attn_groups": 3, "neurons": 64}, {"attn_groups": 1, "neurons": 8}]
    save_pruned(make_model(tiny_llama_config()), None, tmp_path / "dense")
    assert json.loads((tmp_path / "dense" / MANIFEST).read_text()) == {}


def test_uniform_widths_of_one_are_a_config_and_a_uniform_removal_is_not(tmp_path):
    """Every block at one KV group and one neuron: uniform, the config describes it. Every block's MLP removed
    (0 neurons): no config describes a removed module, so the manifest lists the blocks and needs load_pruned."""
    model = make_model(tiny_llama_config())
    manifest = slice_model(model, {i: _kept([1], 1) for i in range(2)}, get_adapter(model, "kv-group"))
    assert manifest["uniform"] and (manifest["kept_attn_groups"], manifest["kept_neurons"]) == (1, 1)
    assert not manifest["needs_load_pruned"] and model.config.intermediate_size == 1
    model = make_model(tiny_llama_config())
    manifest = slice_model(model, {i: _kept([0, 1, 2], 0) for i in range(2)}, get_adapter(model, "kv-group"))
    assert not manifest["uniform"] and manifest["needs_load_pruned"]
    assert manifest["per_layer"] == [{"attn_groups": 3, "neurons": 0}] * 2 and model.config.intermediate_size == 64
