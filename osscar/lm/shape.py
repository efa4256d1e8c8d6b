"""The sizes of a causal LM that a memory plan needs, counted from its config on the meta device."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a causal LM that the plan needs (from its config; no weights).

    Attributes:
        model_type: ``config.model_type``.
        n_layers, hidden: blocks and the residual width d.
        ffn: MLP width (the MLP consumer's p).
        attn_p: the attention consumer's input width (heads × head_dim).
        n_heads: query heads (attention scores: (b, heads, seqlen, seqlen)).
        vocab: vocabulary size (logits: (seqlen, vocab)).
        block_params: parameters of one decoder block.
        other_params: every parameter outside the blocks (embeddings, positions, final norm, LM head
            unless tied to the embeddings).
        mlp_residual: a block ends in ``residual + mlp_consumer(X)`` (the calibration's no-rerun step).
        eager_attention: ``config._attn_implementation == "eager"``: attention materialises its
            (b, heads, seqlen, seqlen) scores and the model passes every block a (b, 1, seqlen, seqlen)
            mask (kept for every batch by the calibration capture); SDPA/flash kernels (the default) do not.
    """

    model_type: str
    n_layers: int
    hidden: int
    ffn: int
    attn_p: int
    n_heads: int
    vocab: int
    block_params: int
    other_params: int
    mlp_residual: bool
    eager_attention: bool = False

    @property
    def params(self) -> int:
        return self.n_layers * self.block_params + self.other_params


def model_shape(config: Any) -> ModelShape:
    """:class:`ModelShape` of a transformers config, counted on a one-block meta-device model."""
    import torch
    from transformers import AutoModelForCausalLM

    from osscar.lm.adapters import get_adapter

    adapter = get_adapter(config)
    one = copy.deepcopy(config)
    one.num_hidden_layers = 1
    if isinstance(getattr(one, "layer_types", None), list):
        one.layer_types = one.layer_types[:1]
    with torch.device("meta"):
        m = AutoModelForCausalLM.from_config(one)
    block = sum(p.numel() for p in adapter.layers(m)[0].parameters())
    total = sum(p.numel() for p in m.parameters())  # parameters() yields a tied weight once
    return ModelShape(model_type=str(config.model_type), n_layers=int(config.num_hidden_layers),
                      hidden=int(config.hidden_size), ffn=int(adapter.ffn_dim),
                      attn_p=int(adapter.n_heads * adapter.head_dim), n_heads=int(adapter.n_heads),
                      vocab=int(config.vocab_size), block_params=int(block), other_params=int(total - block),
                      mlp_residual=bool(adapter.mlp_output_is_residual()),
                      eager_attention=getattr(config, "_attn_implementation", None) == "eager")
