"""Sequential calibration: H equals XᵀX of the consumer inputs (batched, float32 chunks within their
rounding bound); the no-rerun step equals re-running the block; pruning writes zero columns."""

from __future__ import annotations

import copy

import pytest
import torch

from osscar.lm.adapters import get_adapter
from osscar.lm.calibrate.calibration import HESSIAN_CHUNK_ROWS, HessianAccumulator, prune_model_sequential
from osscar.methods import make_method
from osscar.lm.slicing import slice_model


def _direct_xtx(model, segments):
    """XᵀX of every consumer's inputs from ordinary full-model forward passes."""
    a = get_adapter(model)
    H, handles = {}, []
    for i, layer in enumerate(a.layers(model)):
        for part in ("attn", "mlp"):
            def hook(mod, inp, out, key=(i, part)):
                X = inp[0].reshape(-1, inp[0].shape[-1]).double()
                H[key] = H.get(key, 0) + X.T @ X
            handles.append(a.consumer(layer, part).register_forward_hook(hook))
    with torch.no_grad():
        for seg in segments:
            model(seg[None], use_cache=False)
    for h in handles:
        h.remove()
    return H


def _assert_within_chunk_bound(H, ref, chunk_rows=HESSIAN_CHUNK_ROWS):
    """|H_ij − ref_ij| ≤ chunk_rows · 2⁻²⁴ · sqrt(ref_ii ref_jj): the float32 dot-product error bound
    of HessianAccumulator (each chunk entry sums ≤ chunk_rows products; Σ|x_i x_j| ≤ sqrt(H_ii H_jj))."""
    d = ref.diagonal().clamp_min(0).sqrt()
    bound = chunk_rows * 2.0 ** -24 * (d[:, None] * d[None, :]) + 1e-12
    assert H.dtype == torch.float64
    assert bool(((H - ref).abs() <= bound).all()), float(((H - ref).abs() / bound).max())


@pytest.mark.parametrize("batch_size", [1, 2, 8])
def test_hessians_match_direct_xtx(tiny_model, batch_size):
    """Batched calibration (last batch short for 2) gives the per-sample float64 XᵀX within the bound."""
    segs = torch.randint(0, 300, (3, 16), generator=torch.Generator().manual_seed(0))
    ref = _direct_xtx(copy.deepcopy(tiny_model), segs)
    a = get_adapter(tiny_model)
    got = {}
    # keeping every group with MP leaves the model dense, so every block sees the dense inputs
    prune_model_sequential(tiny_model, segs, make_method("mp"), a.n_attn_groups, a.ffn_dim, batch_size=batch_size,
                           hessian_hook=lambda i, part, H: got.__setitem__((i, part), H.clone()))
    assert set(got) == set(ref)
    for key in ref:
        _assert_within_chunk_bound(got[key], ref[key])


@pytest.mark.parametrize("chunk_rows", [1, 7, 512])
def test_accumulator_float32_chunks_within_bound(chunk_rows):
    """Anisotropic inputs (a few outlier features ×100, as in LLM activations), uneven chunks:
    the float32-chunk H equals float64 XᵀX within chunk_rows · 2⁻²⁴ · sqrt(H_ii H_jj)."""
    g = torch.Generator().manual_seed(0)
    lin = torch.nn.Linear(48, 5)
    acc = HessianAccumulator(lin, chunk_rows=chunk_rows)
    xs = [torch.randn(2, 301, 48, generator=g) * torch.where(torch.arange(48) < 3, 100.0, 1.0) + 0.5
          for _ in range(3)]
    with torch.no_grad():
        for x in xs:
            lin(x)
    H = acc.remove()
    X = torch.cat([x.reshape(-1, 48) for x in xs]).double()
    assert acc.n == X.shape[0]
    _assert_within_chunk_bound(H, X.T @ X, chunk_rows)
    with pytest.raises(ValueError, match="chunk_rows"):
        HessianAccumulator(lin, chunk_rows=0)


def test_residual_shortcut_equals_rerun(tiny_model):
    """Step c without the third forward (y + X ΔWᵀ) gives the same pruning as re-running the block."""
    segs = torch.randint(0, 300, (5, 16), generator=torch.Generator().manual_seed(1))
    a = get_adapter(tiny_model)
    assert a.mlp_output_is_residual()
    outs, logits = [], []
    for shortcut_bytes in (0, 1 << 30):
        model = copy.deepcopy(tiny_model)
        outs.append(prune_model_sequential(model, segs, make_method("osscar"), a.n_attn_groups - 1, a.ffn_dim // 2,
                                           batch_size=2, shortcut_bytes=shortcut_bytes))
        with torch.no_grad():
            logits.append(model(segs[:2]).logits)
    for r0, r1 in zip(outs[0].records, outs[1].records):
        assert r0.kept == r1.kept
        assert abs(r0.objective - r1.objective) <= 1e-5 * abs(r0.objective)
    torch.testing.assert_close(logits[1], logits[0], rtol=1e-5, atol=1e-5)


def test_post_norm_opt_reruns_the_block():
    """OPT-350m style (layer norm after the residual add) is not residual: the block is re-run."""
    from .conftest import make_model, tiny_opt_config

    model = make_model(tiny_opt_config(do_layer_norm_before=False))
    a = get_adapter(model)
    assert not a.mlp_output_is_residual()
    segs = torch.randint(0, 300, (3, 16), generator=torch.Generator().manual_seed(2))
    ref = copy.deepcopy(model)
    out = prune_model_sequential(model, segs, make_method("mp+"), a.n_attn_groups - 1, a.ffn_dim // 2)
    out_ref = prune_model_sequential(ref, segs, make_method("mp+"), a.n_attn_groups - 1, a.ffn_dim // 2,
                                     shortcut_bytes=0)
    assert [r.kept for r in out.records] == [r.kept for r in out_ref.records]
    with pytest.raises(ValueError, match="shortcut_bytes"):
        prune_model_sequential(ref, segs, make_method("mp"), 1, 1, shortcut_bytes=-1)


def test_sequential_pruning_then_slicing(tiny_model):
    segs = torch.randint(0, 300, (4, 16), generator=torch.Generator().manual_seed(0))
    a = get_adapter(tiny_model)
    ka, km = a.n_attn_groups - 1, a.ffn_dim // 2
    out = prune_model_sequential(tiny_model, segs, make_method("osscar"), ka, km)
    assert len(out.records) == 2 * len(a.layers(tiny_model))
    for rec in out.records:  # the method never does worse than removing nothing... but stays ≥ dense optimum
        assert rec.objective >= rec.dense_objective - 1e-6 * abs(rec.dense_objective)
    for i, layer in enumerate(a.layers(tiny_model)):
        W = a.consumer(layer, "mlp").weight.data
        assert int((W.abs().sum(0) != 0).sum()) <= km
        assert len(out.kept[i]["attn"]) == ka and len(out.kept[i]["mlp"]) == km
    ids = segs[:2]
    with torch.no_grad():
        before = tiny_model(ids).logits
    slice_model(tiny_model, out.kept)
    with torch.no_grad():
        torch.testing.assert_close(tiny_model(ids).logits, before, atol=1e-5, rtol=1e-5)


def test_osscar_beats_magnitude_on_layer_objective(tiny_model):
    """On the same calibration, OSSCAR's block-0 MLP objective is no worse than MP+'s."""
    segs = torch.randint(0, 300, (4, 16), generator=torch.Generator().manual_seed(0))
    a = get_adapter(tiny_model)
    res = {}
    for m in ("mp+", "osscar"):
        model = copy.deepcopy(tiny_model)
        out = prune_model_sequential(model, segs, make_method(m), a.n_attn_groups, a.ffn_dim // 2, layers=[0])
        res[m] = [r.objective for r in out.records if r.part == "mlp"][0]
    assert res["osscar"] <= res["mp+"] + 1e-9 * abs(res["mp+"])


def test_dense_inputs_ablation_uses_the_dense_models_hessians(tiny_model):
    """inputs_from="dense": every block's H is the dense model's XᵀX although blocks are pruned;
    the default sequential protocol sees the pruned predecessors instead (H differs after block 0)."""
    segs = torch.randint(0, 300, (3, 16), generator=torch.Generator().manual_seed(3))
    ref = _direct_xtx(copy.deepcopy(tiny_model), segs)
    a = get_adapter(tiny_model)
    got: dict[str, dict] = {"dense": {}, "pruned": {}}
    for mode in got:
        prune_model_sequential(copy.deepcopy(tiny_model), segs, make_method("mp+"), a.n_attn_groups - 1,
                               a.ffn_dim // 2, inputs_from=mode,
                               hessian_hook=lambda i, part, H, mode=mode: got[mode].__setitem__((i, part), H.clone()))
    assert set(got["dense"]) == set(ref)
    for key in ref:
        _assert_within_chunk_bound(got["dense"][key], ref[key])
    last = max(i for i, _ in ref)
    assert not torch.allclose(got["pruned"][(last, "attn")], ref[(last, "attn")], rtol=1e-3)
    with pytest.raises(ValueError, match="inputs_from"):
        prune_model_sequential(tiny_model, segs, make_method("mp"), 1, 1, inputs_from="teacher")


def test_each_block_gets_its_own_kwargs_on_a_model_with_mixed_layer_types():
    """A tiny Qwen2 whose second block uses sliding-window attention (window 4) and whose first
    uses full attention: every consumer's H from the sequential calibration (dense inputs, nothing
    removed) equals the XᵀX accumulated by hooks on one plain forward of the full model. With block
    0's mask reused for block 1 (the old capture), block 1's H would differ."""
    import transformers as tf

    from osscar.lm.adapters import get_adapter
    from osscar.lm.calibrate.calibration import capture_inputs, prune_model_sequential

    from .conftest import make_model

    cfg = tf.Qwen2Config(vocab_size=300, hidden_size=32, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                         intermediate_size=48, num_hidden_layers=2, max_position_embeddings=64,
                         use_sliding_window=True, sliding_window=4, max_window_layers=1, attn_implementation="eager")
    model = make_model(cfg)
    assert list(model.config.layer_types) == ["full_attention", "sliding_attention"]
    segments = torch.randint(0, 300, (3, 16), generator=torch.Generator().manual_seed(0))
    a = get_adapter(model)
    ref: dict[tuple[int, str], torch.Tensor] = {}
    hooks = []
    for i, layer in enumerate(a.layers(model)):
        for part in ("attn", "mlp"):
            def hook(mod, args, key=(i, part)):
                X = args[0].reshape(-1, args[0].shape[-1]).double()
                ref[key] = ref.get(key, 0) + X.T @ X
            hooks.append(a.consumer(layer, part).register_forward_pre_hook(hook))
    with torch.no_grad():
        model(segments, use_cache=False)
    for h in hooks:
        h.remove()
    _, per_layer = capture_inputs(model, a, segments, batch_size=8)
    masks = [per_layer[0][i]["attention_mask"] for i in range(2)]
    assert masks[0] is not None and not torch.equal(masks[0], masks[1])  # the blocks really differ
    got = {}
    prune_model_sequential(model, segments, make_method("osscar"), a.n_attn_groups, a.ffn_dim, inputs_from="dense",
                           hessian_hook=lambda i, part, H: got.__setitem__((i, part), H.clone()))
    for key, H in ref.items():
        torch.testing.assert_close(got[key], H, rtol=1e-5, atol=1e-4 * float(H.abs().max()))


@pytest.mark.parametrize("family", ["opt", "llama"])
def test_a_removed_module_is_zero_weights_and_slices_away_with_the_same_logits(family):
    """keep 0 (level 0 of an allocation): the consumer's weights are zero, no solver call, and slicing the
    module away leaves the pruned model's logits unchanged (its output is its bias)."""
    from osscar.lm.slicing import slice_model

    from .conftest import make_model, tiny_llama_config, tiny_opt_config

    config = tiny_opt_config() if family == "opt" else tiny_llama_config()
    model = make_model(config, seed=3).double()
    n = len(model.model.decoder.layers if family == "opt" else model.model.layers)
    g = torch.Generator().manual_seed(0)
    segs = torch.randint(0, config.vocab_size, (4, 12), generator=g)
    adapter = __import__("osscar.lm.adapters", fromlist=["get_adapter"]).get_adapter(model)
    keep_attn = {0: 0, **{i: adapter.n_attn_groups for i in range(1, n)}}
    keep_mlp = {0: adapter.ffn_dim, 1: 0, **{i: adapter.ffn_dim for i in range(2, n)}}
    calls = []
    method = make_method("mp")
    orig = method.prune
    object.__setattr__(method, "prune", lambda problem: calls.append(problem.name) or orig(problem))
    out = prune_model_sequential(model, segs, method, keep_attn, keep_mlp, batch_size=2)
    assert calls == []  # nothing solved: removed or kept whole
    layers = adapter.layers(model)
    assert torch.count_nonzero(adapter.consumer(layers[0], "attn").weight) == 0
    assert torch.count_nonzero(adapter.consumer(layers[1], "mlp").weight) == 0
    assert out.kept[0]["attn"].numel() == 0 and out.kept[1]["mlp"].numel() == 0
    ids = torch.randint(0, config.vocab_size, (2, 10), generator=g)
    with torch.no_grad():
        before = model(ids).logits
        slice_model(model, out.kept)
        after = model(ids).logits
    assert torch.allclose(before, after, atol=1e-10)
