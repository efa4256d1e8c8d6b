"""Perplexity and logits of a model that is never whole on the device: one block at a time.

For a chunk of windows: (1) the embeddings run on the device and every block's inputs and
keyword arguments are captured (:func:`osscar.lm.calibrate.capture.capture_inputs`, one window per batch,
as :func:`osscar.lm.evaluation.evaluate.perplexity` scores them); (2) each block is fetched from its store
(:mod:`osscar.lm.offloading.offload`), run on every window of the chunk (activations waiting on the host)
and released; (3) the model's own forward runs once more per window with every block replaced by
a stub that hands the last block's stored output on, so the final norm, LM head and any logit
soft-capping are the model's own code. Each window goes through the same modules with the same
arguments as in the in-memory forward, so on one device the logits, and so the perplexity, are
the same numbers. Chunks hold at most ``host_bytes`` of hidden states (every block is fetched once
per chunk).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from osscar.lm.adapters import get_adapter
from osscar.lm.calibrate.capture import capture_inputs, run_block, with_block_kwargs
from osscar.lm.evaluation.evaluate import perplexity_summary, window_nlls
from osscar.lm.offloading.offload import BlockStore

EVAL_HOST_BYTES = 1 << 30  # hidden states of one chunk of windows kept on the host


class _Replay(nn.Module):
    """Stands in for a block in step 3: hands its input on, the last one the stored final output."""

    def __init__(self, original: nn.Module, final: Tensor | None, as_tuple: bool) -> None:
        super().__init__()
        self.final, self.as_tuple = final, as_tuple
        for name in ("attention_type", "is_sliding", "layer_type", "sliding_window", "layer_idx"):
            if hasattr(original, name):
                object.__setattr__(self, name, getattr(original, name))

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        hidden = args[0] if args else kwargs["hidden_states"]
        out = hidden if self.final is None else self.final.to(hidden.device)
        return (out,) if self.as_tuple else out


def chunk_size(n_windows: int, seqlen: int, hidden: int, element_bytes: int, host_bytes: int = EVAL_HOST_BYTES) -> int:
    """Windows per chunk: as many as keep ``seqlen × hidden`` hidden states each within ``host_bytes``."""
    return max(1, min(n_windows, host_bytes // max(1, seqlen * hidden * element_bytes)))


@torch.no_grad()
def streamed_logits(model: nn.Module, store: BlockStore, windows: Tensor,
                    host_bytes: int = EVAL_HOST_BYTES) -> Iterator[tuple[Tensor, Tensor]]:
    """(ids (1, seqlen), logits (1, seqlen, vocab)) per window of ``windows: (n, seqlen)``, in order."""
    adapter = get_adapter(model)
    layers = adapter.layers(model)
    n_blocks = len(layers)
    dtype = next(iter(model.parameters())).dtype
    size = chunk_size(len(windows), windows.shape[1], int(model.config.hidden_size), dtype.itemsize, host_bytes)
    for c in range(0, len(windows), size):
        chunk = windows[c:c + size]
        store.fetch_rest()
        try:
            hidden, per_layer = capture_inputs(model, adapter, chunk, 1, store.device, store.host)
        finally:
            store.release_rest()
        returned: list[bool] = []  # whether the last block returns a tuple (the model's loop expects the same)
        for i in range(n_blocks):
            layer = store.fetch(i)
            hook = layer.register_forward_hook(lambda m, a, out, seen=returned: seen.append(isinstance(out, tuple))) \
                if i == n_blocks - 1 else None
            try:
                hidden = run_block(layer, with_block_kwargs(hidden, per_layer, i), store.device, store.host)
            finally:
                if hook is not None:
                    hook.remove()
                store.release(i, layer, None)
        as_tuple = bool(returned and returned[0])
        originals = list(layers)
        store.fetch_rest()
        try:
            for w, (h, _) in enumerate(hidden):
                for i, layer in enumerate(originals):
                    layers[i] = _Replay(layer, h if i == n_blocks - 1 else None, as_tuple)
                ids = chunk[w:w + 1].to(store.device)
                yield ids, model(ids, use_cache=False).logits
        finally:
            for i, layer in enumerate(originals):
                layers[i] = layer
            store.release_rest()


def streamed_perplexity(model: nn.Module, store: BlockStore, windows: Tensor,
                        progress: Callable[[int], None] | None = None,
                        host_bytes: int = EVAL_HOST_BYTES) -> dict[str, Any]:
    """:func:`osscar.lm.evaluation.evaluate.perplexity` of the model behind ``store``, block by block."""
    window_nll: list[float] = []
    for ids, logits in streamed_logits(model, store, windows, host_bytes):
        window_nll += window_nlls(logits, ids)
        if progress is not None:
            progress(1)
    return perplexity_summary(window_nll, windows)
