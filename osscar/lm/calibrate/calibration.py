"""Sequential layer-wise calibration and pruning (the sparsegpt / OSSCAR-OPT driver shape).

1. A catcher on block 0 records its inputs (hidden states, one tensor per batch of
   ``batch_size`` calibration segments) and the keyword arguments the model passes to the block
   with each batch (masks, rotary embeddings, ...).
2. For each block, one at a time (fetched from its block store and released after, see
   :mod:`osscar.lm.offloading.offload`), on the model's device (H and the solver too):
   a. hooks on the attention consumer accumulate ``H = XᵀX`` over all segments
      (:class:`HessianAccumulator`: float32 products of row chunks summed into a float64 H);
      the layer problem ``LayerProblem.from_calibration(H, W.T, group_size, k, damping)`` is
      solved by the chosen method, and the new weights are written back (pruned columns zero);
   b. the block is re-run with the pruned attention to accumulate ``H`` of the MLP consumer's
      inputs, which is pruned the same way;
   c. the next block's inputs are the pruned block's outputs: where the adapter says the block
      ends in ``residual + mlp_consumer(X)`` (:meth:`ModelAdapter.mlp_output_is_residual`) and
      the consumer inputs fit in ``shortcut_bytes``, they are step b's outputs plus
      ``X (W_new − W_old)ᵀ`` (the same function, no third forward); otherwise the pruned block is
      re-run.

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

from osscar.devices import model_device
from osscar.lm.adapters import ModelAdapter, get_adapter
from osscar.lm.calibrate.capture import (HESSIAN_CHUNK_ROWS, Batch, HessianAccumulator, capture_inputs,  # noqa: F401  (re-exported)
                               run_block, shift_outputs, with_block_kwargs, write_consumer)
from osscar.lm.offloading.offload import BlockStore, ResidentBlocks
from osscar.methods import PruneResult, PruningMethod
from osscar.problem import LayerProblem, reconstruction_error
from osscar.options import CALIBRATION_INPUTS, DEFAULT_DAMPING  # noqa: F401  (CALIBRATION_INPUTS re-exported)

SHORTCUT_BYTES = 1 << 30  # largest stored MLP-consumer input (all segments) for the no-rerun step c


@dataclass
class LayerRecord:
    """What happened on one consumer."""

    name: str
    part: str
    n_groups: int
    k: int
    kept: list[int]
    objective: float | None  # None: not solved here (taken from a candidate database)
    dense_objective: float | None
    seconds: float
    info: dict[str, Any] = field(default_factory=dict)
    # ½‖X(W − Ŵ)‖² (raw H, no damping) and its ratio to ½‖XŴ‖², on the calibration inputs and on the
    # held-out windows (None: no held-out windows given); see osscar.problem.reconstruction_error
    calib_error: float | None = None
    calib_rel_error: float | None = None
    heldout_error: float | None = None
    heldout_rel_error: float | None = None


@dataclass
class PruneOutcome:
    kept: dict[int, dict[str, Tensor]]
    records: list[LayerRecord]
    seconds_total: float
    seconds_solver: float


def _heldout_pass(adapter: ModelAdapter, layer: nn.Module, inputs: list[Batch],
                  run: Callable[[nn.Module, list[Batch]], list[Batch]] = run_block,
                  ) -> tuple[dict[str, Tensor], list[Batch]]:
    """Both consumers' ``H = XᵀX`` on the held-out batches in one block run, and the block's outputs."""
    accs = {part: HessianAccumulator(adapter.consumer(layer, part)) for part in ("attn", "mlp")}
    try:
        outputs = run(layer, inputs)
    finally:
        Hs = {part: acc.remove() for part, acc in accs.items()}
    return Hs, outputs


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
    damping: float = DEFAULT_DAMPING,
    layers: list[int] | None = None,
    p_hat: Mapping[str, int] | None = None,
    progress: Callable[[str], None] | None = None,
    batch_size: int = 8,
    adapter: ModelAdapter | None = None,
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
        batch_size: calibration segments per block forward.
        adapter: the model's adapter, which holds the attention unit (None: ``get_adapter(model)``, kv-group).

    Returns {block: {"attn" | "mlp": {level: normalised loss}}}.
    """
    from osscar.allocation import loss_at, removal_path

    adapter = adapter or get_adapter(model)
    blocks = adapter.layers(model)
    todo = set(range(len(blocks)) if layers is None else layers)
    inputs, per_layer = capture_inputs(model, adapter, segments, batch_size)
    out: dict[int, dict[str, dict[int, float]]] = {}
    for i, layer in enumerate(blocks):
        inputs = with_block_kwargs(inputs, per_layer, i)
        if i not in todo:
            inputs = run_block(layer, inputs)
            continue
        accs = {part: HessianAccumulator(adapter.consumer(layer, part)) for part in ("attn", "mlp")}
        try:
            outputs = run_block(layer, inputs)
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


def _check_prune_arguments(model: nn.Module, adapter: ModelAdapter, keep_attn: int | Mapping[int, int],
                           layers: list[int] | None, shortcut_bytes: int, inputs_from: str) -> set[int]:
    """:func:`prune_model_sequential`'s checks (ValueError); returns the blocks to prune."""
    if isinstance(shortcut_bytes, bool) or not isinstance(shortcut_bytes, int) or shortcut_bytes < 0:
        raise ValueError(f"shortcut_bytes must be an integer ≥ 0, got {shortcut_bytes!r}")
    if inputs_from not in CALIBRATION_INPUTS:
        raise ValueError(f"inputs_from must be one of {', '.join(CALIBRATION_INPUTS)}, got {inputs_from!r}")
    todo = set(range(len(adapter.layers(model))) if layers is None else layers)
    if adapter.attention_fixed_reason and any(0 < _keep_for(keep_attn, i) < adapter.n_attn_groups for i in todo):
        raise ValueError(f"keep_attn < {adapter.n_attn_groups}: {model.config.model_type} {adapter.attention_fixed_reason}")
    return todo


@torch.no_grad()
def prune_model_sequential(
    model: nn.Module,
    segments: Tensor,
    method: PruningMethod,
    keep_attn: int | Mapping[int, int],
    keep_mlp: int | Mapping[int, int],
    damping: float = DEFAULT_DAMPING,
    layers: list[int] | None = None,
    progress: Callable[[str], None] | None = None,
    hessian_hook: Callable[[int, str, Tensor], None] | None = None,
    batch_size: int = 8,
    shortcut_bytes: int = SHORTCUT_BYTES,
    inputs_from: str = "pruned",
    heldout: Tensor | None = None,
    blocks: BlockStore | None = None,
    adapter: ModelAdapter | None = None,
) -> PruneOutcome:
    """Prune ``model`` in place, block by block, with ``method``.

    Args:
        segments: (n, seqlen) long calibration token ids.
        keep_attn: attention groups to keep per block (heads for OPT, KV groups for Llama):
            one count for all blocks, or {block: count} for a non-uniform allocation.
        keep_mlp: neurons to keep per block (int or {block: count}).
        layers: block indices to prune (default all); other blocks are run unchanged.
        hessian_hook: optional callback(block, part, H_raw) for tests/diagnostics.
        batch_size: calibration segments per block forward.
        shortcut_bytes: the MLP consumer's inputs (n·seqlen·ffn float32) are kept to form the next
            block's inputs without a third forward (module docstring, step c) only up to this size;
            0 always re-runs the block.
        inputs_from: ``"pruned"`` (default, the paper's sequential protocol: every H comes from the
            inputs of the already-pruned model) or ``"dense"`` (an ablation: every H comes from the
            dense model's inputs: one forward per block collects both consumers' H before either is
            pruned, and the next block gets the dense block's outputs). With ``"dense"`` every method
            solves the same layer problems, so end-to-end differences are not sequential drift.
        heldout: optional (h, seqlen') long held-out windows, never given to the solver: they go
            through the same blocks as the calibration windows (pruned, or dense with
            ``inputs_from="dense"``), a second H per consumer is accumulated from them after the block
            is pruned (before, with ``"dense"``) and each record gets its held-out error.
        blocks: where the blocks wait (:mod:`osscar.lm.offloading.offload`; default: the whole model resident
            on its device). Each block is fetched before its first forward and released after its last with
            its kept groups; activations wait on ``blocks.host``. The same arithmetic runs whatever the store.
        adapter: the model's adapter, which holds the attention unit (None: ``get_adapter(model)``, kv-group).

    Returns the kept group indices per block {block: {"attn": (k,), "mlp": (k,)}} and records.
    """
    adapter = adapter or get_adapter(model)
    todo = _check_prune_arguments(model, adapter, keep_attn, layers, shortcut_bytes, inputs_from)
    store = blocks if blocks is not None else ResidentBlocks(model, model_device(model), adapter)
    start = time.perf_counter()
    store.fetch_rest()  # the embeddings (and whatever runs before block 0) for the capture
    try:
        inputs, per_layer = capture_inputs(model, adapter, segments, batch_size, store.device, store.host)
        h_inputs, h_per_layer = (capture_inputs(model, adapter, heldout, batch_size, store.device, store.host)
                                 if heldout is not None else ([], []))
    finally:
        store.release_rest()
    shortcut = adapter.mlp_output_is_residual() and segments.numel() * adapter.ffn_dim * 4 <= shortcut_bytes
    run = _Sequential(adapter=adapter, store=store, method=method, damping=damping, inputs_from=inputs_from,
                      shortcut=shortcut, with_heldout=heldout is not None, hessian_hook=hessian_hook, progress=progress)
    kept: dict[int, dict[str, Tensor]] = {}
    for i in range(len(adapter.layers(model))):
        layer = store.fetch(i)
        inputs = with_block_kwargs(inputs, per_layer, i)  # this block's own masks / positions
        h_inputs = with_block_kwargs(h_inputs, h_per_layer, i)
        if i not in todo:
            inputs = run.forward(layer, inputs)
            h_inputs = run.forward(layer, h_inputs) if todo and i < max(todo) else []  # none after the last pruned
            store.release(i, layer, None)
            continue
        inputs, h_inputs, kept[i] = _prune_block(run, i, layer, inputs, h_inputs,
                                                 _keep_for(keep_attn, i), _keep_for(keep_mlp, i))
        store.release(i, layer, kept[i])
    return PruneOutcome(kept=kept, records=run.records, seconds_total=time.perf_counter() - start,
                        seconds_solver=run.solver_s)


@dataclass
class _Sequential:
    """What every block of one sequential pruning pass shares, and what it accumulates."""

    adapter: ModelAdapter
    store: BlockStore
    method: PruningMethod
    damping: float
    inputs_from: str
    shortcut: bool  # next block's inputs from the MLP consumer's kept inputs (module docstring, step c)
    with_heldout: bool
    hessian_hook: Callable[[int, str, Tensor], None] | None
    progress: Callable[[str], None] | None
    records: list[LayerRecord] = field(default_factory=list)
    solver_s: float = 0.0

    def forward(self, layer: nn.Module, batches: list[Batch]) -> list[Batch]:
        return run_block(layer, batches, self.store.device, self.store.host)


def _prune_block(run: _Sequential, i: int, layer: nn.Module, inputs: list[Batch], h_inputs: list[Batch],
                 keep_attn: int, keep_mlp: int) -> tuple[list[Batch], list[Batch], dict[str, Tensor]]:
    """Prune block ``i``'s two consumers; returns the next block's inputs and held-out inputs and the kept groups."""
    kept: dict[str, Tensor] = {}
    weights: dict[str, tuple[LayerRecord, Tensor, Tensor]] = {}  # part -> (record, W written, Ŵ)
    dense_H: dict[str, Tensor] = {}
    dense_outputs = None
    if run.with_heldout and run.inputs_from == "dense":
        h_H, h_inputs = _heldout_pass(run.adapter, layer, h_inputs, run.forward)
    if run.inputs_from == "dense":  # both consumers' H from the dense block, before either is pruned
        accs = {part: HessianAccumulator(run.adapter.consumer(layer, part)) for part in ("attn", "mlp")}
        try:
            dense_outputs = run.forward(layer, inputs)
        finally:
            dense_H = {part: acc.remove() for part, acc in accs.items()}
    for part, keep in (("attn", keep_attn), ("mlp", keep_mlp)):
        inputs, record, W_new, W_dense, kept[part] = _prune_consumer(run, i, layer, part, keep, inputs,
                                                                     dense_H.pop(part, None), dense_outputs)
        weights[part] = (record, W_new, W_dense)
    if run.with_heldout:
        if run.inputs_from == "pruned":  # the pruned block: attention as pruned, the MLP's inputs through it
            h_H, h_inputs = _heldout_pass(run.adapter, layer, h_inputs, run.forward)
        for part, (rec, W_new, W_dense) in weights.items():
            rec.heldout_error, rec.heldout_rel_error = reconstruction_error(h_H[part], W_new, W_dense)
        del h_H
    del weights
    if run.inputs_from == "dense":
        inputs = dense_outputs
    elif not run.shortcut:
        inputs = run.forward(layer, inputs)
    return inputs, h_inputs, kept


def _prune_consumer(run: _Sequential, i: int, layer: nn.Module, part: str, keep: int, inputs: list[Batch],
                    dense_H: Tensor | None, dense_outputs: list[Batch] | None
                    ) -> tuple[list[Batch], LayerRecord, Tensor, Tensor, Tensor]:
    """Solve one consumer's layer problem and write its weights.

    Returns (inputs: the same, or with the shortcut the next block's inputs; the record; W written: (in, out);
    Ŵ: (in, out); the kept groups: (k,)). ``dense_H``/``dense_outputs``: given with ``inputs_from="dense"``."""
    adapter = run.adapter
    consumer = adapter.consumer(layer, part)
    keep_x = run.shortcut and part == "mlp" and run.inputs_from == "pruned"
    acc = None
    if dense_H is not None:
        H, outputs = dense_H, dense_outputs
    else:
        acc = HessianAccumulator(consumer, keep_inputs=keep_x, host=run.store.host)
        try:
            outputs = run.forward(layer, inputs)
        finally:
            H = acc.remove()
    if run.hessian_hook is not None:
        run.hessian_hook(i, part, H)
    name = f"{adapter.layers_path}.{i}.{adapter.attn_consumer if part == 'attn' else adapter.mlp_consumer}"
    problem = LayerProblem.from_calibration(  # keep 0 (the module removed): the problem of keeping all, not solved
        H, consumer.weight.data.T, adapter.group_size(part), keep or adapter.n_groups(part), damping=run.damping,
        name=name, blocks=adapter.blocks(part))
    del H, dense_H  # the raw XᵀX: the problem's damped H gives the calibration error (calibration_error)
    if acc is not None:
        acc.H = None
    res = _solve(problem, keep, run.method)
    run.solver_s += res.seconds
    W_old = consumer.weight.data.clone()
    write_consumer(consumer, res.W)
    if keep_x:  # acc kept this consumer's inputs
        inputs = shift_outputs(outputs, acc.inputs, consumer.weight.data - W_old, run.store.host)
    del outputs
    err, rel = problem.calibration_error(consumer.weight.data.T)
    record = LayerRecord(name=name, part=part, n_groups=problem.n_groups, k=keep, kept=res.kept.tolist(),
                         objective=res.objective, dense_objective=problem.dense_objective(), seconds=res.seconds,
                         info={k: v for k, v in res.info.items() if isinstance(v, (int, float))},
                         calib_error=err, calib_rel_error=rel)
    run.records.append(record)
    if run.progress is not None:
        run.progress(f"block {i} {part}: Q={res.objective:.4g} ({res.seconds:.2f}s)")
    return inputs, record, consumer.weight.data.T.clone(), W_old.T, res.kept.clone()


def _solve(problem: LayerProblem, keep: int, method: PruningMethod) -> PruneResult:
    """``method.prune(problem)``; not solved: the dense weights when nothing is to be removed, zero weights when
    the whole module is removed (``keep`` 0: its output is its bias, the residual stream passes through)."""
    if keep == 0:
        return PruneResult(kept=torch.zeros(0, dtype=torch.long), W=torch.zeros_like(problem.W_dense), objective=0.0,
                           seconds=0.0, method="none", info={"module_removed": 1})
    if keep == problem.n_groups:
        return PruneResult(kept=torch.arange(problem.n_groups), W=problem.W_dense, objective=problem.dense_objective(),
                           seconds=0.0, method="none", info={"skipped_nothing_to_remove": 1})
    return method.prune(problem)
