"""Phi-3: the Llama block with fused projections, ``qkv_proj`` and ``gate_up_proj``.

``qkv_proj`` rows are ``[q heads (H·d) | k heads (K·d) | v heads (K·d)]``; ``gate_up_proj`` rows
are ``[gate (F) | up (F)]`` (``chunk(2)`` in the forward). Slicing keeps, for kept groups, the
matching rows of every segment, so the fused matrices stay in that order:

* unit ``head``: the kept query heads' q rows, every k and v row;
* unit ``kv-group``: the kept groups' q rows (``heads_per_kv`` heads each) and their k and v rows;
* a neuron: row ``n`` of gate and row ``F + n`` of up.

``Phi3Attention`` splits ``qkv`` at ``self.config.num_attention_heads · head_dim``, reading the
config shared by every block; a sliced block's attention gets a :class:`BlockConfig` view of the
shared config with its own head counts (everything else, e.g. ``_attn_implementation`` after
``set_attn_implementation``, is read from the shared config), so blocks of different widths
(non-uniform allocation, latency tables on one block) run correctly. The saved ``config.json`` is
the model's config, updated when the widths are uniform.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from osscar.lm.adapters.base import Producer, _span, register_adapter
from osscar.lm.adapters.llama import LlamaAdapter


class BlockConfig:
    """A view of a shared config with some attributes overridden for one block."""

    def __init__(self, base: Any, **overrides: Any) -> None:
        if isinstance(base, BlockConfig):  # sliced again: one view over the shared config
            base, overrides = base._base, {**base._overrides, **overrides}
        self._base, self._overrides = base, overrides

    def __getattr__(self, name: str) -> Any:  # only for names not set on the view itself
        if name.startswith("__") or name in ("_base", "_overrides"):
            raise AttributeError(name)
        return self._overrides[name] if name in self._overrides else getattr(self._base, name)


@register_adapter("phi3")
class Phi3Adapter(LlamaAdapter):
    """Phi-3 / Phi-3.5 / Phi-4-mini: fused q/k/v and gate/up (module docstring)."""

    mlp_producers = ("mlp.gate_up_proj",)

    def attn_producers(self) -> tuple[Producer, ...]:
        return ()  # one fused producer whose rows are not equal blocks per group: attn_row_slices

    def attn_row_slices(self, kept: Tensor) -> tuple[tuple[str, Tensor], ...]:
        hd, q_total, kv_total = self.head_dim, self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        if self.attention_unit == "head":
            q = _span(kept, hd)
            kv = torch.arange(q_total, q_total + 2 * kv_total)
        else:
            q = _span(kept, hd * self.heads_per_group)
            k = _span(kept, hd)
            kv = torch.cat([q_total + k, q_total + kv_total + k])
        return (("self_attn.qkv_proj", torch.cat([q, kv])),)

    def mlp_row_slices(self, kept: Tensor) -> tuple[tuple[str, Tensor], ...]:
        return (("mlp.gate_up_proj", torch.cat([kept, kept + self.ffn_dim])),)

    def _set_attention_counts(self, attn: nn.Module, kept_groups: int) -> None:
        super()._set_attention_counts(attn, kept_groups)
        if self.attention_unit == "head":  # this block's own head counts (module docstring)
            counts = {"num_attention_heads": kept_groups}
        else:
            counts = {"num_attention_heads": kept_groups * self.heads_per_group, "num_key_value_heads": kept_groups}
        attn.config = BlockConfig(attn.config, **counts)
