"""Which convolutions are pruned, and what dies with each pruned input channel.

A :class:`PruneUnit` names a **consumer** conv whose input channels are pruned (one group = one
input channel = its k² unfolded columns), the **producer** conv + BN whose output filters become
dead with them, and, for MobileNetV1, the depthwise conv + BN *between* producer and consumer,
which carry the channel through unchanged. Module paths are relative to the model.

=============  ========================================  ==============================================
architecture   consumers (network order)                  producer (+ between)
=============  ========================================  ==============================================
resnet20       ``layerS.B.conv2`` (9)                      ``layerS.B.conv1`` / ``bn1``
mobilenetv1    ``blocks.j.conv_pw`` (13)                   ``blocks.{j-1}.conv_pw``/``bn2`` (``conv_stem``/
                                                           ``bn1`` for j=0); between ``blocks.j.conv_dw``/``bn1``
resnet50       ``layerS.B.conv2``, ``layerS.B.conv3`` (32)  ``conv1``/``bn1`` and ``conv2``/``bn2``
=============  ========================================  ==============================================

Residual widths (block outputs, shortcuts) are never pruned. The consumer's input is the
producer's post-BN/ReLU map (after the depthwise conv for MobileNetV1), so removing a producer
filter whose consumer columns are zero is exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from osscar.vision.models import ARCHS, MobileNetV1, ResNet20


@dataclass(frozen=True)
class PruneUnit:
    """One prunable channel set. ``between``: (depthwise conv, bn) pairs that follow the channel."""

    consumer: str
    producer: str
    producer_bn: str
    between: tuple[tuple[str, str], ...] = ()

    @property
    def name(self) -> str:
        return self.consumer

    def channels(self, model: nn.Module) -> int:
        return model.get_submodule(self.consumer).in_channels


def detect_arch(model: nn.Module) -> str:
    if isinstance(model, ResNet20):
        return "resnet20"
    if isinstance(model, MobileNetV1):
        return "mobilenetv1"
    import torchvision

    if isinstance(model, torchvision.models.ResNet) and isinstance(model.layer1[0], torchvision.models.resnet.Bottleneck):
        return "resnet50"
    raise ValueError(f"no pruning adapter for {type(model).__name__}; supported: {', '.join(ARCHS)}")


def prune_units(model: nn.Module, arch: str | None = None) -> list[PruneUnit]:
    """The prunable units of ``model`` in network (forward) order."""
    arch = arch or detect_arch(model)
    units: list[PruneUnit] = []
    if arch == "resnet20":
        for s in (1, 2, 3):
            for b in range(len(model.get_submodule(f"layer{s}"))):
                p = f"layer{s}.{b}"
                units.append(PruneUnit(f"{p}.conv2", f"{p}.conv1", f"{p}.bn1"))
    elif arch == "mobilenetv1":
        for j in range(len(model.blocks)):
            prod, bn = ("conv_stem", "bn1") if j == 0 else (f"blocks.{j - 1}.conv_pw", f"blocks.{j - 1}.bn2")
            units.append(PruneUnit(f"blocks.{j}.conv_pw", prod, bn, ((f"blocks.{j}.conv_dw", f"blocks.{j}.bn1"),)))
    elif arch == "resnet50":
        for s in (1, 2, 3, 4):
            for b in range(len(model.get_submodule(f"layer{s}"))):
                p = f"layer{s}.{b}"
                units.append(PruneUnit(f"{p}.conv2", f"{p}.conv1", f"{p}.bn1"))
                units.append(PruneUnit(f"{p}.conv3", f"{p}.conv2", f"{p}.bn2"))
    else:
        raise ValueError(f"unknown architecture {arch!r}; allowed: {', '.join(ARCHS)}")
    for u in units:
        _check_unit(model, u)
    return units


def _check_unit(model: nn.Module, u: PruneUnit) -> None:
    cons, prod, bn = (model.get_submodule(n) for n in (u.consumer, u.producer, u.producer_bn))
    if not isinstance(cons, nn.Conv2d) or cons.groups != 1 or cons.padding_mode != "zeros":
        raise ValueError(f"{u.consumer}: consumer must be a dense (groups=1) zero-padded Conv2d")
    if prod.out_channels != cons.in_channels or bn.num_features != cons.in_channels:
        raise ValueError(f"{u.consumer}: producer {u.producer}/{u.producer_bn} width does not match consumer input")
    for dw, _dbn in u.between:
        d = model.get_submodule(dw)
        if d.groups != d.in_channels or d.out_channels != d.in_channels or d.in_channels != cons.in_channels:
            raise ValueError(f"{dw}: expected a depthwise conv of width {cons.in_channels}")


def unfold_input(x: Tensor, conv: nn.Conv2d) -> Tensor:
    """im2col of the consumer's input: (N, C, H, W) -> (N·L, C·kh·kw), channel-major columns.

    Column ``c·kh·kw + t`` is tap ``t`` of input channel ``c``, so one channel's k² columns are
    contiguous (one group), and ``unfold_input(x, conv) @ conv_weight_matrix(conv)`` equals the
    conv output (bias excluded) laid out as (N·L, out).
    """
    cols = F.unfold(x, conv.kernel_size, dilation=conv.dilation, padding=conv.padding, stride=conv.stride)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def conv_weight_matrix(conv: nn.Conv2d) -> Tensor:
    """W_dense: (in·kh·kw, out) = weight.reshape(out, -1).T."""
    return conv.weight.detach().reshape(conv.out_channels, -1).T.clone()


def set_conv_weight_matrix(conv: nn.Conv2d, W: Tensor) -> None:
    """Write (in·kh·kw, out) weights back into ``conv.weight``."""
    with torch.no_grad():
        conv.weight.copy_(W.T.reshape(conv.weight.shape).to(conv.weight.dtype))
