"""What is prunable in each decoder block, per architecture (SliceGPT-style adapters).

Every adapter names, for one decoder block, two **consumers** and their **producers**:

=============  ==========================  =====================================  ==================================
family         attention consumer (group)  attention producers (rows per group)   MLP consumer (1 neuron) / producers
=============  ==========================  =====================================  ==================================
OPT            ``self_attn.out_proj``:     ``q_proj``, ``k_proj``, ``v_proj``      ``fc2`` / ``fc1`` (+ bias)
               one head = head_dim cols    head_dim rows each (+ biases)
Llama-layout   ``self_attn.o_proj``: one   ``q_proj`` rows of the group's heads   ``down_proj`` / ``gate_proj``,
(GQA)          query head or one **KV      (+ ``k_proj``/``v_proj`` rows of its   ``up_proj``
               group** (heads_per_kv ·     KV head for a KV group; + biases)
               head_dim columns)
Phi-3          ``self_attn.o_proj`` (as    the matching rows of each segment of   ``down_proj`` / rows n and F + n
               Llama)                      the fused ``qkv_proj``                 of the fused ``gate_up_proj``
=============  ==========================  =====================================  ==================================

Llama-layout: Llama, Mistral, Qwen2, Qwen3, Gemma, Gemma 2, Gemma 3 (text), OLMo 2 (MLP only)
(:mod:`osscar.lm.adapters.llama`); OPT: :mod:`osscar.lm.adapters.opt`; Phi-3:
:mod:`osscar.lm.adapters.phi3`. Falcon is not supported: its attention derives ``head_dim`` from
``hidden_size // num_attention_heads`` (no config describes fewer heads of the same width, so no
plain ``from_pretrained`` reload), ALiBi variants give each head a slope that depends on its index
and the total head count (removing heads changes the kept heads' biases), and ``query_key_value``
has three layouts (interleaved per KV group, multi-query, per head).

**GQA: the attention unit.** A sliced model must stay a valid config: every KV head must serve
the same number of query heads. Two units, given to the adapter's constructor
(``get_adapter(model, attention_unit)``; the LM pipeline builds one adapter from ``LMRunConfig.attention_unit`` and
hands it to every step; None: ``kv-group``):

* ``head`` (the pipeline's default for GQA/MQA models): a group is one query head (``head_dim``
  columns of o_proj, ``head_dim`` rows of q_proj); the layer problem carries the partition
  constraint ``blocks = num_key_value_heads`` (:class:`~osscar.problem.LayerProblem`), so every
  KV group keeps the same number of query heads; k/v projections are untouched. The sliced config
  has ``num_attention_heads = kv heads × heads kept per group`` and ``head_dim`` explicit, and
  reloads with ``from_pretrained``. A model with one KV head (multi-query) prunes query heads freely.
* ``kv-group``: a group is one whole KV group (its query heads plus the shared K/V head),
  ``group_size = head_dim · heads_per_kv``; removing one deletes q rows, k/v rows and o_proj
  columns together (``num_key_value_heads`` and ``num_attention_heads`` shrink by the same factor).
  A model with one KV head cannot prune attention this way.

A model whose every query head has its own K/V head (MHA) has one unit only: a head with its k/v.

Adding a family: subclass :class:`ModelAdapter` (or :class:`LlamaAdapter`) in a module of this
package, fill in the module names and ``attention_groups``, decorate it with
:func:`register_adapter` for its ``model_type``\\ s, and import the module below.
"""

from __future__ import annotations

from osscar.lm.adapters.base import (ModelAdapter, Producer, _get, _set, _span, available_adapters, get_adapter,
                                     register_adapter, slice_linear)
from osscar.lm.adapters.llama import LlamaAdapter, OLMo2Adapter, PostNormAdapter
from osscar.lm.adapters.opt import OPTAdapter
from osscar.lm.adapters.phi3 import Phi3Adapter

__all__ = ["LlamaAdapter", "ModelAdapter", "OLMo2Adapter", "OPTAdapter", "Phi3Adapter", "PostNormAdapter", "Producer",
           "_get", "_set", "_span", "available_adapters", "get_adapter", "register_adapter", "slice_linear"]
