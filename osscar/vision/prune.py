"""Block-sequential calibration with two streams, and one-shot pruning of a whole CNN.

For each prunable unit, in network order (the authors' vision protocol):

1. run the calibration images through the **pruned** model (all earlier units already pruned) and
   through the **dense** model, stopping each at the consumer's input: X̃ and X_d (im2col-unfolded);
2. accumulate, in float64, H = X̃ᵀX̃ and cross = X̃ᵀX_d (both p×p, p = C·k²);
3. build ``LayerProblem.from_calibration(H, Ŵ, k², keep, damping, cross=cross)``: G = X̃ᵀX_d Ŵ,
   damping on H only (H + λ·mean(diag H)·I); plus the producer's filters (FPGM) and, when the
   method asks, the consumer's input maps (CHIP);
4. solve with the method and write the new consumer weights into the pruned model (pruned input
   channels become zero), so later units see pruned inputs.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from osscar.methods import PruningMethod, get_method, make_method
from osscar.options import DEFAULT_DAMPING
from osscar.problem import LayerProblem
from osscar.vision.adapters import PruneUnit, conv_weight_matrix, set_conv_weight_matrix, unfold_input


class _Stop(Exception):
    pass


def capture_input(model: nn.Module, module_name: str, x: Tensor) -> Tensor:
    """The input tensor of ``module_name`` when ``model`` runs on ``x``; stops the forward there."""
    box: list[Tensor] = []

    def hook(mod, inp):
        box.append(inp[0].detach())
        raise _Stop

    h = model.get_submodule(module_name).register_forward_pre_hook(hook)
    try:
        with torch.no_grad():
            model(x)
    except _Stop:
        pass
    finally:
        h.remove()
    if not box:
        raise RuntimeError(f"{module_name} was not called in the forward pass")
    return box[0]


def vision_method_params(method: str, channels: int, params: dict[str, Any]) -> dict[str, Any]:
    """Per-layer parameters: the method's own defaults for a layer of ``channels`` channels
    (:meth:`osscar.method.PruningMethod.channel_defaults`; OSSCAR scales p̂ and t̂ to C), under the
    explicit values in ``params``, which win."""
    return {**get_method(method).channel_defaults(channels), **params}


@dataclass
class CalibStats:
    H: Tensor  # (p, p) float64 X̃ᵀX̃
    cross: Tensor  # (p, p) float64 X̃ᵀX_d
    dense_energy: float  # ‖X_d Ŵ‖²_F
    rows: int  # n = samples × positions
    activations: Tensor | None  # (N, C, L) consumer-input maps of the pruned stream


def calibrate_unit(pruned: nn.Module, dense: nn.Module, unit: PruneUnit, images: Tensor, batch_size: int,
                   chip_samples: int = 0, chip_positions: int | None = None, seed: int = 0,
                   row_chunk: int = 1 << 16) -> CalibStats:
    """Two-stream second moments of the consumer's unfolded input over ``images`` (N, C, H, W).

    CHIP maps: the first ``chip_samples`` images' full maps (``chip_positions=None``), or that many
    spatial positions drawn once with ``seed``. Batches of images move to the models' device;
    H, X̃ᵀX_d and the CHIP maps stay there."""
    conv = dense.get_submodule(unit.consumer)
    W_hat = conv_weight_matrix(conv).double()
    p, device = W_hat.shape[0], W_hat.device
    H = torch.zeros(p, p, dtype=torch.float64, device=device)
    C = torch.zeros(p, p, dtype=torch.float64, device=device)
    energy, rows = 0.0, 0
    acts: list[Tensor] = []
    pos_idx: Tensor | None = None
    for start in range(0, len(images), batch_size):
        xb = images[start:start + batch_size].to(device)
        xt = capture_input(pruned, unit.consumer, xb)
        xd = capture_input(dense, unit.consumer, xb)
        if chip_samples > sum(len(a) for a in acts):
            a = xt[: chip_samples - sum(len(a) for a in acts)].flatten(2)
            if pos_idx is None:
                L = a.shape[-1]
                g = torch.Generator().manual_seed(seed)
                sample = chip_positions is not None and L > chip_positions
                pos_idx = torch.randperm(L, generator=g)[:chip_positions].sort().values if sample else torch.arange(L)
            acts.append(a[:, :, pos_idx].double())
        Ut, Ud = unfold_input(xt, conv), unfold_input(xd, conv)
        for r in range(0, Ut.shape[0], row_chunk):
            ut, ud = Ut[r:r + row_chunk].double(), Ud[r:r + row_chunk].double()
            H.addmm_(ut.T, ut)
            C.addmm_(ut.T, ud)
            energy += float((ud @ W_hat).square().sum())
        rows += Ut.shape[0]
    return CalibStats(H, C, energy, rows, torch.cat(acts) if acts else None)


def prune_model(dense: nn.Module, units: list[PruneUnit], images: Tensor, method: str, keep: dict[str, int],
                method_params: dict[str, Any] | None = None, damping: float = DEFAULT_DAMPING, batch_size: int = 128,
                chip_samples: int = 64, chip_positions: int | None = None, seed: int = 0,
                progress: bool = False) -> tuple[nn.Module, dict[str, Tensor], list[dict[str, Any]]]:
    """Prune ``dense`` (unchanged) one unit at a time; returns (pruned-but-unsliced model, kept channels
    per unit, one record per unit with its layer objective and timing)."""
    from tqdm.auto import tqdm

    cls: type[PruningMethod] = get_method(method)
    method_params = dict(method_params or {})
    dense = dense.eval()
    pruned = copy.deepcopy(dense).eval()
    kept_all: dict[str, Tensor] = {}
    records = []
    for u in tqdm(units, desc=f"prune {method}", disable=not progress):
        conv = pruned.get_submodule(u.consumer)
        c = conv.in_channels
        k = keep.get(u.name, c)
        if k == c:
            kept_all[u.name] = torch.arange(c)
            continue
        t0 = time.perf_counter()
        stats = calibrate_unit(pruned, dense, u, images, batch_size,
                               chip_samples if cls.needs_activations else 0, chip_positions, seed)
        t_cal = time.perf_counter() - t0
        prod = pruned.get_submodule(u.producer)
        problem = LayerProblem.from_calibration(
            stats.H, conv_weight_matrix(dense.get_submodule(u.consumer)), group_size=conv.kernel_size[0] * conv.kernel_size[1],
            k=k, damping=damping, cross=stats.cross, activations=stats.activations,
            producer_weight=prod.weight.detach().reshape(prod.out_channels, -1).double(), name=u.name)
        m = make_method(method, **vision_method_params(method, c, method_params))
        res = m.prune(problem)
        set_conv_weight_matrix(conv, res.W)
        kept_all[u.name] = res.kept.clone()
        # ½‖X̃W − X_dŴ‖² = Q(W) + ½‖X_dŴ‖² (Q with the damped H: includes the ridge term)
        err = res.objective + 0.5 * stats.dense_energy
        records.append({
            "unit": u.name, "channels": c, "kept": k, "group_size": problem.group_size, "rows": stats.rows,
            "objective": res.objective, "dense_energy": 0.5 * stats.dense_energy,
            "relative_error": err / max(0.5 * stats.dense_energy, 1e-300),
            "calib_seconds": t_cal, "solve_seconds": res.seconds, "params": m.params(),
            "info": {k_: v for k_, v in res.info.items() if isinstance(v, (int, float, str))},
        })
    return pruned, kept_all, records
