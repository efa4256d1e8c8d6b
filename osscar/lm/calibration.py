"""Sequential layer-wise calibration and pruning (the sparsegpt / OSSCAR-OPT driver shape).

1. A catcher on block 0 records its inputs (hidden states, one tensor per batch of
   ``batch_size`` calibration segments) and the keyword arguments the model passes to the block
   with each batch (masks, rotary embeddings, ...).
2. For each block, one at a time, activations on the model's device (H and the solver too):
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
from osscar.methods import PruneResult, PruningMethod
from osscar.problem import LayerProblem, reconstruction_error
from osscar.options import CALIBRATION_INPUTS  # noqa: F401  (re-exported)


class _Caught(Exception):
    pass


HESSIAN_CHUNK_ROWS = 512  # rows per float32 XᵀX product (error bound: see HessianAccumulator)
SHORTCUT_BYTES = 1 << 30  # largest stored MLP-consumer input (all segments) for the no-rerun step c

Batch = tuple[Tensor, dict[str, Any]]  # block input (b, seqlen, d) and the kwargs the model passed with it


class HessianAccumulator:
    """Forward hook: ``H += XᵀX`` of a Linear's input ``X: (rows, p)``. ``H: (p, p)`` float64; ``n`` rows.

    Each hook call splits X into chunks of at most ``chunk_rows`` rows; a chunk's ``XᵀX`` is one
    float32 matmul (float64 if X is float64), added to the float64 H. Each entry of a chunk
    product is a dot product of at most ``chunk_rows`` terms, so its rounding error is below
    ``chunk_rows · 2⁻²⁴ · Σ|x_i x_j|`` ≤ ``chunk_rows · 2⁻²⁴ · sqrt(H_ii H_jj)`` (3·10⁻⁵ relative
    for 512 rows); the float64 sum over chunks adds nothing visible. ``keep_inputs`` also keeps X
    (float32, in call order) in ``inputs``.
    """

    def __init__(self, module: nn.Linear, chunk_rows: int = HESSIAN_CHUNK_ROWS, keep_inputs: bool = False) -> None:
        if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1:
            raise ValueError(f"chunk_rows must be a positive integer, got {chunk_rows!r}")
        p = module.in_features
        self.H = torch.zeros(p, p, dtype=torch.float64, device=module.weight.device)
        self.n = 0
        self.chunk_rows = chunk_rows
        self.inputs: list[Tensor] | None = [] if keep_inputs else None
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        X = inputs[0].detach().reshape(-1, inputs[0].shape[-1])
        X = X if X.dtype == torch.float64 else X.float()
        for c in range(0, X.shape[0], self.chunk_rows):
            Xc = X[c:c + self.chunk_rows]
            self.H.add_(Xc.T @ Xc)
        self.n += X.shape[0]
        if self.inputs is not None:
            self.inputs.append(X)

    def remove(self) -> Tensor:
        self.handle.remove()
        return self.H


class _LayerStub(nn.Module):
    """Stands in for one decoder block during capture: records the block's input (block 0 only) and
    the keyword arguments the model passes to *this* block, returns its input unchanged, and stops
    the forward after the last block. Attributes the model's loop may read (attention type) are copied."""

    COPIED = ("attention_type", "is_sliding", "layer_type", "sliding_window", "layer_idx")

    def __init__(self, original: nn.Module, index: int, last: bool, record: dict[int, list]) -> None:
        super().__init__()
        self.index, self.last, self.record = index, last, record
        for name in self.COPIED:
            if hasattr(original, name):
                object.__setattr__(self, name, getattr(original, name))

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        kwargs = dict(kwargs)
        hidden = args[0] if args else kwargs.pop("hidden_states")
        for key in ("cache", "past_key_values", "past_key_value"):
            if key in kwargs:
                kwargs[key] = None
        kwargs["use_cache"] = False
        self.record.setdefault(self.index, []).append((hidden.detach().clone() if self.index == 0 else None, kwargs))
        if self.last:
            raise _Caught
        return hidden


@torch.no_grad()
def capture_inputs(model: nn.Module, adapter: ModelAdapter, segments: Tensor,
                   batch_size: int = 8) -> tuple[list[Batch], list[list[dict[str, Any]]]]:
    """Block 0's input per batch, and the keyword arguments the model passes to every block.

    Models whose blocks differ (sliding-window vs full attention, per-layer rotary settings) pass
    each block its own masks and position embeddings; they are taken from the model's own forward,
    with every block replaced by a stub that returns its input (no block runs, so this costs the
    embeddings only). segments: (n, seqlen) long. Returns ([(hidden (b, seqlen, d), kwargs of block
    0)] per batch, [[kwargs of block i for i in blocks] per batch]).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    layers = adapter.layers(model)
    device = model_device(model)
    originals = list(layers)
    record: dict[int, list] = {}
    for i, layer in enumerate(originals):
        layers[i] = _LayerStub(layer, i, i == len(originals) - 1, record)
    try:
        for i in range(0, len(segments), batch_size):
            try:
                model(segments[i:i + batch_size].to(device), use_cache=False)
            except _Caught:
                pass
    finally:
        for i, layer in enumerate(originals):
            layers[i] = layer
    n_batches = len(record.get(0, []))
    if any(len(record.get(i, [])) != n_batches for i in range(len(originals))):
        raise RuntimeError("capture_inputs: the model did not call every block once per batch")
    batches = [(record[0][b][0], record[0][b][1]) for b in range(n_batches)]
    per_layer = [[record[i][b][1] for i in range(len(originals))] for b in range(n_batches)]
    return batches, per_layer


def with_block_kwargs(inputs: list[Batch], per_layer: list[list[dict[str, Any]]], block: int) -> list[Batch]:
    """The batches of ``inputs`` with the keyword arguments the model passes to ``block``."""
    return [(x, per_layer[b][block]) for b, (x, _) in enumerate(inputs)]


def _run_block(layer: nn.Module, inputs: list[Batch]) -> list[Batch]:
    """The block's outputs on every batch, each paired with the batch's kwargs."""
    outs = []
    for x, kwargs in inputs:
        y = layer(x, **kwargs)
        outs.append(((y[0] if isinstance(y, tuple) else y).detach(), kwargs))
    return outs


def _shift_outputs(outputs: list[Batch], consumer_inputs: list[Tensor], delta_W: Tensor) -> list[Batch]:
    """``y + X ΔWᵀ`` per batch: block outputs after the residual consumer's weights change by ΔW (m, p).

    outputs: (b, seqlen, d) per batch; consumer_inputs: the consumer's (b·seqlen, p) inputs, same order.
    """
    if len(outputs) != len(consumer_inputs):
        raise ValueError(f"consumer_inputs: one per batch expected ({len(outputs)}), got {len(consumer_inputs)}")
    dW = delta_W.T.to(consumer_inputs[0].dtype)
    return [((y + (X @ dW).reshape(y.shape).to(y.dtype)), kw) for (y, kw), X in zip(outputs, consumer_inputs)]


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


def _heldout_pass(adapter: ModelAdapter, layer: nn.Module, inputs: list[Batch]) -> tuple[dict[str, Tensor], list[Batch]]:
    """Both consumers' ``H = XᵀX`` on the held-out batches in one block run, and the block's outputs."""
    accs = {part: HessianAccumulator(adapter.consumer(layer, part)) for part in ("attn", "mlp")}
    try:
        outputs = _run_block(layer, inputs)
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
    damping: float = 0.01,
    layers: list[int] | None = None,
    p_hat: Mapping[str, int] | None = None,
    progress: Callable[[str], None] | None = None,
    batch_size: int = 8,
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

    Returns {block: {"attn" | "mlp": {level: normalised loss}}}.
    """
    from osscar.allocation import loss_at, removal_path

    adapter = get_adapter(model)
    blocks = adapter.layers(model)
    todo = set(range(len(blocks)) if layers is None else layers)
    inputs, per_layer = capture_inputs(model, adapter, segments, batch_size)
    out: dict[int, dict[str, dict[int, float]]] = {}
    for i, layer in enumerate(blocks):
        inputs = with_block_kwargs(inputs, per_layer, i)
        if i not in todo:
            inputs = _run_block(layer, inputs)
            continue
        accs = {part: HessianAccumulator(adapter.consumer(layer, part)) for part in ("attn", "mlp")}
        try:
            outputs = _run_block(layer, inputs)
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
    batch_size: int = 8,
    shortcut_bytes: int = SHORTCUT_BYTES,
    inputs_from: str = "pruned",
    heldout: Tensor | None = None,
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

    Returns the kept group indices per block {block: {"attn": (k,), "mlp": (k,)}} and records.
    """
    if isinstance(shortcut_bytes, bool) or not isinstance(shortcut_bytes, int) or shortcut_bytes < 0:
        raise ValueError(f"shortcut_bytes must be an integer ≥ 0, got {shortcut_bytes!r}")
    if inputs_from not in CALIBRATION_INPUTS:
        raise ValueError(f"inputs_from must be one of {', '.join(CALIBRATION_INPUTS)}, got {inputs_from!r}")
    adapter = get_adapter(model)
    blocks = adapter.layers(model)
    todo = set(range(len(blocks)) if layers is None else layers)
    if adapter.attention_fixed_reason and any(_keep_for(keep_attn, i) < adapter.n_attn_groups for i in todo):
        raise ValueError(f"keep_attn < {adapter.n_attn_groups}: {model.config.model_type} {adapter.attention_fixed_reason}")
    start = time.perf_counter()
    inputs, per_layer = capture_inputs(model, adapter, segments, batch_size)
    h_inputs, h_per_layer = capture_inputs(model, adapter, heldout, batch_size) if heldout is not None else ([], [])
    shortcut = adapter.mlp_output_is_residual() and segments.numel() * adapter.ffn_dim * 4 <= shortcut_bytes
    kept: dict[int, dict[str, Tensor]] = {}
    records: list[LayerRecord] = []
    solver_s = 0.0
    for i, layer in enumerate(blocks):
        inputs = with_block_kwargs(inputs, per_layer, i)  # this block's own masks / positions
        h_inputs = with_block_kwargs(h_inputs, h_per_layer, i)
        if i not in todo:
            inputs = _run_block(layer, inputs)
            h_inputs = _run_block(layer, h_inputs) if todo and i < max(todo) else []  # none after the last pruned
            continue
        kept[i] = {}
        weights: dict[str, tuple[LayerRecord, Tensor, Tensor]] = {}  # part -> (record, W written, Ŵ)
        if heldout is not None and inputs_from == "dense":
            h_H, h_inputs = _heldout_pass(adapter, layer, h_inputs)
        if inputs_from == "dense":  # both consumers' H from the dense block, before either is pruned
            accs = {part: HessianAccumulator(adapter.consumer(layer, part)) for part in ("attn", "mlp")}
            try:
                dense_outputs = _run_block(layer, inputs)
            finally:
                dense_H = {part: acc.remove() for part, acc in accs.items()}
        for part, keep in (("attn", _keep_for(keep_attn, i)), ("mlp", _keep_for(keep_mlp, i))):
            consumer = adapter.consumer(layer, part)
            keep_x = shortcut and part == "mlp" and inputs_from == "pruned"
            acc = None
            if inputs_from == "dense":
                H, outputs = dense_H.pop(part), dense_outputs
            else:
                acc = HessianAccumulator(consumer, keep_inputs=keep_x)
                try:
                    outputs = _run_block(layer, inputs)
                finally:
                    H = acc.remove()
            if hessian_hook is not None:
                hessian_hook(i, part, H)
            name = f"{adapter.layers_path}.{i}.{adapter.attn_consumer if part == 'attn' else adapter.mlp_consumer}"
            problem = LayerProblem.from_calibration(
                H, consumer.weight.data.T, adapter.group_size(part), keep, damping=damping, name=name,
                blocks=adapter.blocks(part))
            if keep == problem.n_groups:  # nothing to remove: not solved, weights kept
                res = PruneResult(kept=torch.arange(problem.n_groups), W=problem.W_dense,
                                  objective=problem.dense_objective(), seconds=0.0, method="none",
                                  info={"skipped_nothing_to_remove": 1})
            else:
                res = method.prune(problem)
            solver_s += res.seconds
            W_old = consumer.weight.data.clone()
            write_consumer(consumer, res.W)
            if keep_x:  # acc kept this consumer's inputs
                inputs = _shift_outputs(outputs, acc.inputs, consumer.weight.data - W_old)
            kept[i][part] = res.kept.clone()
            err, rel = reconstruction_error(H, consumer.weight.data.T, W_old.T)
            records.append(LayerRecord(name=name, part=part, n_groups=problem.n_groups, k=keep,
                                       kept=res.kept.tolist(), objective=res.objective,
                                       dense_objective=problem.dense_objective(), seconds=res.seconds,
                                       info={k: v for k, v in res.info.items() if isinstance(v, (int, float))},
                                       calib_error=err, calib_rel_error=rel))
            weights[part] = (records[-1], consumer.weight.data.T.clone(), W_old.T)
            if progress is not None:
                progress(f"block {i} {part}: Q={res.objective:.4g} ({res.seconds:.2f}s)")
            del H, problem, acc, outputs, W_old
        if heldout is not None:
            if inputs_from == "pruned":  # the pruned block: attention as pruned, the MLP's inputs through it
                h_H, h_inputs = _heldout_pass(adapter, layer, h_inputs)
            for part, (rec, W_new, W_dense) in weights.items():
                rec.heldout_error, rec.heldout_rel_error = reconstruction_error(h_H[part], W_new, W_dense)
            del h_H
        del weights
        if inputs_from == "dense":
            inputs = dense_outputs
            del dense_outputs
        elif not shortcut:
            inputs = _run_block(layer, inputs)
    return PruneOutcome(kept=kept, records=records, seconds_total=time.perf_counter() - start,
                        seconds_solver=solver_s)
