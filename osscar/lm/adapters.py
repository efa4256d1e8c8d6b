"""What is prunable in each decoder block, per architecture (SliceGPT-style adapters).

Every adapter names, for one decoder block, two **consumers** and their **producers**:

===========  ============================  =====================================  =====================================
family       attention consumer (group)    attention producers (rows per group)   MLP consumer (1 neuron) / producers
===========  ============================  =====================================  =====================================
OPT          ``self_attn.out_proj``:       ``q_proj``, ``k_proj``, ``v_proj``      ``fc2`` / ``fc1`` (+ bias)
             one head = head_dim columns   head_dim rows each (+ biases)
Llama (GQA)  ``self_attn.o_proj``: one     ``q_proj`` rows of the group's heads,  ``down_proj`` / ``gate_proj``,
             **KV group** = heads_per_kv   ``k_proj``/``v_proj`` rows of its KV   ``up_proj``
             · head_dim columns            head (+ biases if any)
===========  ============================  =====================================  =====================================

**GQA: the attention unit.** A sliced Llama model must stay a valid config: every KV head must
serve the same number of query heads. Two units, chosen by ``config.osscar_attention_unit``
(set by the LM pipeline from ``LMRunConfig.attention_unit``; absent: ``kv-group``):

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

Adding a family: subclass :class:`ModelAdapter`, fill in the module names and
``attention_groups``, and decorate it with :func:`register_adapter` for its ``model_type``\\ s.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from osscar.options import ATTENTION_UNITS

def register_adapter(*model_types: str):
    """Class decorator: the adapter serves these ``config.model_type`` values.

    No registry dict is kept: lookups walk :class:`ModelAdapter`'s subclasses.
    """

    def wrap(cls: type[ModelAdapter]) -> type[ModelAdapter]:
        cls.model_types = tuple(model_types)
        return cls

    return wrap


def _adapters() -> dict[str, type[ModelAdapter]]:
    found: dict[str, type[ModelAdapter]] = {}
    stack = list(ModelAdapter.__subclasses__())
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        for t in cls.__dict__.get("model_types", ()):
            found[t] = cls
    return found


def available_adapters() -> list[str]:
    return sorted(_adapters())


def get_adapter(model_or_config: Any) -> ModelAdapter:
    """The adapter for a model or config, by ``config.model_type``; ValueError lists the allowed ones."""
    config = getattr(model_or_config, "config", model_or_config)
    mt = getattr(config, "model_type", None)
    adapters = _adapters()
    if mt not in adapters:
        raise ValueError(f"unsupported architecture model_type={mt!r}; allowed: {', '.join(sorted(adapters))}")
    return adapters[mt](config)


def _get(module: nn.Module, path: str) -> nn.Module:
    for part in path.split("."):
        module = getattr(module, part)
    return module


def _set(module: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(_get(module, parent) if parent else module, name, new)


def slice_linear(lin: nn.Linear, rows: Tensor | None = None, cols: Tensor | None = None) -> nn.Linear:
    """A new Linear keeping output ``rows`` and input ``cols`` (None: all), bias rows follow."""
    W = lin.weight.data
    if rows is not None:
        W = W[rows]
    if cols is not None:
        W = W[:, cols]
    new = nn.Linear(W.shape[1], W.shape[0], bias=lin.bias is not None, dtype=W.dtype, device=W.device)
    new.weight.data.copy_(W)
    if lin.bias is not None:
        new.bias.data.copy_(lin.bias.data if rows is None else lin.bias.data[rows])
    return new


def _span(groups: Tensor, size: int) -> Tensor:
    groups = torch.as_tensor(groups, dtype=torch.long)
    return (groups[:, None] * size + torch.arange(size, device=groups.device)[None, :]).reshape(-1)


@dataclass(frozen=True)
class Producer:
    """A producer Linear (path inside the block) and its rows per attention group."""

    path: str
    rows_per_group: int


class ModelAdapter:
    """Names the prunable parts of one architecture. Instances hold the model's config."""

    model_types: ClassVar[tuple[str, ...]] = ()
    layers_path: ClassVar[str] = ""
    attn_consumer: ClassVar[str] = ""
    mlp_consumer: ClassVar[str] = ""
    mlp_producers: ClassVar[tuple[str, ...]] = ()
    attn_module: ClassVar[str] = "self_attn"
    max_positions_attr: ClassVar[str] = "max_position_embeddings"

    def __init__(self, config: Any) -> None:
        self.config = config

    @property
    def attention_unit(self) -> str:
        """``head`` or ``kv-group`` (module docstring); MHA models have one unit, reported as kv-group."""
        return "kv-group"

    @property
    def attn_blocks(self) -> int:
        """Blocks of the attention layer problem's partition constraint (1: none)."""
        return 1

    def blocks(self, part: str) -> int:
        return self.attn_blocks if part == "attn" else 1

    def canonical_kept(self, part: str, count: int) -> Tensor:
        """A valid set of ``count`` kept groups (shapes only: for rebuilding a sliced model, latency tables)."""
        if part == "attn" and self.attn_blocks > 1:
            per, size = count // self.attn_blocks, self.n_attn_groups // self.attn_blocks
            return (torch.arange(self.attn_blocks)[:, None] * size + torch.arange(per)[None, :]).reshape(-1)
        return torch.arange(count)

    # -- sizes ------------------------------------------------------------------------------
    @property
    def n_heads(self) -> int:
        return int(self.config.num_attention_heads)

    @property
    def head_dim(self) -> int:
        return int(getattr(self.config, "head_dim", None) or self.config.hidden_size // self.n_heads)

    @property
    def n_kv_heads(self) -> int:
        return int(getattr(self.config, "num_key_value_heads", None) or self.n_heads)

    @property
    def ffn_dim(self) -> int:
        raise NotImplementedError

    @property
    def n_attn_groups(self) -> int:
        raise NotImplementedError

    @property
    def heads_per_group(self) -> int:
        return self.n_heads // self.n_attn_groups

    @property
    def attn_group_size(self) -> int:
        """Columns of the attention consumer per group."""
        return self.head_dim * self.heads_per_group

    def attn_producers(self) -> tuple[Producer, ...]:
        raise NotImplementedError

    def max_positions(self) -> int:
        return int(getattr(self.config, self.max_positions_attr))

    # -- modules ----------------------------------------------------------------------------
    def layers(self, model: nn.Module) -> nn.ModuleList:
        return _get(model, self.layers_path)

    def consumer(self, layer: nn.Module, part: str) -> nn.Linear:
        return _get(layer, self.attn_consumer if part == "attn" else self.mlp_consumer)

    def group_size(self, part: str) -> int:
        return self.attn_group_size if part == "attn" else 1

    def n_groups(self, part: str) -> int:
        return self.n_attn_groups if part == "attn" else self.ffn_dim

    def mlp_output_is_residual(self) -> bool:
        """True if a block's output is ``residual + mlp_consumer(X)`` with nothing applied after.

        Then changing the MLP consumer's weights by ΔW changes the block output by exactly
        ``X ΔWᵀ`` (the sequential calibration uses this to skip one block forward). False (the
        safe default) makes it re-run the block."""
        return False

    # -- physical slicing of one block ------------------------------------------------------------
    def slice_attention(self, layer: nn.Module, kept: Tensor) -> None:
        kept = torch.as_tensor(kept, dtype=torch.long).sort().values
        cons = _get(layer, self.attn_consumer)
        _set(layer, self.attn_consumer, slice_linear(cons, cols=_span(kept, self.attn_group_size)))
        for prod in self.attn_producers():
            lin = _get(layer, prod.path)
            _set(layer, prod.path, slice_linear(lin, rows=_span(kept, prod.rows_per_group)))
        self._set_attention_counts(_get(layer, self.attn_module), len(kept))

    def slice_mlp(self, layer: nn.Module, kept: Tensor) -> None:
        kept = torch.as_tensor(kept, dtype=torch.long).sort().values
        cons = _get(layer, self.mlp_consumer)
        _set(layer, self.mlp_consumer, slice_linear(cons, cols=kept))
        for path in self.mlp_producers:
            _set(layer, path, slice_linear(_get(layer, path), rows=kept))

    def _set_attention_counts(self, attn: nn.Module, kept_groups: int) -> None:
        raise NotImplementedError

    def update_config(self, config: Any, kept_attn_groups: int, kept_neurons: int) -> dict[str, Any]:
        """Write the sliced widths into ``config``; return the manifest entries needed to rebuild."""
        raise NotImplementedError

    # -- FLOPs model -----------------------------------------------------------------------------
    def layer_flops(self, kept_attn_groups: int | None = None, kept_neurons: int | None = None) -> dict[str, int]:
        """Multiply-add FLOPs (2 per MAC) per token of one block's prunable projections."""
        raise NotImplementedError


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

    def layer_flops(self, kept_attn_groups: int | None = None, kept_neurons: int | None = None) -> dict[str, int]:
        d = int(self.config.hidden_size)
        h = self.n_heads if kept_attn_groups is None else kept_attn_groups
        f = self.ffn_dim if kept_neurons is None else kept_neurons
        attn = 2 * d * (h * self.head_dim) * 4  # q, k, v, out_proj
        mlp = 2 * d * f * 2  # fc1, fc2
        return {"attn": attn, "mlp": mlp}


@register_adapter("llama", "mistral", "qwen2", "qwen3")
class LlamaAdapter(ModelAdapter):
    """Llama-style with GQA: a group is one query head (uniform per KV group) or one whole KV group
    (see the module docstring)."""

    layers_path = "model.layers"
    attn_consumer = "self_attn.o_proj"
    mlp_consumer = "mlp.down_proj"
    mlp_producers = ("mlp.gate_proj", "mlp.up_proj")

    @property
    def ffn_dim(self) -> int:
        return int(self.config.intermediate_size)

    @property
    def attention_unit(self) -> str:
        unit = getattr(self.config, "osscar_attention_unit", None) or "kv-group"
        if unit not in ATTENTION_UNITS:
            raise ValueError(f"attention_unit={unit!r} is unknown; allowed: {', '.join(ATTENTION_UNITS)}")
        return "kv-group" if self.n_kv_heads == self.n_heads else unit

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
