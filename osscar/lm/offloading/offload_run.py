"""One LM run's model under an offload mode: how it loads, which block store each step uses,
how it is evaluated and where a ``disk`` run writes (:mod:`osscar.lm.offloading.offload`).

:class:`OffloadedModel` answers the few questions :func:`osscar.lm.run.run_lm` asks whatever the
mode: ``prune_store()`` (None for ``none``: the calibration's default, the whole model resident),
``perplexity(windows, pruned)`` and ``logits(ids)``; ``finish(kept, tokenizer)`` completes a
``disk`` run's output folder (the blocks are already there, sliced).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from osscar.lm.adapters import ModelAdapter
from osscar.lm.offloading.offload import BlockStore, DiskBlocks, HostBlocks, LazyCheckpoint, ResidentBlocks
from osscar.lm.offloading.shards import ShardWriter


def load_skeleton(model: str, cache_dir: str | None, dtype: str) -> Any:
    """``disk`` mode's :class:`osscar.lm.sources.models.LoadedModel`: the skeleton (no weights), the tokenizer,
    the safetensors folder as ``source`` and the provenance :func:`osscar.lm.sources.models.load_model` records."""
    from transformers import AutoTokenizer

    from osscar.io import sha256_file
    from osscar.lm.sources.gguf_convert import PROVENANCE_FILE
    from osscar.lm.sources.models import LoadedModel, gguf_source
    from osscar.lm.offloading.offload import build_skeleton, disk_source

    folder = disk_source(model, cache_dir)
    ppath = folder / PROVENANCE_FILE
    prov: dict[str, Any] = json.loads(ppath.read_text()) if ppath.is_file() else {}
    prov.update(model=model, path=str(folder))
    gguf = gguf_source(model)
    if gguf is not None:
        prov["source"] = str(gguf)
    if "weights_sha256" not in prov:
        prov["weights_sha256"] = {p.name: sha256_file(p) for p in sorted(folder.glob("*.safetensors"))}
    skeleton = build_skeleton(folder, getattr(torch, dtype))
    return LoadedModel(model=skeleton, tokenizer=AutoTokenizer.from_pretrained(str(folder)), source=str(folder),
                       provenance=prov)


@dataclass
class OffloadedModel:
    """``model`` under ``mode`` on ``device`` (module docstring), described by ``adapter`` (which holds the run's
    attention unit). ``disk``: ``source`` is the weights' folder, ``output`` the folder the pruned blocks go to
    (set by :meth:`open_output`)."""

    mode: str
    model: nn.Module
    device: torch.device
    dtype: torch.dtype
    adapter: ModelAdapter
    source: str | None = None
    output: Path | None = None
    writer: ShardWriter | None = None
    _store: BlockStore | None = field(default=None, repr=False)

    def open_output(self, stack: contextlib.ExitStack, save_to: str | None, scratch: str | None) -> None:
        """``disk``: the folder the blocks are written to while they are pruned: ``save_to`` (atomically:
        a temporary folder beside it, renamed when ``stack`` closes) or, not saving, a temporary folder
        under ``scratch`` (deleted when ``stack`` closes)."""
        from osscar.io import atomic_directory

        if self.mode != "disk":
            return
        if save_to is not None:
            self.output = stack.enter_context(atomic_directory(save_to))
        else:
            if scratch is not None:
                os.makedirs(scratch, exist_ok=True)
            self.output = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="osscar-disk-", dir=scratch)))
        self.writer = ShardWriter(self.output, len(self.adapter.layers(self.model)))

    def _eval_store(self, pruned: bool) -> BlockStore:
        if self.mode == "cpu":
            return HostBlocks(self.model, self.device, self.adapter)
        if self.mode == "disk":
            folder = self.output if pruned else self.source
            return DiskBlocks(self.model, LazyCheckpoint(folder), self.device, self.dtype, adapter=self.adapter)
        return ResidentBlocks(self.model, self.device, self.adapter)

    def prune_store(self) -> BlockStore | None:
        """The calibration's block store (None: the whole model resident, offload ``none``)."""
        if self.mode == "none":
            return None
        if self.mode == "disk":
            self._store = DiskBlocks(self.model, LazyCheckpoint(self.source), self.device, self.dtype, self.writer,
                                     self.adapter)
        else:
            self._store = HostBlocks(self.model, self.device, self.adapter)
        return self._store

    def perplexity(self, windows: Tensor, pruned: bool, progress: Any = None) -> dict[str, Any]:
        """Perplexity of the dense (``pruned`` False) or pruned model on ``windows: (n, seqlen)``."""
        from osscar.lm.evaluation.evaluate import perplexity
        from osscar.lm.offloading.streaming_eval import streamed_perplexity

        if self.mode == "none":
            return perplexity(self.model, windows, progress=progress)
        return streamed_perplexity(self.model, self._eval_store(pruned), windows, progress=progress)

    def logits(self, ids: Tensor) -> Tensor:
        """Logits of ``ids: (n, seqlen)`` (cpu mode: streamed, one window at a time)."""
        from osscar.lm.offloading.streaming_eval import streamed_logits

        if self.mode == "none":
            return self.model(ids.to(self.device), use_cache=False).logits
        return torch.cat([lg for _, lg in streamed_logits(self.model, self._eval_store(True), ids)])

    def finish(self, kept: dict[int, dict[str, Tensor]], tokenizer: Any) -> dict[str, Any]:
        """``disk``: the output folder's non-block shard, config, manifest, index and tokenizer."""
        from osscar.lm.offloading.shards import finish_disk_model

        assert self.mode == "disk" and self.writer is not None and self._store is not None
        return finish_disk_model(self.model, self._store, self.writer, kept, tokenizer, self.source)
