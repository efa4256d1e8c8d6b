"""GGUF files as models: find one behind ``--model``, check it, and convert it once into a plain
fp32 transformers folder in the cache.

transformers reads a GGUF (``from_pretrained(dir, gguf_file=name)``, dequantising to fp32) but
refuses to ``save_pretrained`` the result, and the read takes seconds to minutes. So a GGUF is
converted **once** into ``CACHE/models/gguf-<sha256[:16]>`` and every later run loads that folder.
The cache is keyed by the file's content hash, so a renamed or copied file reuses its conversion.

* The sha256 is streamed in 1 MiB chunks; it is remembered per file (path, size, mtime) in
  ``CACHE/models/.sha256/`` so an unchanged big file is hashed once, not on every run.
* The folder is written in a temporary folder beside it and renamed into place
  (:func:`osscar.io.atomic_directory`); its ``osscar_provenance.json`` lists every file and its
  size, and an entry whose listing does not match (a folder cut short, a file deleted) is
  converted again, never loaded; a complete entry another process wrote meanwhile is kept.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from osscar.io import atomic_directory, atomic_write_json, sha256_file

PROVENANCE_FILE = "osscar_provenance.json"
GGUF_MAGIC = b"GGUF"
BIG_FILE_BYTES = 50 << 20  # hashing a file this big gets a message with its duration
Log = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _mb(n: int) -> str:
    return f"{n / 1e6:.0f} MB" if n >= 1e6 else f"{n / 1e6:.2f} MB"


def find_gguf(model: str) -> Path | None:
    """The GGUF file ``model`` names: a path ending in ``.gguf``, or a folder holding exactly one
    ``.gguf`` and no ``config.json``. None when ``model`` is not about a GGUF. ValueError (naming
    ``model=``) for a missing file, a file without the GGUF magic, or a folder with several."""
    p = Path(model).expanduser()
    if model.lower().endswith(".gguf"):
        if not p.is_file():
            raise ValueError(f"model={model!r}: no such GGUF file")
        return check_magic(p, model)
    if p.is_dir() and not (p / "config.json").is_file():
        found = sorted(f for f in p.iterdir() if f.is_file() and f.name.lower().endswith(".gguf"))
        if len(found) > 1:
            raise ValueError(f"model={model!r}: the folder holds {len(found)} GGUF files "
                             f"({', '.join(f.name for f in found)}); give the path of the one you mean")
        if found:
            return check_magic(found[0], model)
    return None


def check_magic(path: Path, model: str) -> Path:
    """``path`` if it starts with the GGUF magic bytes, else ValueError naming ``model=``."""
    with open(path, "rb") as f:
        head = f.read(4)
    if head != GGUF_MAGIC:
        raise ValueError(f"model={model!r}: {path} is not a GGUF file (it starts with {head!r}, not b'GGUF')")
    return path


def gguf_architecture(path: str | os.PathLike) -> str:
    """The transformers ``model_type`` a GGUF file holds (``general.architecture``; llama.cpp writes
    Mistral as ``llama`` with "mistral" in ``general.name``, which transformers maps to ``mistral``)."""
    from gguf import GGUFReader

    fields = GGUFReader(str(path)).fields

    def text(key: str) -> str:
        f = fields.get(key)
        return bytes(f.parts[f.data[0]]).decode("utf-8", "replace") if f is not None else ""

    arch = text("general.architecture")
    return "mistral" if arch == "llama" and "mistral" in text("general.name").lower() else arch


# GGUF architectures transformers loads as their text backbone (``load_gguf_checkpoint`` renames the
# config's ``model_type``); every other supported architecture keeps its name as the model_type
TEXT_BACKBONES = {"gemma3": "gemma3_text", "gemma4": "gemma4_text"}


def gguf_model_type(path: str | os.PathLike) -> str:
    """The config ``model_type`` transformers gives the GGUF file at ``path`` (its own reading of the
    header, tensors not loaded); ValueError from transformers for an architecture it cannot read."""
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its notes on a header alone (no vocab_size, ...) are not the user's concern
    try:
        return str(load_gguf_checkpoint(str(path), return_tensors=False)["config"]["model_type"])
    finally:
        hf_logging.set_verbosity(level)


def supported_architectures() -> list[str]:
    """GGUF architectures transformers can load **and** whose resulting ``model_type`` has an adapter here."""
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    from osscar.lm.adapters import available_adapters

    adapters = set(available_adapters())
    return sorted(a for a in GGUF_SUPPORTED_ARCHITECTURES if TEXT_BACKBONES.get(a, a) in adapters)


def check_architecture(path: Path, model: str) -> str:
    """The file's GGUF architecture, or ValueError naming ``model=`` and the supported ones.

    Accepted when transformers reads the header and an adapter exists for the ``model_type`` it
    gives (GGUF ``gemma3`` → ``gemma3_text``)."""
    from osscar.lm.adapters import available_adapters

    try:
        arch = gguf_architecture(path)
    except Exception as e:  # noqa: BLE001  (a truncated or malformed header)
        raise ValueError(f"model={model!r}: cannot read the GGUF header of {path}: the file is cut short "
                         f"or damaged ({type(e).__name__})") from e
    supported = ", ".join(supported_architectures())
    try:
        model_type = gguf_model_type(path)
    except Exception as e:  # noqa: BLE001  (transformers: "architecture ... is not supported yet", bad fields)
        raise ValueError(f"model={model!r}: GGUF architecture {arch!r} cannot be converted (transformers: "
                         f"{' '.join(str(e).split())[:160]}); supported: {supported}") from e
    if model_type not in available_adapters():
        raise ValueError(f"model={model!r}: GGUF architecture {arch!r} (model_type {model_type!r}) cannot be "
                         f"converted: no adapter; supported: {supported}")
    return arch


def file_sha256(path: Path, cache: Path, log: Log = _stderr) -> str:
    """sha256 of ``path``, remembered under ``cache/.sha256`` by (real path, size, mtime)."""
    real = path.resolve()
    st = real.stat()
    memo = cache / ".sha256" / (hashlib.sha256(str(real).encode()).hexdigest()[:24] + ".json")
    try:
        m = json.loads(memo.read_text())
        if m["path"] == str(real) and m["size"] == st.st_size and m["mtime_ns"] == st.st_mtime_ns:
            return str(m["sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    start = time.perf_counter()
    digest = sha256_file(real)
    if st.st_size >= BIG_FILE_BYTES:
        log(f"sha256 of {path} ({_mb(st.st_size)}): {time.perf_counter() - start:.1f} s")
    atomic_write_json(memo, {"path": str(real), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest})
    return digest


def entry_folder(sha256: str, cache: Path) -> Path:
    """Where the conversion of the file with this hash lives."""
    return cache / f"gguf-{sha256[:16]}"


def entry_problem(folder: Path, sha256: str) -> str | None:
    """None if ``folder`` is a complete conversion of the file with this hash, else what is wrong."""
    try:
        prov = json.loads((folder / PROVENANCE_FILE).read_text())
    except FileNotFoundError:
        return f"no {PROVENANCE_FILE}"
    except (OSError, ValueError) as e:
        return f"unreadable {PROVENANCE_FILE} ({type(e).__name__})"
    if not isinstance(prov, dict) or prov.get("source_sha256") != sha256:
        return "it was converted from another file"
    files = prov.get("files")
    if not isinstance(files, dict) or "config.json" not in files:
        return "its file list is missing"
    for name, size in files.items():
        f = folder / name
        if not f.is_file() or f.stat().st_size != size:
            return f"{name} is missing or has the wrong size"
    return None


def cached_conversion(path: Path, cache: Path, log: Log = _stderr) -> Path | None:
    """The complete conversion folder of ``path``, or None (nothing there yet, or a broken entry)."""
    sha = file_sha256(path, cache, log)
    folder = entry_folder(sha, cache)
    return folder if folder.is_dir() and entry_problem(folder, sha) is None else None


def convert_gguf(path: Path, cache: Path, label: str, extra: dict[str, Any] | None = None,
                 force: bool = False, log: Log = _stderr) -> Path:
    """Convert the GGUF file ``path`` into a fp32 transformers folder under ``cache`` once; return it.

    ``label``: what the user called the model (in messages and the provenance); ``extra``: more
    provenance keys. A complete entry is reused; a broken one is reported and converted again.
    """
    sha = file_sha256(path, cache, log)
    target = entry_folder(sha, cache)
    if target.is_dir() and not force:
        problem = entry_problem(target, sha)
        if problem is None:
            return target
        log(f"cache entry {target} is incomplete ({problem}); converting again")
    arch = check_architecture(path, label)
    size = path.stat().st_size
    log(f"converting {path} ({_mb(size)}) to a transformers folder in {target} …")
    start = time.perf_counter()
    try:
        model, tok, types = _load_gguf(path)
    except Exception as e:  # noqa: BLE001  (transformers' reasons: unsupported tensor type, bad layout, ...)
        raise ValueError(f"model={label!r}: transformers could not read {path} ({type(e).__name__}: "
                         f"{' '.join(str(e).split())[:300]})") from e
    # replaces a broken folder (or one forced), but not one another process completed meanwhile
    with atomic_directory(target, keep=None if force else lambda t: entry_problem(t, sha) is None) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        prov = {
            "model": label, "source": str(path), "source_sha256": sha, "source_bytes": size,
            "source_format": "gguf", "gguf_architecture": arch, "gguf_tensor_types": types, **(extra or {}),
            "weights_sha256": {p.name: sha256_file(p) for p in sorted(tmp.glob("*.safetensors"))},
            "converted_seconds": round(time.perf_counter() - start, 1),
            "files": {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()},
        }
        (tmp / PROVENANCE_FILE).write_text(json.dumps(prov, indent=2))
    log(f"converting {path.name}: done in {time.perf_counter() - start:.1f} s")
    return target


def _load_gguf(path: Path) -> tuple[Any, Any, dict[str, int]]:
    """(fp32 model that ``save_pretrained`` accepts, tokenizer, {ggml tensor type: count})."""
    import torch
    from gguf import GGUFReader
    from transformers import AutoModelForCausalLM, AutoTokenizer

    types: dict[str, int] = {}
    for t in GGUFReader(str(path)).tensors:
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):  # save_pretrained refuses a GGUF-loaded model
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = fresh.load_state_dict(loaded.state_dict(), strict=False)
    tied = getattr(config, "tie_word_embeddings", False)
    missing = [k for k in missing if not (tied and k == "lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(f"state dict mismatch: missing {missing}, unexpected {unexpected}")
    if tied:
        fresh.tie_weights()
    return fresh.eval(), tok, dict(sorted(types.items()))
