"""FLOPs (multiply-accumulates) of conv nets and per-layer channel targets for a FLOPs budget.

MACs are counted analytically per layer from shapes recorded by hooks in one forward pass:
conv = out_ch · (in_ch / groups) · kh·kw · H_out·W_out, linear = in · out (per image). BN, ReLU,
pooling and additions are not counted (they are a small fraction, and the paper's protocol
counts weights × output positions). The same function counts a dense model, a pruned model
under hypothetical widths (for target solving) and a physically sliced model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from osscar.vision.adapters import PruneUnit


@dataclass(frozen=True)
class LayerShape:
    kind: str  # "conv" or "linear"
    in_ch: int
    out_ch: int
    groups: int
    taps: int  # kh·kw (1 for linear)
    positions: int  # H_out·W_out (1 for linear)


def layer_shapes(model: nn.Module, input_shape: tuple[int, int, int]) -> dict[str, LayerShape]:
    """Shapes of every Conv2d/Linear, from one forward pass of a single zero image (C, H, W)."""
    shapes: dict[str, LayerShape] = {}
    hooks = []

    def hook(name):
        def fn(mod, inp, out):
            if isinstance(mod, nn.Conv2d):
                shapes[name] = LayerShape("conv", mod.in_channels, mod.out_channels, mod.groups,
                                          mod.kernel_size[0] * mod.kernel_size[1], out.shape[-1] * out.shape[-2])
            else:
                shapes[name] = LayerShape("linear", mod.in_features, mod.out_features, 1, 1,
                                          out.numel() // out.shape[-1] // out.shape[0])
        return fn

    for name, mod in model.named_modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            hooks.append(mod.register_forward_hook(hook(name)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return shapes


def macs(shapes: dict[str, LayerShape], units: list[PruneUnit] | None = None,
         keep: dict[str, int] | None = None) -> int:
    """Per-image MACs; with ``units``/``keep``, as if each unit kept ``keep[unit.name]`` channels."""
    eff = {n: [s.in_ch, s.out_ch, s.groups] for n, s in shapes.items()}
    for u in units or []:
        if keep is None or u.name not in keep:
            continue
        k = keep[u.name]
        eff[u.consumer][0] = k
        eff[u.producer][1] = k
        for dw, _ in u.between:
            eff[dw] = [k, k, k]
    total = 0
    for n, s in shapes.items():
        i, o, g = eff[n]
        total += o * (i // g) * s.taps * s.positions
    return int(total)


def model_macs(model: nn.Module, input_shape: tuple[int, int, int]) -> int:
    return macs(layer_shapes(model, input_shape))


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def keep_for_fraction(channels: dict[str, int], f: float) -> dict[str, int]:
    """Remove the fraction ``f`` of every unit's channels (rounded; at least one channel kept)."""
    return {n: max(1, min(c, round((1.0 - f) * c))) for n, c in channels.items()}


def solve_keep_counts(shapes: dict[str, LayerShape], units: list[PruneUnit], channels: dict[str, int],
                      flops_fraction: float, iters: int = 60) -> tuple[dict[str, int], float, float]:
    """Per-unit kept channels that remove at least ``flops_fraction`` of the whole network's MACs.

    One channel fraction f is shared by all units (uniform allocation); f is the smallest value
    (by bisection) whose rounded per-unit counts reach the requested reduction. Returns
    (keep counts, f, achieved MACs reduction). Raises ValueError when even keeping one channel
    per unit cannot remove ``flops_fraction`` (only part of the network is prunable).
    """
    if not 0 < flops_fraction < 1:
        raise ValueError(f"flops_fraction must be in (0, 1), got {flops_fraction!r}")
    dense = macs(shapes)

    def reduction(f: float) -> float:
        return 1.0 - macs(shapes, units, keep_for_fraction(channels, f)) / dense

    r_max = reduction(1.0)
    if r_max < flops_fraction:
        raise ValueError(f"flops_fraction={flops_fraction} is unreachable: pruning every prunable unit to one "
                         f"channel removes only {r_max:.4f} of the MACs (residual widths, stem and head are not prunable)")
    lo, hi = 0.0, 1.0
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        if reduction(mid) >= flops_fraction:
            hi = mid
        else:
            lo = mid
    keep = keep_for_fraction(channels, hi)
    return keep, hi, reduction(hi)
