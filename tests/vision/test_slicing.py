"""Unfold grouping, pruning with zeroed channels vs physical slicing, save/reload, bad input."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from osscar.vision.adapters import conv_weight_matrix, prune_units, set_conv_weight_matrix, unfold_input
from osscar.vision.flops import count_params, layer_shapes, macs, model_macs, solve_keep_counts
from osscar.vision.models import load_model
from osscar.vision.slicing import load_sliced, save_sliced, slice_conv, slice_model

from .conftest import random_model

SMALL = {
    "resnet20": ({"num_classes": 10, "in_channels": 1}, (1, 28, 28)),
    "mobilenetv1": ({"num_classes": 10, "in_channels": 3}, (3, 64, 64)),
    "resnet50": ({"num_classes": 10, "in_channels": 3}, (3, 64, 64)),
}


def _model(arch: str, seed: int = 0) -> nn.Module:
    return random_model(arch, seed, **SMALL[arch][0]).eval()


@pytest.mark.parametrize("stride,padding,dilation,k", [(1, 1, 1, 3), (2, 1, 1, 3), (1, 0, 1, 1), (2, 2, 2, 3), (1, 0, 1, 5)])
def test_unfold_groups_reproduce_conv(stride, padding, dilation, k):
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 5, k, stride, padding, dilation, bias=False).double()
    x = torch.randn(3, 6, 13, 11, dtype=torch.float64)
    y = conv(x)  # (N, out, Ho, Wo)
    X, W = unfold_input(x, conv), conv_weight_matrix(conv)
    assert X.shape == (3 * y.shape[2] * y.shape[3], 6 * k * k) and W.shape == (6 * k * k, 5)
    torch.testing.assert_close(X @ W, y.permute(0, 2, 3, 1).reshape(-1, 5), rtol=0, atol=1e-12)
    # one input channel = k² contiguous columns: zeroing channel c of x zeroes exactly those columns
    x2 = x.clone()
    x2[:, 2] = 0
    X2 = unfold_input(x2, conv)
    cols = torch.arange(2 * k * k, 3 * k * k)
    assert torch.equal(X2[:, cols], torch.zeros_like(X2[:, cols]))
    other = torch.ones(6 * k * k, dtype=torch.bool)
    other[cols] = False
    assert torch.equal(X2[:, other], X[:, other])
    # and W_dense rows of one group are that channel's filter taps
    set_conv_weight_matrix(conv, W * 2)
    torch.testing.assert_close(conv_weight_matrix(conv), W * 2)


def _prune_randomly(model: nn.Module, frac: float, seed: int) -> dict[str, torch.Tensor]:
    """Zero a random fraction of each consumer's input channels; return the kept indices."""
    gen = torch.Generator().manual_seed(seed)
    kept = {}
    for u in prune_units(model):
        conv = model.get_submodule(u.consumer)
        c = conv.in_channels
        k = max(1, round((1 - frac) * c))
        idx = torch.randperm(c, generator=gen)[:k].sort().values
        mask = torch.zeros(c, dtype=torch.bool)
        mask[idx] = True
        with torch.no_grad():
            conv.weight[:, ~mask] = 0
        kept[u.name] = idx
    return kept


@pytest.mark.parametrize("arch", ["resnet20", "mobilenetv1", "resnet50"])
@pytest.mark.parametrize("frac", [0.3, 0.5, 0.9])
def test_slicing_preserves_outputs(arch, frac, tmp_path):
    model = _model(arch)
    kept = _prune_randomly(model, frac, seed=1)
    x = torch.randn(2, *SMALL[arch][1], generator=torch.Generator().manual_seed(2))
    sliced = slice_model(model, prune_units(model), kept)
    with torch.no_grad():
        y_ref, y = model(x), sliced(x)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    # shapes: consumer inputs, producer outputs and BN widths follow the kept counts
    units = prune_units(sliced)
    for u in units:
        k = len(kept[u.name])
        assert sliced.get_submodule(u.consumer).in_channels == k
        assert sliced.get_submodule(u.producer).out_channels == k
        assert sliced.get_submodule(u.producer_bn).num_features == k
        for dw, dbn in u.between:
            assert sliced.get_submodule(dw).groups == k == sliced.get_submodule(dbn).num_features
    assert count_params(sliced) < count_params(model)
    # analytic MACs under the kept widths == MACs counted on the sliced model
    shapes = layer_shapes(model, SMALL[arch][1])
    assert macs(shapes, prune_units(model), {n: len(v) for n, v in kept.items()}) == model_macs(sliced, SMALL[arch][1])
    # save / reload without the dense model
    path = save_sliced(tmp_path / "m.pt", sliced, arch, SMALL[arch][0], kept)
    assert (tmp_path / "m.pt.widths.txt").is_file()
    again = load_sliced(path)
    with torch.no_grad():
        torch.testing.assert_close(again(x), y, rtol=0, atol=0)


@pytest.mark.parametrize("arch,n_units", [("resnet20", 9), ("mobilenetv1", 13), ("resnet50", 32)])
def test_units(arch, n_units):
    model = _model(arch)
    units = prune_units(model, arch)
    assert len(units) == n_units
    if arch == "mobilenetv1":
        assert units[0].producer == "conv_stem" and units[1].producer == "blocks.0.conv_pw"


@pytest.mark.parametrize("frac", [0.3, 0.5, 0.7])
def test_flops_targets(frac):
    model = _model("resnet20")
    shapes = layer_shapes(model, (1, 28, 28))
    units = prune_units(model)
    ch = {u.name: u.channels(model) for u in units}
    keep, f, achieved = solve_keep_counts(shapes, units, ch, frac)
    assert achieved >= frac and achieved < frac + 0.05
    assert all(1 <= keep[n] <= ch[n] for n in ch)
    with pytest.raises(ValueError, match="unreachable"):
        solve_keep_counts(shapes, units, ch, 0.995)
    with pytest.raises(ValueError, match="flops_fraction"):
        solve_keep_counts(shapes, units, ch, 1.0)


def test_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="architecture"):
        load_model("vgg16", random_init=True)
    with pytest.raises(ValueError, match="no weights"):
        load_model("resnet20")
    with pytest.raises(FileNotFoundError):
        load_model("resnet20", tmp_path / "missing.pt")
    model = _model("resnet20")
    units = prune_units(model)
    with pytest.raises(ValueError, match="distinct"):
        slice_model(model, units, {units[0].name: torch.tensor([0, 0, 1])})
    with pytest.raises(ValueError, match="in \\[0, 16\\)"):
        slice_model(model, units, {units[0].name: torch.tensor([0, 16])})
    with pytest.raises(ValueError, match="no prunable unit"):
        slice_model(model, units, {"fc": torch.tensor([0])})
    with pytest.raises(FileNotFoundError):
        load_sliced(tmp_path / "nope.pt")


@pytest.mark.parametrize("depthwise", [False, True])
def test_slice_conv_keeps_the_bias_of_each_kept_filter(depthwise):
    """A biased conv (the shipped models have none; a user's may): the sliced conv's output is the
    dense conv's output at the kept filters, bias included (ground truth: the dense conv itself)."""
    torch.manual_seed(0)
    c = 6
    conv = nn.Conv2d(c, c if depthwise else 5, 3, 1, 1, groups=c if depthwise else 1, bias=True)
    nn.init.normal_(conv.bias)
    idx = torch.tensor([1, 3, 4])
    x = torch.randn(2, c, 7, 7)
    with torch.no_grad():
        y = conv(x)
        if depthwise:
            got = slice_conv(conv, out_idx=idx, depthwise=True)(x[:, idx])
        else:
            got = slice_conv(conv, out_idx=idx)(x)
            torch.testing.assert_close(slice_conv(conv, in_idx=idx)(x[:, idx]), y - nn.functional.conv2d(
                x[:, [0, 2, 5]], conv.weight[:, [0, 2, 5]], None, 1, 1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got, y[:, idx], rtol=1e-5, atol=1e-5)
