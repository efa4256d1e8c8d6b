"""Physical removal of pruned channels, and the sliced-model file format.

:func:`slice_model` turns a pruned-but-unsliced model (pruned input channels of each consumer are
zero) into a smaller ``nn.Module``: the consumer loses those input channels, the producer loses
the matching output filters and BN channels, and (MobileNetV1) the depthwise conv + BN between
them loses the same channels. The outputs are unchanged, because a pruned channel reached the
network's output only through the consumer's zeroed weights.

Files (:func:`save_sliced` / :func:`load_sliced`): ``torch.save`` of ``{"format":
"osscar-vision-sliced-v1", "arch", "arch_kwargs", "widths": {consumer: kept channels}, "kept":
{consumer: original channel indices}, "state_dict", "meta"}``, plus a text manifest next to it
(``<file>.widths.txt``, timm ``_pruned`` style: one ``module.weight:[shape]`` line per conv/linear).
:func:`load_sliced` rebuilds the dense architecture, shrinks every unit to its width and loads the
state dict strictly; no weights of the dense model are needed.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from osscar.vision.adapters import PruneUnit, prune_units
from osscar.vision.models import atomic_torch_save, build_model

SLICED_FORMAT = "osscar-vision-sliced-v1"


def _new_conv(conv: nn.Conv2d, in_ch: int, out_ch: int, groups: int) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, conv.kernel_size, conv.stride, conv.padding, conv.dilation, groups,
                     bias=conv.bias is not None, padding_mode=conv.padding_mode)


def slice_conv(conv: nn.Conv2d, out_idx: Tensor | None = None, in_idx: Tensor | None = None,
               depthwise: bool = False) -> nn.Conv2d:
    """A copy of ``conv`` keeping output filters ``out_idx`` and/or input channels ``in_idx``."""
    w = conv.weight.detach()
    b = conv.bias.detach() if conv.bias is not None else None
    if depthwise:
        idx = out_idx if out_idx is not None else in_idx
        new = _new_conv(conv, len(idx), len(idx), len(idx))
        w, b = w[idx], (b[idx] if b is not None else None)
    else:
        if conv.groups != 1:
            raise ValueError("slice_conv: grouped convs other than depthwise are not supported")
        if out_idx is not None:
            w, b = w[out_idx], (b[out_idx] if b is not None else None)
        if in_idx is not None:
            w = w[:, in_idx]
        new = _new_conv(conv, w.shape[1], w.shape[0], 1)
    with torch.no_grad():
        new.weight.copy_(w)
        if b is not None:
            new.bias.copy_(b)
    return new.to(conv.weight.device).train(conv.training)


def slice_bn(bn: nn.BatchNorm2d, idx: Tensor) -> nn.BatchNorm2d:
    new = nn.BatchNorm2d(len(idx), eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
                         track_running_stats=bn.track_running_stats)
    with torch.no_grad():
        if bn.affine:
            new.weight.copy_(bn.weight[idx])
            new.bias.copy_(bn.bias[idx])
        if bn.track_running_stats:
            new.running_mean.copy_(bn.running_mean[idx])
            new.running_var.copy_(bn.running_var[idx])
            new.num_batches_tracked.copy_(bn.num_batches_tracked)
    return new.train(bn.training)


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def _check_kept(model: nn.Module, units: list[PruneUnit], kept: dict[str, Tensor]) -> dict[str, Tensor]:
    out = {}
    for u in units:
        if u.name not in kept:
            continue
        idx = torch.as_tensor(kept[u.name], dtype=torch.long).sort().values
        c = u.channels(model)
        if idx.numel() == 0 or idx.numel() != torch.unique(idx).numel() or int(idx[0]) < 0 or int(idx[-1]) >= c:
            raise ValueError(f"kept channels of {u.name} must be distinct indices in [0, {c}), at least one")
        out[u.name] = idx
    unknown = sorted(set(kept) - {u.name for u in units})
    if unknown:
        raise ValueError(f"no prunable unit named {', '.join(unknown)}; units: {', '.join(u.name for u in units)}")
    return out


def slice_model(model: nn.Module, units: list[PruneUnit], kept: dict[str, Tensor], inplace: bool = False) -> nn.Module:
    """Physically remove every unit's pruned channels. ``kept``: {unit name: kept channel indices}."""
    kept = _check_kept(model, units, kept)
    model = model if inplace else copy.deepcopy(model)
    for u in units:
        if u.name not in kept:
            continue
        idx = kept[u.name]
        _set(model, u.consumer, slice_conv(model.get_submodule(u.consumer), in_idx=idx))
        _set(model, u.producer, slice_conv(model.get_submodule(u.producer), out_idx=idx))
        _set(model, u.producer_bn, slice_bn(model.get_submodule(u.producer_bn), idx))
        for dw, dbn in u.between:
            _set(model, dw, slice_conv(model.get_submodule(dw), out_idx=idx, depthwise=True))
            _set(model, dbn, slice_bn(model.get_submodule(dbn), idx))
    return model


def widths(model: nn.Module, units: list[PruneUnit]) -> dict[str, int]:
    return {u.name: u.channels(model) for u in units}


def manifest_lines(model: nn.Module) -> list[str]:
    return [f"{n}.weight:{list(m.weight.shape)}" for n, m in model.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear))]


def save_sliced(path: str | os.PathLike, model: nn.Module, arch: str, arch_kwargs: dict[str, Any],
                kept: dict[str, Tensor] | None = None, meta: dict[str, Any] | None = None) -> Path:
    """Save a sliced model (atomic) and its text manifest; returns the checkpoint path."""
    path = Path(path)
    units = prune_units(model, arch)
    atomic_torch_save({"format": SLICED_FORMAT, "arch": arch, "arch_kwargs": dict(arch_kwargs),
                       "widths": widths(model, units),
                       "kept": {k: torch.as_tensor(v).tolist() for k, v in (kept or {}).items()},
                       "state_dict": model.state_dict(), "meta": dict(meta or {})}, path)
    tmp = path.with_name(path.name + ".widths.txt.tmp")
    tmp.write_text("\n".join(manifest_lines(model)) + "\n")
    os.replace(tmp, path.with_name(path.name + ".widths.txt"))
    return path


def load_sliced(path: str | os.PathLike) -> nn.Module:
    """Rebuild a model saved by :func:`save_sliced` (eval mode)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"sliced model not found: {path}")
    ck = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ck, dict) or ck.get("format") != SLICED_FORMAT:
        raise ValueError(f"{path}: not an {SLICED_FORMAT} file")
    model = build_model(ck["arch"], **ck["arch_kwargs"])
    units = prune_units(model, ck["arch"])
    shrink = {u.name: torch.arange(int(ck["widths"][u.name])) for u in units if u.name in ck["widths"]}
    model = slice_model(model, units, shrink, inplace=True)
    model.load_state_dict(ck["state_dict"], strict=True)
    return model.eval()
