"""Writing a model one block at a time as sharded safetensors that the usual loaders read.

:class:`ShardWriter` gives every decoder block its own shard (``model-0000i-of-0000N.safetensors``,
written as the block finishes) and everything outside the blocks (embeddings, final norm, LM head
unless tied, positions) the last shard; :meth:`ShardWriter.finish` writes
``model.safetensors.index.json``, ``config.json`` (the widths :func:`osscar.lm.slicing.slice_model`
would write), ``generation_config.json`` if the source has one, the tokenizer and
``osscar_pruned.json``. The folder then loads with ``from_pretrained`` (uniform Llama-layout
widths) or :func:`osscar.lm.slicing.load_pruned` (OPT, non-uniform widths), as a folder from
:func:`osscar.lm.slicing.save_pruned` does.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from osscar.lm.offloading.offload import SAFETENSORS_INDEX


def state_tensors(module: nn.Module, prefix: str = "", skip: str | None = None) -> dict[str, Tensor]:
    """``module``'s state dict on the host (names with ``prefix``), a tied tensor once under its
    first name, leaving out the submodule at path ``skip`` (meta tensors are an error)."""
    out: dict[str, Tensor] = {}
    seen: set[int] = set()
    for name, t in module.state_dict(keep_vars=True).items():
        if skip and (name.startswith(skip + ".")):
            continue
        if id(t) in seen:
            continue
        seen.add(id(t))
        if t.device.type == "meta":
            raise ValueError(f"{prefix}{name} has no data (meta tensor): fetch the module before writing it")
        out[f"{prefix}{name}"] = t.detach().to("cpu").contiguous()
    return out


class ShardWriter:
    """Shards of one model written into ``folder`` (module docstring); ``n_blocks`` fixes the names."""

    def __init__(self, folder: str | os.PathLike, n_blocks: int) -> None:
        self.folder, self.n_shards = Path(folder), n_blocks + 1
        self.folder.mkdir(parents=True, exist_ok=True)
        self.weight_map: dict[str, str] = {}
        self.total_bytes = 0

    def _file(self, shard: int) -> str:
        return f"model-{shard + 1:05d}-of-{self.n_shards:05d}.safetensors"

    def write_shard(self, shard: int, tensors: dict[str, Tensor]) -> None:
        """``tensors`` (names as in the model) as shard number ``shard`` (0-based)."""
        from safetensors.torch import save_file

        name = self._file(shard)
        save_file(tensors, str(self.folder / name), metadata={"format": "pt"})
        for k, t in tensors.items():
            self.weight_map[k] = name
            self.total_bytes += t.numel() * t.element_size()

    def write_block(self, i: int, prefix: str, layer: nn.Module) -> None:
        """Block ``i`` (its path in the model: ``prefix``) as shard ``i``."""
        self.write_shard(i, state_tensors(layer, prefix + "."))

    def write_rest(self, model: nn.Module, skip: str) -> None:
        """Everything of ``model`` outside the blocks (path ``skip``), as the last shard."""
        self.write_shard(self.n_shards - 1, state_tensors(model, skip=skip))

    def finish(self, config: Any, manifest: dict[str, Any], tokenizer: Any = None,
               source: str | os.PathLike | None = None) -> Path:
        """Index, config, manifest (and tokenizer, generation config from ``source``); returns the folder."""
        from osscar.lm.slicing import MANIFEST

        missing = [self._file(s) for s in range(self.n_shards) if not (self.folder / self._file(s)).is_file()]
        if missing:
            raise RuntimeError(f"{self.folder}: shards not written: {', '.join(missing)}")
        index = {"metadata": {"total_size": self.total_bytes}, "weight_map": dict(sorted(self.weight_map.items()))}
        (self.folder / SAFETENSORS_INDEX).write_text(json.dumps(index, indent=2))
        config.save_pretrained(self.folder)
        if source is not None and (Path(source) / "generation_config.json").is_file():
            shutil.copy(Path(source) / "generation_config.json", self.folder / "generation_config.json")
        if tokenizer is not None:
            tokenizer.save_pretrained(self.folder)
        (self.folder / MANIFEST).write_text(json.dumps(manifest, indent=2))
        return self.folder


def finish_disk_model(model: nn.Module, store: Any, writer: ShardWriter, kept: dict[int, dict[str, Tensor]],
                      tokenizer: Any = None, source: str | os.PathLike | None = None) -> dict[str, Any]:
    """Complete a folder whose blocks a disk store wrote as they were pruned (and sliced): the
    non-block tensors (read through ``store``, written, dropped), the sliced config and manifest
    (:func:`osscar.lm.slicing.finish_slicing`), the index and tokenizer. Returns the manifest. The store's
    adapter (which holds the run's attention unit) describes the slicing."""
    from osscar.lm.slicing import finish_slicing, kept_widths, original_widths

    adapter = store.adapter
    per_layer = kept_widths(adapter, len(adapter.layers(model)), kept)
    original = original_widths(adapter)
    store.fetch_rest()
    try:
        writer.write_rest(model, adapter.layers_path)
    finally:
        store.release_rest()
    manifest = finish_slicing(model, adapter, per_layer, original)
    writer.finish(model.config, manifest, tokenizer, source)
    return manifest
