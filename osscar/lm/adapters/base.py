"""The adapter base: registry by ``model_type``, module access, row/column slicing of one block.

An adapter names, for one decoder block, two **consumers** (the attention output projection and
the MLP down projection, whose input columns are pruned in groups) and their **producers** (the
Linears whose output rows feed those columns, deleted with them). The families and the GQA
attention units are described in :mod:`osscar.lm.adapters`.

A producer is described either by :class:`Producer` (a Linear whose rows come in equal blocks
per group) or, for fused projections (Phi-3's ``qkv_proj`` / ``gate_up_proj``), by overriding
:meth:`ModelAdapter.attn_row_slices` / :meth:`ModelAdapter.mlp_row_slices`, which map kept
groups to the rows of every producer.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn


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


def get_adapter(model_or_config: Any, attention_unit: str | None = None) -> ModelAdapter:
    """The adapter for a model or config, by ``config.model_type``; ValueError lists the allowed ones.

    ``attention_unit``: ``head`` or ``kv-group`` for grouped-query models (:mod:`osscar.lm.adapters`);
    None: ``kv-group``. The unit lives in the adapter only: a run builds one and hands it to every step."""
    config = getattr(model_or_config, "config", model_or_config)
    mt = getattr(config, "model_type", None)
    adapters = _adapters()
    if mt not in adapters:
        raise ValueError(f"unsupported architecture model_type={mt!r}; allowed: {', '.join(sorted(adapters))}")
    return adapters[mt](config, attention_unit)


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


class ModelAdapter(ABC):
    """Names the prunable parts of one architecture. Instances hold the model's config and the GQA
    attention unit (``head`` or ``kv-group``; None: ``kv-group``)."""

    model_types: ClassVar[tuple[str, ...]] = ()
    layers_path: ClassVar[str] = ""
    attn_consumer: ClassVar[str] = ""
    mlp_consumer: ClassVar[str] = ""
    mlp_producers: ClassVar[tuple[str, ...]] = ()
    attn_module: ClassVar[str] = "self_attn"
    max_positions_attr: ClassVar[str] = "max_position_embeddings"

    def __init__(self, config: Any, attention_unit: str | None = None) -> None:
        from osscar.options import ATTENTION_UNITS

        if attention_unit is not None and attention_unit not in ATTENTION_UNITS:
            raise ValueError(f"attention_unit={attention_unit!r} is unknown; allowed: {', '.join(ATTENTION_UNITS)}")
        self.config = config
        self.requested_unit = attention_unit

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
    @abstractmethod
    def ffn_dim(self) -> int:
        """Neurons of the MLP consumer."""

    @property
    @abstractmethod
    def n_attn_groups(self) -> int:
        """Groups of the attention consumer."""

    @property
    def heads_per_group(self) -> int:
        return self.n_heads // self.n_attn_groups

    @property
    def attn_group_size(self) -> int:
        """Columns of the attention consumer per group."""
        return self.head_dim * self.heads_per_group

    @abstractmethod
    def attn_producers(self) -> tuple[Producer, ...]:
        """The attention producers and their rows per group."""

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

    #: Why attention cannot be pruned exactly in this family ("" if it can): the pipeline refuses a
    #: head fraction > 0 with this reason, and :meth:`slice_attention` refuses to slice.
    attention_fixed_reason: ClassVar[str] = ""

    def mlp_output_is_residual(self) -> bool:
        """True if a block's output is ``residual + mlp_consumer(X)`` with nothing applied after.

        Then changing the MLP consumer's weights by ΔW changes the block output by exactly
        ``X ΔWᵀ`` (the sequential calibration uses this to skip one block forward). False (the
        safe default) makes it re-run the block."""
        return False

    # -- physical slicing of one block ------------------------------------------------------------
    def attn_row_slices(self, kept: Tensor) -> tuple[tuple[str, Tensor], ...]:
        """(producer path, kept rows) for kept attention groups ``kept: (k,)`` sorted."""
        return tuple((prod.path, _span(kept, prod.rows_per_group)) for prod in self.attn_producers())

    def mlp_row_slices(self, kept: Tensor) -> tuple[tuple[str, Tensor], ...]:
        """(producer path, kept rows) for kept neurons ``kept: (k,)`` sorted."""
        return tuple((path, kept) for path in self.mlp_producers)

    def slice_attention(self, layer: nn.Module, kept: Tensor) -> None:
        if self.attention_fixed_reason:
            raise ValueError(f"{self.config.model_type}: {self.attention_fixed_reason}")
        kept = torch.as_tensor(kept, dtype=torch.long).sort().values
        cons = _get(layer, self.attn_consumer)
        _set(layer, self.attn_consumer, slice_linear(cons, cols=_span(kept, self.attn_group_size)))
        for path, rows in self.attn_row_slices(kept):
            _set(layer, path, slice_linear(_get(layer, path), rows=rows))
        self._set_attention_counts(_get(layer, self.attn_module), len(kept))

    def slice_mlp(self, layer: nn.Module, kept: Tensor) -> None:
        kept = torch.as_tensor(kept, dtype=torch.long).sort().values
        cons = _get(layer, self.mlp_consumer)
        _set(layer, self.mlp_consumer, slice_linear(cons, cols=kept))
        for path, rows in self.mlp_row_slices(kept):
            _set(layer, path, slice_linear(_get(layer, path), rows=rows))

    @abstractmethod
    def _set_attention_counts(self, attn: nn.Module, kept_groups: int) -> None:
        """Tell a sliced block's attention module how many groups it keeps."""

    @abstractmethod
    def update_config(self, config: Any, kept_attn_groups: int, kept_neurons: int) -> dict[str, Any]:
        """Write the sliced widths into ``config``; return the manifest entries needed to rebuild."""

    @abstractmethod
    def restore_widths(self, config: Any, original: dict[str, Any]) -> None:
        """Write the dense widths of a manifest's ``original`` entry (:func:`osscar.lm.slicing.original_widths`)
        back into ``config``, undoing :meth:`update_config`."""

    def original_config(self) -> Any:
        """A copy of this adapter's config as it was before slicing (the model's own if it is not sliced)."""
        cfg = copy.deepcopy(self.config)
        manifest = getattr(cfg, "osscar_pruned", None)
        if manifest:
            self.restore_widths(cfg, manifest["original"])
        return cfg

    def original(self) -> ModelAdapter:
        """An adapter of the same family and attention unit for :meth:`original_config`."""
        return type(self)(self.original_config(), self.requested_unit)

    # -- FLOPs model -----------------------------------------------------------------------------
    @abstractmethod
    def layer_flops(self, kept_attn_groups: int | None = None, kept_neurons: int | None = None) -> dict[str, int]:
        """Multiply-add FLOPs (2 per MAC) per token of one block's prunable projections."""
