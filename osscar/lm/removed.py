"""Level 0: a block's attention or MLP removed whole, so the residual stream passes through.

A removed module's output is what its consumer gives with every input column pruned: the
consumer's bias (OPT's ``out_proj`` / ``fc2``) or zero (Llama-layout and Phi-3 ``o_proj`` /
``down_proj``). Families with a norm after the module (Gemma 2/3, OLMo 2 post-norms) map a zero
output to zero, so for them too the block adds nothing; a bias goes through the norm as the
zeroed model's would.

* **Attention**: the attention module (``adapter.attn_module``) is replaced by
  :class:`RemovedAttention`, which returns the bias for every token (no q/k/v, no softmax). It
  keeps the bias under the consumer's own state-dict key (``self_attn.o_proj.bias``), so a saved
  folder reloads through :func:`osscar.lm.slicing.load_pruned` strictly. This holds for OLMo 2
  too: its whole-projection q/k norms make *per-head* pruning inexact, but with every head gone
  there is nothing left to normalise.
* **MLP**: the producers and the consumer are sliced to zero neurons (``(0, d)`` and ``(d, 0)``
  Linears, the adapter's own :meth:`~osscar.lm.adapters.base.ModelAdapter.slice_mlp`), whose
  product is exactly the consumer's bias (or zero). OPT has no MLP module to replace, so one
  mechanism serves every family, and the shapes reload like any other width.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor, nn

from osscar.lm.adapters import _get, _set


class RemovedAttention(nn.Module):
    """Stands in for an attention module removed whole: ``hidden (b, t, d) -> (bias or 0) (b, t, d)``.

    ``consumer_name``: the output projection's name inside the attention module (``o_proj``,
    ``out_proj``); its bias (if any) lives at ``<consumer_name>.bias``. Returns ``(output, None)``
    as the attention modules do. With a KV cache it appends zero keys and values of one head of
    width 1 per token for its ``layer_idx``, so the cache's length still counts the tokens seen (the
    model reads the positions and masks of cached decoding off it; nothing attends to them).
    """

    CACHE_KWARGS = ("cache", "past_key_values", "past_key_value")

    def __init__(self, consumer_name: str, out_features: int, bias: Tensor | None, layer_idx: int | None = None) -> None:
        super().__init__()
        self.consumer_name, self.out_features, self.layer_idx = consumer_name, int(out_features), layer_idx
        holder = nn.Module()
        if bias is not None:
            holder.bias = nn.Parameter(bias.detach().clone(), requires_grad=bias.requires_grad)
        self.add_module(consumer_name, holder)

    @property
    def bias(self) -> Tensor | None:
        return getattr(getattr(self, self.consumer_name), "bias", None)

    def forward(self, hidden_states: Tensor, *args: Any, **kwargs: Any) -> tuple[Tensor, None]:
        cache = next((kwargs[k] for k in self.CACHE_KWARGS if kwargs.get(k) is not None), None)
        if cache is not None and self.layer_idx is not None:
            b, t = hidden_states.shape[0], hidden_states.shape[-2]
            # (batch, heads, tokens, head_dim): one head of width 1 (the cache reads an empty tensor as no tokens)
            token = hidden_states.new_zeros(b, 1, t, 1)
            cache.update(token, token, self.layer_idx)
        shape = (*hidden_states.shape[:-1], self.out_features)
        if self.bias is None:
            return hidden_states.new_zeros(shape), None
        return self.bias.to(hidden_states.dtype).expand(shape).clone(), None


def _consumer_name(adapter: Any) -> str:
    prefix = adapter.attn_module + "."
    if not adapter.attn_consumer.startswith(prefix):
        raise ValueError(f"{adapter.config.model_type}: attention consumer {adapter.attn_consumer!r} "
                         f"is not inside the attention module {adapter.attn_module!r}")
    return adapter.attn_consumer[len(prefix):]


def attention_removed(adapter: Any, layer: nn.Module) -> bool:
    """True if the block's attention was removed whole (:func:`remove_attention`)."""
    return isinstance(_get(layer, adapter.attn_module), RemovedAttention)


@torch.no_grad()
def remove_attention(adapter: Any, layer: nn.Module) -> None:
    """Replace the block's attention module by :class:`RemovedAttention` (in place; keeps the bias)."""
    if attention_removed(adapter, layer):
        return
    consumer = adapter.consumer(layer, "attn")
    layer_idx = getattr(_get(layer, adapter.attn_module), "layer_idx", None)
    stub = RemovedAttention(_consumer_name(adapter), consumer.out_features, consumer.bias, layer_idx)
    _set(layer, adapter.attn_module, stub)


@torch.no_grad()
def remove_mlp(adapter: Any, layer: nn.Module) -> None:
    """Slice the block's MLP to zero neurons (in place): its output is the consumer's bias or zero."""
    with warnings.catch_warnings():  # nn.Linear(0, d) warns that initialising it is a no-op
        warnings.filterwarnings("ignore", message="Initializing zero-element tensors is a no-op")
        adapter.slice_mlp(layer, torch.zeros(0, dtype=torch.long))
