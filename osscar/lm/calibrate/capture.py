"""What the sequential calibration records: block inputs, the kwargs each block gets, and ``H = XᵀX``.

* :class:`HessianAccumulator` — a forward hook summing a Linear's ``XᵀX`` into a float64 H.
* :func:`capture_inputs` — block 0's inputs and every block's keyword arguments, from the model's
  own forward with each block replaced by a stub (no block runs: this costs the embeddings only).
* :func:`run_block` / :func:`shift_outputs` — one block's outputs on every batch, or the outputs
  after its residual MLP consumer's weights changed by ΔW.

``host``: where the activations wait between blocks (block offloading, :mod:`osscar.lm.offloading.offload`:
the host while the block runs on an accelerator; each batch moves to the block's device for its
forward and back). None keeps them where they were computed (the whole model on one device).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from osscar.devices import model_device
from osscar.lm.adapters import ModelAdapter

HESSIAN_CHUNK_ROWS = 512  # rows per float32 XᵀX product (error bound: see HessianAccumulator)

Batch = tuple[Tensor, dict[str, Any]]  # block input (b, seqlen, d) and the kwargs the model passed with it


class _Caught(Exception):
    pass


def _to(x: Tensor, where: torch.device | None) -> Tensor:
    return x if where is None else x.to(where)


class HessianAccumulator:
    """Forward hook: ``H += XᵀX`` of a Linear's input ``X: (rows, p)``. ``H: (p, p)`` float64; ``n`` rows.

    Each hook call splits X into chunks of at most ``chunk_rows`` rows; a chunk's ``XᵀX`` is one
    float32 matmul (float64 if X is float64), added to the float64 H. Each entry of a chunk
    product is a dot product of at most ``chunk_rows`` terms, so its rounding error is below
    ``chunk_rows · 2⁻²⁴ · Σ|x_i x_j|`` ≤ ``chunk_rows · 2⁻²⁴ · sqrt(H_ii H_jj)`` (3·10⁻⁵ relative
    for 512 rows); the float64 sum over chunks adds nothing visible. ``keep_inputs`` also keeps X
    (float32, in call order) in ``inputs``, on ``host`` if given.
    """

    def __init__(self, module: nn.Linear, chunk_rows: int = HESSIAN_CHUNK_ROWS, keep_inputs: bool = False,
                 host: torch.device | None = None) -> None:
        if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1:
            raise ValueError(f"chunk_rows must be a positive integer, got {chunk_rows!r}")
        p = module.in_features
        self.H = torch.zeros(p, p, dtype=torch.float64, device=module.weight.device)
        self.n = 0
        self.chunk_rows = chunk_rows
        self.host = host
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
            self.inputs.append(_to(X, self.host))

    def remove(self) -> Tensor:
        self.handle.remove()
        return self.H


class _LayerStub(nn.Module):
    """Stands in for one decoder block during capture: records the block's input (block 0 only) and
    the keyword arguments the model passes to *this* block, returns its input unchanged, and stops
    the forward after the last block. Attributes the model's loop may read (attention type) are copied."""

    COPIED = ("attention_type", "is_sliding", "layer_type", "sliding_window", "layer_idx")

    def __init__(self, original: nn.Module, index: int, last: bool, record: dict[int, list],
                 host: torch.device | None = None) -> None:
        super().__init__()
        self.index, self.last, self.record, self.host = index, last, record, host
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
        kept = _to(hidden.detach().clone(), self.host) if self.index == 0 else None
        self.record.setdefault(self.index, []).append((kept, kwargs))
        if self.last:
            raise _Caught
        return hidden


@torch.no_grad()
def capture_inputs(model: nn.Module, adapter: ModelAdapter, segments: Tensor, batch_size: int = 8,
                   device: torch.device | None = None, host: torch.device | None = None,
                   ) -> tuple[list[Batch], list[list[dict[str, Any]]]]:
    """Block 0's input per batch, and the keyword arguments the model passes to every block.

    Models whose blocks differ (sliding-window vs full attention, per-layer rotary settings) pass
    each block its own masks and position embeddings; they are taken from the model's own forward,
    with every block replaced by a stub that returns its input (no block runs, so this costs the
    embeddings only). segments: (n, seqlen) long. ``device``: where the embeddings run (default:
    the model's first parameter's); ``host``: where block 0's inputs are kept (module docstring).
    Returns ([(hidden (b, seqlen, d), kwargs of block 0)] per batch, [[kwargs of block i for i in
    blocks] per batch]).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    layers = adapter.layers(model)
    device = device if device is not None else model_device(model)
    originals = list(layers)
    record: dict[int, list] = {}
    for i, layer in enumerate(originals):
        layers[i] = _LayerStub(layer, i, i == len(originals) - 1, record, host)
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


def run_block(layer: nn.Module, inputs: list[Batch], device: torch.device | None = None,
              host: torch.device | None = None) -> list[Batch]:
    """The block's outputs on every batch, each paired with the batch's kwargs.

    With ``host`` (block offloading) each batch moves to ``device`` for the forward and its output
    back to ``host``; without, the batches stay where they are."""
    outs = []
    for x, kwargs in inputs:
        y = layer(_to(x, device if host is not None else None), **kwargs)
        outs.append((_to((y[0] if isinstance(y, tuple) else y).detach(), host), kwargs))
    return outs


def shift_outputs(outputs: list[Batch], consumer_inputs: list[Tensor], delta_W: Tensor,
                  host: torch.device | None = None) -> list[Batch]:
    """``y + X ΔWᵀ`` per batch: block outputs after the residual consumer's weights change by ΔW (m, p).

    outputs: (b, seqlen, d) per batch; consumer_inputs: the consumer's (b·seqlen, p) inputs, same order.
    With ``host``, each batch is computed on ΔW's device and kept on ``host``.
    """
    if len(outputs) != len(consumer_inputs):
        raise ValueError(f"consumer_inputs: one per batch expected ({len(outputs)}), got {len(consumer_inputs)}")
    dW = delta_W.T.to(consumer_inputs[0].dtype)
    dev = dW.device if host is not None else None
    out = []
    for (y, kw), X in zip(outputs, consumer_inputs):
        yd = _to(y, dev)
        out.append((_to(yd + (_to(X, dev) @ dW).reshape(yd.shape).to(yd.dtype), host), kw))
    return out


def write_consumer(consumer: nn.Linear, W: Tensor) -> None:
    """Write solver weights ``W: (p, m)`` into ``consumer.weight: (m, p)`` (pruned columns zero)."""
    consumer.weight.data.copy_(W.T.to(consumer.weight.dtype))
