"""OPT: a group is one head (q/k/v rows and biases go with it); a neuron is one fc1 row / fc2 column."""

from __future__ import annotations

from typing import Any

from torch import nn

from osscar.lm.adapters.base import ModelAdapter, Producer, register_adapter


@register_adapter("opt")
class OPTAdapter(ModelAdapter):
    """OPT: one group = one head; q/k/v rows and biases go with it; fc1 → fc2 per neuron.

    HF's ``OPTAttention`` derives ``head_dim = hidden_size // num_attention_heads``, so a config
    with fewer heads cannot describe the sliced model. The sliced model keeps the original
    ``num_attention_heads`` in its config and records the kept count in ``osscar_pruned.json``;
    :func:`osscar.lm.slicing.load_pruned` rebuilds it.
    """

    layers_path = "model.decoder.layers"
    attn_consumer = "self_attn.out_proj"
    mlp_consumer = "fc2"
    mlp_producers = ("fc1",)

    @property
    def head_dim(self) -> int:
        return int(self.config.hidden_size // self.config.num_attention_heads)

    @property
    def ffn_dim(self) -> int:
        return int(self.config.ffn_dim)

    @property
    def n_attn_groups(self) -> int:
        return self.n_heads

    def attn_producers(self) -> tuple[Producer, ...]:
        hd = self.head_dim
        return (Producer("self_attn.q_proj", hd), Producer("self_attn.k_proj", hd), Producer("self_attn.v_proj", hd))

    def _set_attention_counts(self, attn: nn.Module, kept_groups: int) -> None:
        attn.num_heads = kept_groups  # forward reshapes with -1; head_dim and scaling unchanged

    def mlp_output_is_residual(self) -> bool:
        # OPT-350m (do_layer_norm_before=False) applies final_layer_norm after the residual add
        return bool(getattr(self.config, "do_layer_norm_before", True))

    def update_config(self, config: Any, kept_attn_groups: int, kept_neurons: int) -> dict[str, Any]:
        config.ffn_dim = int(kept_neurons)
        config.osscar_num_attention_heads = int(kept_attn_groups)
        return {"num_attention_heads": int(kept_attn_groups), "ffn_dim": int(kept_neurons),
                "head_dim": self.head_dim, "needs_load_pruned": True}

    def restore_widths(self, config: Any, original: dict[str, Any]) -> None:
        config.ffn_dim = original["ffn_dim"]  # num_attention_heads was never changed (class docstring)

    def layer_flops(self, kept_attn_groups: int | None = None, kept_neurons: int | None = None) -> dict[str, int]:
        d = int(self.config.hidden_size)
        h = self.n_heads if kept_attn_groups is None else kept_attn_groups
        f = self.ffn_dim if kept_neurons is None else kept_neurons
        attn = 2 * d * (h * self.head_dim) * 4  # q, k, v, out_proj
        mlp = 2 * d * f * 2  # fc1, fc2
        return {"attn": attn, "mlp": mlp}
