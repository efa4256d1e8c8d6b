"""Block offloading: where a model's decoder blocks wait while another one is computed.

Three modes (``LMRunConfig.offload``, ``--offload``):

* ``none`` — the whole model on the run's device (:class:`ResidentBlocks`: fetching a block is
  looking it up).
* ``cpu`` — the model's weights stay in host memory; one block at a time moves to the device for
  its calibration, pruning or evaluation and back after (:class:`HostBlocks`); the embeddings,
  final norm and LM head move there only while the calibration capture or an evaluation's first
  and last steps need them. Activations wait on the host between blocks and move to the device
  one batch at a time (:mod:`osscar.lm.calibrate.capture`).
* ``disk`` — the model is a skeleton without weights (``accelerate.init_empty_weights``: every
  parameter on the meta device, buffers computed as usual); a block's tensors are read from the
  safetensors shards of a local folder or a hub snapshot when it is fetched (``safe_open``, one
  shard file at a time) and dropped when it is released (:class:`DiskBlocks`). With a
  :class:`~osscar.lm.offloading.shards.ShardWriter`, a released pruned block is first sliced to its kept
  widths and written to the output folder as its own shard.

A block store has one interface: ``fetch_rest()`` / ``release_rest()`` for everything outside
the blocks, ``fetch(i)`` → block ``i`` on ``device``, ``release(i, layer, kept)``; ``host`` is
where activations wait (None: where they were computed).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from osscar.lm.adapters import ModelAdapter, get_adapter

SAFETENSORS_INDEX = "model.safetensors.index.json"
SAFETENSORS_SINGLE = "model.safetensors"


# -- where the weights are ----------------------------------------------------------------------
def _hub_cached(repo: str, cache_dir: str | None = None) -> Path | None:
    """The hub snapshot folder holding ``repo``'s safetensors index (or single file), if cached."""
    from huggingface_hub import try_to_load_from_cache

    for name in (SAFETENSORS_INDEX, SAFETENSORS_SINGLE):
        hit = try_to_load_from_cache(repo, name, cache_dir=cache_dir)
        if isinstance(hit, str):
            return Path(hit).parent
    return None


def _has_safetensors(folder: Path) -> bool:
    return (folder / SAFETENSORS_INDEX).is_file() or (folder / SAFETENSORS_SINGLE).is_file()


def check_disk_source(model: str, cache_dir: str | None = None) -> None:
    """ValueError (naming ``offload``) unless ``model``'s weights can be read lazily from safetensors:
    an embedded or GGUF model (converted once to a safetensors folder), a local folder with
    ``model.safetensors`` or ``model.safetensors.index.json``, or a hub id with safetensors weights
    (cached, or listed by the hub when online). Reads no weights."""
    from osscar.lm.sources.models import gguf_source

    if gguf_source(model) is not None:
        return  # converted to a safetensors folder on first use (osscar.lm.sources.gguf_convert)
    hint = "convert it (AutoModelForCausalLM.from_pretrained(...).save_pretrained(folder) writes safetensors) " \
           "or use offload='cpu'"
    if os.path.isdir(model):
        if not _has_safetensors(Path(model)):
            found = sorted(p.name for p in Path(model).iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
            raise ValueError(f"offload='disk' reads the weights lazily from safetensors shards, but {model} has no "
                             f"{SAFETENSORS_SINGLE} or {SAFETENSORS_INDEX} (found: {', '.join(found) or 'no weights'}); "
                             + hint)
        return
    if _hub_cached(model) is not None:
        return
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        raise ValueError(f"offload='disk': {model} has no safetensors weights in the hub cache and HF_HUB_OFFLINE "
                         "is set; download them first (huggingface-cli download MODEL) or use offload='cpu'")
    from huggingface_hub import list_repo_files

    files = list_repo_files(model)
    if not any(f.endswith(".safetensors") for f in files):
        raise ValueError(f"offload='disk' reads the weights lazily from safetensors shards, but the hub repo {model} "
                         "has none; " + hint)


def disk_source(model: str, cache_dir: str | None = None) -> Path:
    """The local folder of ``model``'s safetensors weights (converting a GGUF model once, or
    downloading a hub snapshot's safetensors and JSON files)."""
    from osscar.lm.sources.models import resolve_model

    check_disk_source(model, cache_dir)
    path = resolve_model(model, cache_dir)
    if os.path.isdir(path):
        return Path(path)
    cached = _hub_cached(path)
    if cached is not None:
        return cached
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(path, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"]))


class LazyCheckpoint:
    """The tensors of a safetensors folder by name, read on request (nothing is read up front).

    ``weight_map``: {tensor name: shard file}, from the index json (or the single file's keys).
    Names are looked up as given, then without / with the model's ``base_model_prefix`` (hub OPT
    checkpoints name ``decoder.layers.0...`` what the causal-LM model calls ``model.decoder...``).
    """

    def __init__(self, folder: str | os.PathLike, prefix: str = "model") -> None:
        from safetensors import safe_open

        self.folder, self.prefix = Path(folder), prefix
        index = self.folder / SAFETENSORS_INDEX
        if index.is_file():
            self.weight_map: dict[str, str] = dict(json.loads(index.read_text())["weight_map"])
        elif (self.folder / SAFETENSORS_SINGLE).is_file():
            with safe_open(str(self.folder / SAFETENSORS_SINGLE), framework="pt") as f:
                self.weight_map = {k: SAFETENSORS_SINGLE for k in f.keys()}
        else:
            raise ValueError(f"{self.folder} holds no {SAFETENSORS_SINGLE} or {SAFETENSORS_INDEX}")

    def name(self, name: str) -> str | None:
        """The checkpoint's name for the model's tensor ``name`` (None: absent)."""
        p = self.prefix + "."
        for cand in (name, name[len(p):] if name.startswith(p) else p + name):
            if cand in self.weight_map:
                return cand
        return None

    def read(self, names: list[str], dtype: torch.dtype | None = None) -> dict[str, Tensor]:
        """{model name: tensor on the host, in ``dtype`` (floating tensors)}; KeyError names the missing."""
        from safetensors import safe_open

        by_file: dict[str, list[tuple[str, str]]] = {}
        for n in names:
            c = self.name(n)
            if c is None:
                raise KeyError(f"{self.folder}: no tensor {n!r} in the checkpoint")
            by_file.setdefault(self.weight_map[c], []).append((n, c))
        out: dict[str, Tensor] = {}
        for file, pairs in by_file.items():
            with safe_open(str(self.folder / file), framework="pt") as f:  # mapped only while open
                for n, c in pairs:
                    t = f.get_tensor(c)
                    out[n] = t.to(dtype) if dtype is not None and t.is_floating_point() else t
        return out


def build_skeleton(folder: str | os.PathLike, dtype: torch.dtype) -> nn.Module:
    """The causal LM of ``folder``'s config with every parameter on the meta device (no weights
    allocated); buffers (rotary tables, embedding scales) are built on the host in ``dtype``, as
    ``from_pretrained(dtype=...)`` builds them. Eval mode, weights tied as the config says."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(folder))
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.tie_weights()  # init_empty_weights replaces each parameter, which unties them
    return model.eval()


# -- moving one module's tensors --------------------------------------------------------------------
def _slots(module: nn.Module, skip: str | None = None) -> dict[int, list[tuple[nn.Module, str, str]]]:
    """{id(parameter): [(owner, attribute, full name)]} of ``module``'s parameters (a tied one once,
    with all its slots), leaving out the submodule at path ``skip``."""
    out: dict[int, list[tuple[nn.Module, str, str]]] = {}
    for mname, mod in module.named_modules(remove_duplicate=False):
        if skip and (mname == skip or mname.startswith(skip + ".")):
            continue
        for leaf, p in mod._parameters.items():
            if p is not None:
                out.setdefault(id(p), []).append((mod, leaf, f"{mname}.{leaf}" if mname else leaf))
    return out


def _buffers(module: nn.Module, skip: str | None = None) -> Iterator[tuple[nn.Module, str]]:
    for mname, mod in module.named_modules():
        if skip and (mname == skip or mname.startswith(skip + ".")):
            continue
        for leaf, b in mod._buffers.items():
            if b is not None:
                yield mod, leaf


def _replace(slots: dict[int, list[tuple[nn.Module, str, str]]], make: Any) -> None:
    """Give every parameter group a new tensor ``make(first full name, old parameter)`` (ties kept)."""
    for group in slots.values():
        old = getattr(group[0][0], group[0][1])
        new = nn.Parameter(make([name for _, _, name in group], old), requires_grad=False)
        for mod, leaf, _ in group:
            mod._parameters[leaf] = new


def move(module: nn.Module, device: torch.device, skip: str | None = None) -> None:
    """Move ``module``'s parameters and buffers (outside ``skip``) to ``device``, keeping ties."""
    _replace(_slots(module, skip), lambda names, old: old.data.to(device))
    for mod, leaf in _buffers(module, skip):
        mod._buffers[leaf] = mod._buffers[leaf].to(device)


def materialize(module: nn.Module, ckpt: LazyCheckpoint, prefix: str, device: torch.device,
                dtype: torch.dtype, skip: str | None = None) -> None:
    """Read ``module``'s parameters (outside ``skip``) from ``ckpt`` onto ``device``; ``prefix``:
    the module's path in the model. A tied parameter is read under the first of its names found."""
    slots = _slots(module, skip)
    full = (lambda n: f"{prefix}.{n}") if prefix else (lambda n: n)
    wanted = {}
    for key, group in slots.items():
        names = [full(n) for _, _, n in group]
        hit = next((n for n in names if ckpt.name(n) is not None), None)
        if hit is None:
            raise KeyError(f"{ckpt.folder}: none of {names} is in the checkpoint")
        wanted[key] = hit
    tensors = ckpt.read(sorted(set(wanted.values())), dtype)

    def make(names: list[str], old: Tensor) -> Tensor:
        t = tensors[wanted[id(old)]]
        if tuple(t.shape) != tuple(old.shape):
            raise ValueError(f"{ckpt.folder}: {names[0]} has shape {tuple(t.shape)}, the model expects {tuple(old.shape)}")
        return t.to(device)

    _replace(slots, make)
    for mod, leaf in _buffers(module, skip):
        mod._buffers[leaf] = mod._buffers[leaf].to(device)


def to_meta(module: nn.Module, skip: str | None = None) -> None:
    """Drop ``module``'s parameter storage (outside ``skip``): meta tensors of the same shapes remain."""
    _replace(_slots(module, skip), lambda names, old: torch.empty(old.shape, dtype=old.dtype, device="meta"))
    return_freed_memory()


def return_freed_memory() -> None:
    """Hand freed heap memory back to the OS (glibc ``malloc_trim``; elsewhere nothing).

    A block's tensors of a few MiB come from glibc's heap (its mmap threshold rises to the largest
    freed mapping, up to 32 MiB), and freed heap pages stay resident: without this, a ``disk`` run's
    RSS grew by about one block per block (measured: 30–40 MiB per 40 MiB block on a 167-block
    model, 3.75 GiB peak for a 6.5 GiB model) although the live tensors stayed at 25 MiB."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        trim = getattr(libc, "malloc_trim", None)
    except OSError:
        trim = None
    if trim is not None:
        trim(0)


# -- block stores ------------------------------------------------------------------------------------
class BlockStore(Protocol):
    """Where blocks wait (module docstring). ``device``: where they compute; ``host``: where
    activations wait (None: where they were computed)."""

    device: torch.device
    host: torch.device | None

    def fetch_rest(self) -> None: ...
    def release_rest(self) -> None: ...
    def fetch(self, i: int) -> nn.Module: ...
    def release(self, i: int, layer: nn.Module, kept: dict[str, Tensor] | None = None) -> None: ...


class ResidentBlocks:
    """Offload ``none``: the whole model stays on its device."""

    host = None

    def __init__(self, model: nn.Module, device: torch.device, adapter: ModelAdapter | None = None) -> None:
        self.model, self.device = model, device
        self.adapter = adapter or get_adapter(model)  # it slices (DiskBlocks): it must hold the run's attention unit
        self.layers = self.adapter.layers(model)

    def fetch_rest(self) -> None:
        pass

    def release_rest(self) -> None:
        pass

    def fetch(self, i: int) -> nn.Module:
        return self.layers[i]

    def release(self, i: int, layer: nn.Module, kept: dict[str, Tensor] | None = None) -> None:
        pass


class HostBlocks(ResidentBlocks):
    """Offload ``cpu``: the model on the host; one block (or the rest) on ``device`` at a time."""

    host = torch.device("cpu")

    def __init__(self, model: nn.Module, device: torch.device, adapter: ModelAdapter | None = None) -> None:
        super().__init__(model, device, adapter)
        self.skip = self.adapter.layers_path

    def fetch_rest(self) -> None:
        move(self.model, self.device, skip=self.skip)

    def release_rest(self) -> None:
        move(self.model, self.host, skip=self.skip)

    def fetch(self, i: int) -> nn.Module:
        move(self.layers[i], self.device)
        return self.layers[i]

    def release(self, i: int, layer: nn.Module, kept: dict[str, Tensor] | None = None) -> None:
        move(layer, self.host)


class DiskBlocks(ResidentBlocks):
    """Offload ``disk``: ``model`` is a skeleton (:func:`build_skeleton`); tensors come from ``ckpt``.

    ``writer``: a :class:`~osscar.lm.offloading.shards.ShardWriter`; then :meth:`release` slices a pruned block
    to ``kept`` and writes it before dropping its tensors (its meta shapes stay sliced).
    """

    host = torch.device("cpu")

    def __init__(self, model: nn.Module, ckpt: LazyCheckpoint, device: torch.device, dtype: torch.dtype,
                 writer: Any = None, adapter: ModelAdapter | None = None) -> None:
        super().__init__(model, device, adapter)
        self.ckpt, self.dtype, self.writer = ckpt, dtype, writer
        self.skip = self.adapter.layers_path

    def fetch_rest(self) -> None:
        materialize(self.model, self.ckpt, "", self.device, self.dtype, skip=self.skip)

    def release_rest(self) -> None:
        to_meta(self.model, skip=self.skip)

    def fetch(self, i: int) -> nn.Module:
        materialize(self.layers[i], self.ckpt, f"{self.skip}.{i}", self.device, self.dtype)
        return self.layers[i]

    def release(self, i: int, layer: nn.Module, kept: dict[str, Tensor] | None = None) -> None:
        if self.writer is not None:
            from osscar.lm.slicing import slice_block

            slice_block(self.adapter, layer, kept or {})
            self.writer.write_block(i, f"{self.skip}.{i}", layer)
        to_meta(layer)
