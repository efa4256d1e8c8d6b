"""Sequential calibration: H equals XᵀX of the consumer inputs; pruning writes zero columns."""

from __future__ import annotations

import copy

import torch

from osscar.lm.adapters import get_adapter
from osscar.lm.calibration import prune_model_sequential
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


def test_hessians_match_direct_xtx(tiny_model):
    segs = torch.randint(0, 300, (3, 16), generator=torch.Generator().manual_seed(0))
    ref = _direct_xtx(copy.deepcopy(tiny_model), segs)
    a = get_adapter(tiny_model)
    got = {}
    # keeping every group with MP leaves the model dense, so every block sees the dense inputs
    prune_model_sequential(tiny_model, segs, make_method("mp"), a.n_attn_groups, a.ffn_dim,
                           hessian_hook=lambda i, part, H: got.__setitem__((i, part), H.clone()))
    assert set(got) == set(ref)
    for key in ref:
        assert got[key].dtype == torch.float64
        torch.testing.assert_close(got[key], ref[key], rtol=1e-5, atol=1e-6 * float(ref[key].abs().max()))


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
