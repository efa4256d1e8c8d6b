"""Sequential layer-wise calibration and pruning (the sparsegpt / OSSCAR-OPT driver shape).

1. A catcher on block 0 records its inputs (hidden states, one tensor per calibration segment) and
   the keyword arguments the model passes to every block (masks, rotary embeddings, ...).
2. For each block, one at a time, activations on the CPU:
   a. hooks on the attention consumer accumulate ``H = XᵀX`` (float64) over all segments;
      the layer problem ``LayerProblem.from_calibration(H, W.T, group_size, k, damping)`` is
      solved by the chosen method, and the new weights are written back (pruned columns zero);
   b. the block is re-run with the pruned attention to accumulate ``H`` of the MLP consumer's
      inputs, which is pruned the same way;
   c. the pruned block is re-run to produce the next block's inputs.

The model is pruned in place but not sliced: pruned columns of each consumer are zero, so the
pruned producers are dead. :func:`osscar.lm.slicing.slice_model` then removes them physically.

``keep_attn`` / ``keep_mlp`` may be one count for every block (uniform allocation) or a
{block: count} mapping (runtime-aware allocation, :func:`collect_loss_curves` +
:func:`osscar.allocation.allocate`, driven by :func:`osscar.lm.run.run_lm`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from collections.abc import Callable

import torch
from torch import Tensor, nn

from osscar.lm.adapters import ModelAdapter, get_adapter
from osscar.methods import PruningMethod
from osscar.problem import LayerProblem


class _Caught(Exception):
    pass


class HessianAccumulator:
    """Forward hook: ``H += XᵀX`` (float64) of a Linear's input. ``H: (p, p)``; ``n`` rows seen."""

    def __init__(self, module: nn.Linear) -> None:
        p = module.in_features
        self.H = torch.zeros(p, p, dtype=torch.float64)
        self.n = 0
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        X = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).to(torch.float64)
        self.H.addmm_(X.T, X)
        self.n += X.shape[0]

    def remove(self) -> Tensor:
        self.handle.remove()
        return self.H


@torch.no_grad()
def capture_block_inputs(model: nn.Module, adapter: ModelAdapter, segments: Tensor) -> tuple[list[Tensor], dict[str, Any]]:
    """Run the model up to block 0 on each segment; return its inputs and the shared block kwargs.

    segments: (n, seqlen) long token ids. Returns a list of n tensors (1, seqlen, d) and kwargs.
    """
    layers = adapter.layers(model)
    inputs: list[Tensor] = []
    kwargs_box: dict[str, Any] = {}

    def catcher(module: nn.Module, args: tuple, kwargs: dict) -> None:
        hidden = args[0] if args else kwargs.pop("hidden_states")
        inputs.append(hidden.detach().clone())
        if not kwargs_box:
            kwargs_box.update({k: v for k, v in kwargs.items() if k not in ("hidden_states",)})
        raise _Caught

    handle = layers[0].register_forward_pre_hook(catcher, with_kwargs=True)
    try:
        for seg in segments:
            try:
                model(seg[None, :], use_cache=False)
            except _Caught:
                pass
    finally:
        handle.remove()
    kwargs = dict(kwargs_box)
    for key in ("cache", "past_key_values", "past_key_value"):
        if key in kwargs:
            kwargs[key] = None
    kwargs["use_cache"] = False
    return inputs, kwargs


def _run_block(layer: nn.Module, inputs: list[Tensor], kwargs: dict[str, Any]) -> list[Tensor]:
    outs = []
    for x in inputs:
        y = layer(x, **kwargs)
        outs.append((y[0] if isinstance(y, tuple) else y).detach())
    return outs


def write_consumer(consumer: nn.Linear, W: Tensor) -> None:
    """Write solver weights ``W: (p, m)`` into ``consumer.weight: (m, p)`` (pruned columns zero)."""
    consumer.weight.data.copy_(W.T.to(consumer.weight.dtype))


@dataclass
class LayerRecord:
    """What happened on one consumer."""

    name: str
    part: str
    n_groups: int
    k: int
    kept: list[int]
    objective: float
    dense_objective: float
    seconds: float
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class PruneOutcome:
    kept: dict[int, dict[str, Tensor]]
    records: list[LayerRecord]
    seconds_total: float
    seconds_solver: float


def _keep_for(keep: int | Mapping[int, int], block: int) -> int:
    if isinstance(keep, Mapping):
        if block not in keep:
            raise ValueError(f"no kept count given for block {block}")
        return int(keep[block])
    return int(keep)


@torch.no_grad()
def collect_loss_curves(
    model: nn.Module,
    segments: Tensor,
    levels: Mapping[str, list[int]],
    damping: float = 0.01,
    layers: list[int] | None = None,
    p_hat: Mapping[str, int] | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[int, dict[str, dict[int, float]]]:
    """Pass 1 of runtime-aware allocation: normalised loss curves of every consumer, dense model.

    One calibration forward through the *dense* model (nothing is pruned): per block, hooks on
    both consumers accumulate ``H`` in the same block run; for each consumer the layer problem
    (k ignored) goes through one Stage-A gradual-removal pass
    (:func:`osscar.allocation.removal_path`, ``p_hat[part]`` groups per step, down to the smallest
    level) and the least-squares loss at each requested level is read off it
    (:func:`osscar.allocation.loss_at`), normalised by the dense output energy
    ``½ tr(ŴᵀHŴ) = −Q(all kept)``: ``(Q(k) − Q(n)) / ½ tr(ŴᵀHŴ)`` ∈ [0, 1] (0: no loss; 1: the
    layer's whole output lost), so layers of different scales are comparable.

    Args:
        levels: {"attn": [...], "mlp": [...]} kept counts to evaluate (each ≥ 1).
        p_hat: groups removed per Stage-A step per part (default: attn 1, mlp ⌈n/128⌉).

    Returns {block: {"attn" | "mlp": {level: normalised loss}}}.
    """
    from osscar.allocation import loss_at, removal_path

    adapter = get_adapter(model)
    blocks = adapter.layers(model)
    todo = set(range(len(blocks)) if layers is None else layers)
    inputs, kwargs = capture_block_inputs(model, adapter, segments)
    out: dict[int, dict[str, dict[int, float]]] = {}
    for i, layer in enumerate(blocks):
        if i not in todo:
            inputs = _run_block(layer, inputs, kwargs)
            continue
        accs = {part: HessianAccumulator(adapter.consumer(layer, part)) for part in ("attn", "mlp")}
        try:
            outputs = _run_block(layer, inputs, kwargs)
        finally:
            Hs = {part: acc.remove() for part, acc in accs.items()}
        out[i] = {}
        for part in ("attn", "mlp"):
            consumer = adapter.consumer(layer, part)
            problem = LayerProblem.from_calibration(Hs[part], consumer.weight.data.T, adapter.group_size(part),
                                                    adapter.n_groups(part), damping=damping)
            n = problem.n_groups
            step = (p_hat or {}).get(part) or (1 if part == "attn" else max(1, -(-n // 128)))
            lv = sorted(set(int(k) for k in levels[part]))
            if not lv or lv[0] < 1 or lv[-1] > n:
                raise ValueError(f"levels[{part!r}] must lie in [1, {n}], got {lv}")
            path = removal_path(problem, p_hat=int(step), down_to=lv[0])
            q_dense = path[n]
            energy = -q_dense if q_dense < 0 else 1.0
            out[i][part] = {k: max(0.0, (loss_at(path, k) - q_dense) / energy) for k in lv}
            if progress is not None:
                progress(f"block {i} {part}: loss curve over {len(path)} sizes")
            del problem
        inputs = outputs
    return out


@torch.no_grad()
def prune_model_sequential(
    model: nn.Module,
    segments: Tensor,
    method: PruningMethod,
    keep_attn: int | Mapping[int, int],
    keep_mlp: int | Mapping[int, int],
    damping: float = 0.01,
    layers: list[int] | None = None,
    progress: Callable[[str], None] | None = None,
    hessian_hook: Callable[[int, str, Tensor], None] | None = None,
) -> PruneOutcome:
    """Prune ``model`` in place, block by block, with ``method``.

    Args:
        segments: (n, seqlen) long calibration token ids.
        keep_attn: attention groups to keep per block (heads for OPT, KV groups for Llama):
            one count for all blocks, or {block: count} for a non-uniform allocation.
        keep_mlp: neurons to keep per block (int or {block: count}).
        layers: block indices to prune (default all); other blocks are run unchanged.
        hessian_hook: optional callback(block, part, H_raw) for tests/diagnostics.

    Returns the kept group indices per block {block: {"attn": (k,), "mlp": (k,)}} and records.
    """
    adapter = get_adapter(model)
    blocks = adapter.layers(model)
    todo = set(range(len(blocks)) if layers is None else layers)
    start = time.perf_counter()
    inputs, kwargs = capture_block_inputs(model, adapter, segments)
    kept: dict[int, dict[str, Tensor]] = {}
    records: list[LayerRecord] = []
    solver_s = 0.0
    for i, layer in enumerate(blocks):
        if i in todo:
            kept[i] = {}
            for part, keep in (("attn", _keep_for(keep_attn, i)), ("mlp", _keep_for(keep_mlp, i))):
                consumer = adapter.consumer(layer, part)
                acc = HessianAccumulator(consumer)
                try:
                    _run_block(layer, inputs, kwargs)
                finally:
                    H = acc.remove()
                if hessian_hook is not None:
                    hessian_hook(i, part, H)
                name = f"{adapter.layers_path}.{i}.{adapter.attn_consumer if part == 'attn' else adapter.mlp_consumer}"
                problem = LayerProblem.from_calibration(
                    H, consumer.weight.data.T, adapter.group_size(part), keep, damping=damping, name=name)
                res = method.prune(problem)
                solver_s += res.seconds
                write_consumer(consumer, res.W)
                kept[i][part] = res.kept.clone()
                records.append(LayerRecord(name=name, part=part, n_groups=problem.n_groups, k=keep,
                                           kept=res.kept.tolist(), objective=res.objective,
                                           dense_objective=problem.dense_objective(), seconds=res.seconds,
                                           info={k: v for k, v in res.info.items() if isinstance(v, (int, float))}))
                if progress is not None:
                    progress(f"block {i} {part}: Q={res.objective:.4g} ({res.seconds:.2f}s)")
                del H, problem
        inputs = _run_block(layer, inputs, kwargs)
    return PruneOutcome(kept=kept, records=records, seconds_total=time.perf_counter() - start,
                        seconds_solver=solver_s)
