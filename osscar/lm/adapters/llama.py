"""Llama-layout families: separate q/k/v/o projections and a gated MLP (gate/up/down).

* Llama, Mistral, Qwen2 (q/k/v biases), Qwen3 (per-head q/k norms over ``head_dim``), Gemma:
  pre-norm blocks ending in ``residual + down_proj(…)``.
* Gemma 2, Gemma 3 (text): the same projections with post-attention and post-feedforward
  RMSNorms (``residual + norm(down_proj(…))``), so the block output is not linear in the MLP
  consumer's weights (:meth:`PostNormAdapter.mlp_output_is_residual` is False). The layer problems
  stay on the consumers' inputs (``o_proj``, ``down_proj``) and outputs; the norms after them are
  part of the next computation, as the next block is for any family. Gemma 3's q/k norms are per
  head (``head_dim``), so heads slice exactly; sliding-window and full-attention blocks get their
  own masks and rotary tables from the model (``capture_inputs``).
* OLMo 2: post-norms as Gemma 2 and q/k RMSNorms over the *whole* projection
  (``num_heads · head_dim``): MLP only (:class:`OLMo2Adapter`).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from osscar.lm.adapters.base import ModelAdapter, Producer, register_adapter


@register_adapter("llama", "mistral", "qwen2", "qwen3", "gemma")
class LlamaAdapter(ModelAdapter):
    """Llama-style with GQA: a group is one query head (uniform per KV group) or one whole KV group
    (see :mod:`osscar.lm.adapters`). Gemma has the same block (pre-norms only; its embedding
    scaling and GeGLU do not touch the pruned shapes)."""

    layers_path = "model.layers"
    attn_consumer = "self_attn.o_proj"
    mlp_consumer = "mlp.down_proj"
    mlp_producers = ("mlp.gate_proj", "mlp.up_proj")

    @property
    def ffn_dim(self) -> int:
        return int(self.config.intermediate_size)

    @property
    def attention_unit(self) -> str:
        return "kv-group" if self.n_kv_heads == self.n_heads else (self.requested_unit or "kv-group")

    @property
    def n_attn_groups(self) -> int:
        return self.n_heads if self.attention_unit == "head" else self.n_kv_heads

    @property
    def attn_blocks(self) -> int:
        return self.n_kv_heads if self.attention_unit == "head" else 1

    @property
    def q_heads_per_kv(self) -> int:
        return self.n_heads // self.n_kv_heads

    def mlp_output_is_residual(self) -> bool:
        return True  # hidden = residual + mlp(post_attention_layernorm(hidden)), last op of the block

    def attn_producers(self) -> tuple[Producer, ...]:
        hd = self.head_dim
        if self.attention_unit == "head":  # query heads only: the K/V heads all stay
            return (Producer("self_attn.q_proj", hd),)
        return (Producer("self_attn.q_proj", hd * self.heads_per_group),
                Producer("self_attn.k_proj", hd), Producer("self_attn.v_proj", hd))

    def _set_attention_counts(self, attn: nn.Module, kept_groups: int) -> None:
        # forward views with -1 heads; repeat_kv uses num_key_value_groups (q heads per kv head)
        if self.attention_unit == "head":
            values = (("num_heads", kept_groups), ("num_key_value_groups", kept_groups // self.n_kv_heads))
        else:
            values = (("num_heads", kept_groups * self.heads_per_group), ("num_key_value_heads", kept_groups))
        for name, value in values:
            if hasattr(attn, name):
                setattr(attn, name, value)

    def update_config(self, config: Any, kept_attn_groups: int, kept_neurons: int) -> dict[str, Any]:
        hd, unit = self.head_dim, self.attention_unit
        config.head_dim = hd  # keep explicit: hidden/heads no longer equals head_dim
        if unit == "head":
            config.num_attention_heads = int(kept_attn_groups)
        else:
            config.num_attention_heads = int(kept_attn_groups * self.heads_per_group)
            config.num_key_value_heads = int(kept_attn_groups)
        config.intermediate_size = int(kept_neurons)
        return {"num_attention_heads": config.num_attention_heads, "num_key_value_heads": config.num_key_value_heads,
                "intermediate_size": int(kept_neurons), "head_dim": hd, "attention_unit": unit,
                "needs_load_pruned": False}

    def restore_widths(self, config: Any, original: dict[str, Any]) -> None:
        config.intermediate_size = original["ffn_dim"]
        config.num_attention_heads = original["num_attention_heads"]
        config.num_key_value_heads = original.get("num_key_value_heads", original["attn_groups"])

    def layer_flops(self, kept_attn_groups: int | None = None, kept_neurons: int | None = None) -> dict[str, int]:
        d = int(self.config.hidden_size)
        g = self.n_attn_groups if kept_attn_groups is None else kept_attn_groups
        f = self.ffn_dim if kept_neurons is None else kept_neurons
        if self.attention_unit == "head":
            q, kv = g * self.head_dim, self.n_kv_heads * self.head_dim
        else:
            q, kv = g * self.heads_per_group * self.head_dim, g * self.head_dim
        attn = 2 * d * (2 * q + 2 * kv)  # q, o_proj and k, v
        mlp = 2 * d * f * 3  # gate, up, down
        return {"attn": attn, "mlp": mlp}


@register_adapter("gemma2", "gemma3_text")
class PostNormAdapter(LlamaAdapter):
    """Gemma 2 / Gemma 3 text: Llama projections, plus norms after attention and after the MLP."""

    def mlp_output_is_residual(self) -> bool:
        return False  # hidden = residual + post_feedforward_layernorm(mlp(...)): not linear in down_proj


@register_adapter("olmo2")
class OLMo2Adapter(PostNormAdapter):
    """OLMo 2: post-norms as Gemma 2; MLP neurons prune and slice exactly, attention does not.

    Its ``q_norm`` / ``k_norm`` are RMSNorms over all heads together: a kept head's query is
    ``q_h · w_h / sqrt((‖q_kept‖² + ‖q_pruned‖²)/N + eps)``. Zeroing a head's ``o_proj`` columns
    leaves its ``q_pruned`` in that denominator; slicing it out removes it. The two models agree
    for every input only if ``‖q_pruned(x)‖²`` were a fixed multiple of ``‖q_kept(x)‖² + N·eps``,
    which no weight rescaling provides (it is a different function of x; the shared ``eps`` also
    moves), so neither the zeroed nor the sliced model is the other's exact twin."""

    attention_fixed_reason = ("attention heads cannot be pruned exactly: q_norm/k_norm normalise over all "
                              "heads together; prune the MLP only (head_fraction=0, neuron_fraction instead of speedup)")
