"""Physical removal of pruned heads / KV groups and neurons, saving and reloading.

After :func:`osscar.lm.calibrate.calibration.prune_model_sequential` the consumers' pruned columns are
zero. :func:`slice_model` deletes them together with the producers' rows (q/k/v + biases for an
OPT head; q rows and the k/v head for a Llama KV group; fc1 / gate+up rows for a neuron) and
writes the new widths into the config. With **uniform** widths across blocks:

* **Llama-style**: the saved folder is a plain HF checkpoint (``num_attention_heads``,
  ``num_key_value_heads``, ``intermediate_size`` updated, ``head_dim`` explicit) that reloads with
  ``AutoModelForCausalLM.from_pretrained``.
* **OPT**: HF's ``OPTAttention`` computes ``head_dim = hidden_size // num_attention_heads``, so no
  OPT config can describe fewer heads of the original width. The folder keeps the original
  ``num_attention_heads`` (``ffn_dim`` is updated) and ``osscar_pruned.json`` records the kept
  head count; :func:`load_pruned` rebuilds the model (plain ``from_pretrained`` refuses it with a
  shape-mismatch error rather than loading something wrong).

**Non-uniform widths** (runtime-aware allocation gives every block its own widths): no HF config
can describe per-block widths, so the saved ``config.json`` keeps the *original* (dense) widths
and ``osscar_pruned.json`` carries the per-block widths::

    {"uniform": false, "needs_load_pruned": true,
     "per_layer": [{"attn_groups": 2, "neurons": 1024}, ...],   # one entry per block
     "kept_attn_groups": [2, ...], "kept_neurons": [1024, ...], "original": {...}, ...}

Load it with :func:`load_pruned` (``osscar.lm.sources.models.load_model`` does so for any folder with
``osscar_pruned.json``): it builds the model from the dense config, slices every block's shapes
to its recorded widths and loads the state dict strictly. Plain ``from_pretrained`` refuses the
folder with a size-mismatch error.

**Level 0**: a width of 0 removes the module whole (:mod:`osscar.lm.removed`: the attention module
replaced by its output bias, the MLP sliced to zero neurons); such a model is always written as
non-uniform (``per_layer`` in the manifest), since no HF config describes a removed module.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from osscar.io import atomic_directory

from osscar.lm.adapters import ModelAdapter, get_adapter
from osscar.lm.removed import remove_attention, remove_mlp

MANIFEST = "osscar_pruned.json"


def kept_from_zero_columns(model: nn.Module) -> dict[int, dict[str, Tensor]]:
    """Kept groups read off the consumers' nonzero columns (for a pruned, unsliced model)."""
    adapter = get_adapter(model)
    out = {}
    for i, layer in enumerate(adapter.layers(model)):
        out[i] = {}
        for part in ("attn", "mlp"):
            W = adapter.consumer(layer, part).weight.data  # (m, p)
            s = adapter.group_size(part)
            live = W.abs().sum(0).reshape(-1, s).sum(1) != 0
            out[i][part] = torch.nonzero(live).flatten()
    return out


@torch.no_grad()
def slice_model(model: nn.Module, kept: dict[int, dict[str, Tensor]], adapter: ModelAdapter | None = None
                ) -> dict[str, Any]:
    """Slice ``model`` in place. ``kept[block]["attn" | "mlp"]``: kept group indices, in the attention unit of
    ``adapter`` (the one that pruned them; None: ``get_adapter(model)``, kv-group).

    Blocks absent from ``kept`` (or parts absent) keep all their groups. Uniform widths update
    the config; non-uniform widths keep the dense config and record ``per_layer`` widths in the
    manifest (see the module docstring). Returns the manifest (also ``model.config.osscar_pruned``).
    """
    adapter = adapter or get_adapter(model)
    layers = adapter.layers(model)
    per_layer = kept_widths(adapter, len(layers), kept)
    original = original_widths(adapter)
    for i, layer in enumerate(layers):
        slice_block(adapter, layer, kept.get(i, {}))
    return finish_slicing(model, adapter, per_layer, original)


def kept_widths(adapter: Any, n_blocks: int, kept: dict[int, dict[str, Tensor]]) -> list[tuple[int, int]]:
    """(attention groups, neurons) kept per block (a block or part absent from ``kept``: all; 0: the
    module removed whole, :mod:`osscar.lm.removed`)."""
    n_attn, n_mlp = adapter.n_attn_groups, adapter.ffn_dim
    per_layer = []
    for i in range(n_blocks):
        k = kept.get(i, {})
        per_layer.append((len(k.get("attn", range(n_attn))), len(k.get("mlp", range(n_mlp)))))
    return per_layer


@torch.no_grad()
def slice_block(adapter: Any, layer: nn.Module, kept: dict[str, Tensor]) -> None:
    """Slice one block in place to its kept groups (``kept["attn" | "mlp"]``; a part absent or
    complete is left whole; an empty one is removed whole, :mod:`osscar.lm.removed`). The config is
    not touched (:func:`finish_slicing`)."""
    if "attn" in kept and len(kept["attn"]) == 0:
        remove_attention(adapter, layer)
    elif "attn" in kept and len(kept["attn"]) < adapter.n_attn_groups:
        adapter.slice_attention(layer, kept["attn"])
    if "mlp" in kept and len(kept["mlp"]) == 0:
        remove_mlp(adapter, layer)
    elif "mlp" in kept and len(kept["mlp"]) < adapter.ffn_dim:
        adapter.slice_mlp(layer, kept["mlp"])


def original_widths(adapter: Any) -> dict[str, Any]:
    """The dense widths a manifest records under ``original`` (read before the config changes)."""
    return {"attn_groups": adapter.n_attn_groups, "ffn_dim": adapter.ffn_dim, "num_attention_heads": adapter.n_heads,
            "num_key_value_heads": adapter.n_kv_heads, "head_dim": adapter.head_dim,
            "attention_unit": adapter.attention_unit}


def finish_slicing(model: nn.Module, adapter: Any, per_layer: list[tuple[int, int]],
                   original: dict[str, Any]) -> dict[str, Any]:
    """After every block is sliced to ``per_layer`` (attention groups, neurons) widths: uniform
    widths go into the config, non-uniform ones into the manifest only (module docstring). Returns
    the manifest (also ``model.config.osscar_pruned``)."""
    uniform = len(set(per_layer)) == 1 and min(per_layer[0]) > 0  # no config describes a removed module
    if uniform:
        (ka, km) = per_layer[0]
        manifest = adapter.update_config(model.config, ka, km)
        manifest.update({"model_type": model.config.model_type, "original": original, "uniform": True,
                         "kept_attn_groups": ka, "kept_neurons": km})
    else:
        manifest = {"model_type": model.config.model_type, "original": original, "uniform": False,
                    "needs_load_pruned": True, "head_dim": adapter.head_dim,
                    "per_layer": [{"attn_groups": a, "neurons": m} for a, m in per_layer],
                    "kept_attn_groups": [a for a, _ in per_layer], "kept_neurons": [m for _, m in per_layer]}
    model.config.osscar_pruned = manifest
    return manifest


def save_pruned(model: nn.Module, tokenizer: Any, path: str | os.PathLike) -> Path:
    """Save a sliced model (and tokenizer) atomically: temporary folder, then rename."""
    path = Path(path)
    with atomic_directory(path) as tmp:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        manifest = getattr(model.config, "osscar_pruned", None) or {}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return path


def _load_state_dict(path: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    index = path / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        sd: dict[str, Tensor] = {}
        for f in files:
            sd.update(load_file(str(path / f)))
        return sd
    return load_file(str(path / "model.safetensors"))


def slice_shapes(adapter: Any, layers: list[nn.Module], widths: list[tuple[int, int]]) -> None:
    """Give every block the shapes of its (attention groups, neurons) width, keeping the first groups (level 0:
    the module removed): the architecture of a sliced model, whatever its weights (a state dict to load, or
    none: latency depends on the shapes only)."""
    for layer, (ka, km) in zip(layers, widths):
        if ka == 0:
            remove_attention(adapter, layer)
        elif ka < adapter.n_attn_groups:
            adapter.slice_attention(layer, adapter.canonical_kept("attn", ka))
        if km == 0:
            remove_mlp(adapter, layer)
        elif km < adapter.ffn_dim:
            adapter.slice_mlp(layer, torch.arange(km))


def load_pruned(path: str | os.PathLike, dtype: torch.dtype = torch.float32) -> nn.Module:
    """Load a folder written by :func:`save_pruned` (any family; required for sliced OPT and for
    non-uniform per-block widths, read from ``per_layer`` in ``osscar_pruned.json``)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(path)
    manifest = json.loads((path / MANIFEST).read_text()) if (path / MANIFEST).is_file() else {}
    if not manifest.get("needs_load_pruned"):
        return AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype).eval()
    config = AutoConfig.from_pretrained(str(path))
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    adapter = get_adapter(model, manifest.get("original", {}).get("attention_unit"))  # the unit it was pruned in
    layers = adapter.layers(model)
    if manifest.get("per_layer") is not None:  # non-uniform: the config holds the dense widths
        widths = [(int(w["attn_groups"]), int(w["neurons"])) for w in manifest["per_layer"]]
        if len(widths) != len(layers):
            raise RuntimeError(f"load_pruned({path}): manifest has {len(widths)} blocks, config {len(layers)}")
    else:  # uniform: OPT keeps the original head count in its config
        widths = [(int(manifest["kept_attn_groups"]), adapter.ffn_dim)] * len(layers)
    slice_shapes(adapter, layers, widths)  # shapes only; the weights come from the state dict
    sd = _load_state_dict(path)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise RuntimeError(f"load_pruned({path}): missing {sorted(set(missing) - tied)}, unexpected {unexpected}")
    if tied:
        model.tie_weights()
    model.config.osscar_pruned = manifest
    return model.eval()
