"""Vision slicing at its edges: the kept-channel checks case by case, a unit kept whole or left out, one channel
kept, the saved checkpoint's fields and text manifest, a conv's padding mode carried over."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from osscar.vision.adapters import prune_units
from osscar.vision.models import build_model
from osscar.vision.slicing import SLICED_FORMAT, load_sliced, manifest_lines, save_sliced, slice_conv, slice_model

from .test_slicing import SMALL, _model


def test_kept_channels_are_checked_one_rule_at_a_time():
    model = _model("resnet20")
    units = prune_units(model)
    first, second = units[0].name, units[1].name
    c = units[0].channels(model)  # 16
    for bad in ([], [0, 0], [-1, 3], [2, c], [c + 5]):
        with pytest.raises(ValueError, match=f"kept channels of {first} must be distinct indices in \\[0, {c}\\)"):
            slice_model(model, units, {first: torch.tensor(bad, dtype=torch.long)})
    with pytest.raises(ValueError, match=f"kept channels of {second}"):  # a later unit is checked too
        slice_model(model, units, {second: torch.tensor([1, 1])})
    one = slice_model(model, units, {first: [5]})  # one channel, given as a list of ints
    assert one.get_submodule(units[0].consumer).in_channels == 1
    whole = slice_model(model, units, {first: torch.arange(c).flip(0)})  # every channel, unsorted
    x = torch.randn(1, *SMALL["resnet20"][1])
    with torch.no_grad():
        torch.testing.assert_close(whole(x), model(x), rtol=1e-6, atol=1e-6)


def test_units_left_out_keep_their_width():
    model = _model("resnet20")
    units = prune_units(model)
    sliced = slice_model(model, units, {units[1].name: torch.arange(4)})
    widths = [u.channels(sliced) for u in prune_units(sliced)]
    assert widths[1] == 4 and widths[0] == units[0].channels(model) and widths[2] == units[2].channels(model)


def test_slice_conv_keeps_the_padding_mode():
    conv = nn.Conv2d(4, 6, 3, padding=1, padding_mode="reflect")
    assert slice_conv(conv, out_idx=torch.tensor([0, 5])).padding_mode == "reflect"


def test_saved_checkpoint_fields_and_manifest(tmp_path):
    arch, kwargs = "resnet20", SMALL["resnet20"][0]
    model = build_model(arch, **kwargs)
    units = prune_units(model)
    kept = {units[0].name: torch.tensor([1, 3, 4])}
    sliced = slice_model(model, units, kept)
    path = save_sliced(tmp_path / "m.pt", sliced, arch, kwargs, kept, meta={"seed": 3})
    ck = torch.load(path, weights_only=True)
    assert (ck["format"], ck["arch"], ck["arch_kwargs"], ck["kept"], ck["meta"]) == \
        (SLICED_FORMAT, arch, dict(kwargs), {units[0].name: [1, 3, 4]}, {"seed": 3})
    assert ck["widths"][units[0].name] == 3
    assert (tmp_path / "m.pt.widths.txt").read_text() == "\n".join(manifest_lines(sliced)) + "\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt", "m.pt.widths.txt"]  # no temporary left
    bare = save_sliced(tmp_path / "b.pt", sliced, arch, kwargs)  # no kept, no meta
    ck = torch.load(bare, weights_only=True)
    assert ck["kept"] == {} and ck["meta"] == {}
    x = torch.randn(1, *SMALL["resnet20"][1])
    with torch.no_grad():
        torch.testing.assert_close(load_sliced(path)(x), sliced.eval()(x), rtol=0, atol=0)


class _NotATensor:
    pass


def test_load_sliced_refuses_other_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="sliced model not found: .*nope.pt"):
        load_sliced(tmp_path / "nope.pt")
    torch.save({"format": "something-else", "arch": "resnet20"}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match=f"other.pt: not an {SLICED_FORMAT} file"):
        load_sliced(tmp_path / "other.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="not an"):
        load_sliced(tmp_path / "list.pt")
    torch.save({"format": SLICED_FORMAT, "payload": _NotATensor()}, tmp_path / "code.pt")
    with pytest.raises(Exception, match="[Ww]eights only load failed|Unsupported global"):
        load_sliced(tmp_path / "code.pt")  # a pickled object is never unpickled (weights_only)


def test_slice_bn_carries_its_settings():
    from osscar.vision.slicing import slice_bn

    bn = nn.BatchNorm2d(6, eps=1e-3, momentum=0.3)
    with torch.no_grad():
        bn.running_mean.copy_(torch.arange(6.0))
    new = slice_bn(bn, torch.tensor([1, 4]))
    assert (new.num_features, new.eps, new.momentum, new.affine, new.track_running_stats) == (2, 1e-3, 0.3, True, True)
    assert new.running_mean.tolist() == [1.0, 4.0]
    bare = slice_bn(nn.BatchNorm2d(6, affine=False, track_running_stats=False), torch.tensor([0, 2, 3]))
    assert (bare.num_features, bare.affine, bare.track_running_stats, bare.weight) == (3, False, False, None)


def test_a_depthwise_conv_sliced_by_its_input_channels():
    conv = nn.Conv2d(5, 5, 3, padding=1, groups=5)
    new = slice_conv(conv, in_idx=torch.tensor([0, 3]), depthwise=True)
    assert (new.in_channels, new.out_channels, new.groups) == (2, 2, 2)
    assert torch.equal(new.weight, conv.weight[[0, 3]]) and torch.equal(new.bias, conv.bias[[0, 3]])


def test_load_sliced_refuses_a_state_dict_that_does_not_fit(tmp_path):
    arch, kwargs = "resnet20", SMALL["resnet20"][0]
    model = build_model(arch, **kwargs)
    path = save_sliced(tmp_path / "m.pt", model, arch, kwargs)
    ck = torch.load(path, weights_only=True)
    ck["state_dict"]["extra.weight"] = torch.zeros(1)
    torch.save(ck, path)
    with pytest.raises(RuntimeError, match="extra.weight"):
        load_sliced(path)
