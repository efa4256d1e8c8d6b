"""Memory benchmark of block offloading: peak host RSS of a whole LM pruning run, ``disk`` vs ``none``.

``python -m benchmarks.offload_memory [--gib 6.5] [--families llama,opt] [--modes disk,none]``
(``nox -s bench_memory``) builds, per family, a random-init model of at least ``--gib`` GiB on disk
as sharded float32 safetensors (one shard per block, written a block at a time, so building it
needs no more memory than one block), with a byte-level BPE tokenizer of 8192 tokens trained on a
synthetic corpus of random words that is also the calibration and evaluation text, then runs
``python -m osscar lm`` on it end to end (calibration, pruning, slicing, saving the model,
perplexity) once per offload mode, each in a fresh subprocess, and measures that subprocess's peak
resident set size: ``ru_maxrss`` from ``os.wait4`` (the kernel's high-water mark) and a 50 ms
``/proc/PID/status`` sampling beside it. Writes ``results/offload_memory.json``: model bytes,
parameters, the config, per mode the peak RSS, its ratio to the model's bytes, wall time, the
run's own memory plan and perplexity, and the versions. The temporary models are deleted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from osscar.provenance import git_state, versions

GiB = 2 ** 30
FAMILIES = ("llama", "opt")
MODES = ("disk", "none")


def family_config(family: str, vocab: int, n_layers: int) -> Any:
    """Blocks of 10.5M parameters, many of them: one block (and its float64 solve) ≪ the model."""
    import transformers as tf

    if family == "llama":
        return tf.LlamaConfig(vocab_size=vocab, hidden_size=1024, intermediate_size=2048, num_attention_heads=16,
                              num_key_value_heads=16, num_hidden_layers=n_layers, max_position_embeddings=2048,
                              tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)
    return tf.OPTConfig(vocab_size=vocab, hidden_size=1024, ffn_dim=2048, num_attention_heads=16,
                        num_hidden_layers=n_layers, max_position_embeddings=2048, word_embed_proj_dim=1024,
                        bos_token_id=1, eos_token_id=2, pad_token_id=0)


def layers_for(family: str, vocab: int, target_bytes: int) -> int:
    """The fewest blocks that make the float32 model at least ``target_bytes``."""
    from osscar.lm.plan import model_shape

    shape = model_shape(family_config(family, vocab, 1))
    return max(1, -(-(target_bytes // 4 - shape.other_params) // shape.block_params))


def write_corpus_and_tokenizer(work: Path, vocab: int = 8192, seed: int = 0) -> tuple[Path, Any]:
    """A synthetic text corpus (``corpus.txt``, 400 documents of random words, blank-line separated: a
    user corpus, :mod:`osscar.lm.text.data`) and a byte-level BPE tokenizer of ``vocab`` tokens trained on it."""
    import random

    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    rng = random.Random(seed)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))) for _ in range(5000)]
    docs = [" ".join(rng.choice(words) for _ in range(300)) + "." for _ in range(400)]
    corpus = work / "corpus.txt"
    corpus.write_text("\n\n".join(docs))
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(docs, vocab_size=vocab, min_frequency=1, special_tokens=["<|endoftext|>"])
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                  pad_token="<|endoftext|>")
    return corpus, tok


def write_random_model(folder: Path, family: str, target_bytes: int, tok: Any, seed: int = 0) -> dict[str, Any]:
    """A random-init model of ``family`` (≥ ``target_bytes`` float32) as one safetensors shard per
    block plus one for the rest, with config, index and tokenizer. Returns its sizes."""
    import torch
    from transformers import AutoModelForCausalLM

    from osscar.lm.adapters import get_adapter
    from osscar.lm.offloading.shards import ShardWriter

    n_layers = layers_for(family, len(tok), target_bytes)
    config = family_config(family, len(tok), n_layers)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    adapter = get_adapter(skeleton)
    writer = ShardWriter(folder, n_layers)
    gen = torch.Generator().manual_seed(seed)

    for i, layer in enumerate(adapter.layers(skeleton)):
        block = fill_dict(layer.state_dict(), gen)
        writer.write_shard(i, {f"{adapter.layers_path}.{i}.{k}": v for k, v in block.items()})
        del block
    rest = {k: v for k, v in skeleton.state_dict().items() if not k.startswith(adapter.layers_path + ".")}
    if config.tie_word_embeddings:
        rest = {k: v for k, v in rest.items() if k != "lm_head.weight"}
    writer.write_shard(n_layers, fill_dict(rest, gen))
    writer.finish(config, {}, tok)
    (folder / "osscar_pruned.json").unlink()  # a dense model, not a pruned one
    files = sorted(folder.glob("*.safetensors"))
    return {"family": family, "n_layers": n_layers, "params": sum(p.numel() for p in skeleton.parameters()),
            "bytes_on_disk": sum(f.stat().st_size for f in files), "shards": len(files),
            "config": {k: v for k, v in config.to_dict().items() if isinstance(v, (int, float, str, bool))}}


def fill_dict(shapes: dict[str, Any], gen: Any) -> dict[str, Any]:
    import torch

    return {k: (torch.ones(t.shape) if "norm" in k and k.endswith("weight") else
                torch.zeros(t.shape) if k.endswith("bias") else torch.randn(t.shape, generator=gen) * 0.02)
            for k, t in shapes.items()}


def _sample_rss(pid: int, peak: list[int], stop: threading.Event) -> None:
    while not stop.wait(0.05):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    peak[0] = max(peak[0], int(line.split()[1]) * 1024)
        except OSError:
            return


def run_mode(model: Path, mode: str, work: Path, threads: int, corpus: Path) -> dict[str, Any]:
    """One end-to-end ``osscar lm`` run in a fresh subprocess; its peak RSS and wall time."""
    out = work / f"out-{mode}"
    cmd = [sys.executable, "-m", "osscar", "lm", "--model", str(model), "--method", "mp", "--n-samples", "2",
           "--seqlen", "64", "--heldout-samples", "0", "--calib-corpus", str(corpus),
           "--eval-corpus", str(corpus), "--eval-windows", "2", "--eval-seqlen", "64",
           "--offload", mode, "--threads", str(threads), "--output-dir", str(out), "--name", "run", "--save-model",
           "--no-progress"]
    log = work / f"log-{mode}.txt"
    t = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
        peak, stop = [0], threading.Event()
        sampler = threading.Thread(target=_sample_rss, args=(proc.pid, peak, stop), daemon=True)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        stop.set()
        sampler.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t
    result: dict[str, Any] = {"mode": mode, "returncode": proc.returncode, "wall_s": wall,
                              "peak_rss_bytes": int(usage.ru_maxrss) * 1024, "sampled_peak_rss_bytes": peak[0],
                              "command": " ".join(cmd[1:]), "log_tail": log.read_text()[-2000:]}
    metrics = out / "run.json"
    if metrics.is_file():
        m = json.loads(metrics.read_text())
        ppl = next(iter(m["pruned"].values()))
        result.update(ppl=ppl["ppl"], window_nll=ppl["window_nll"],
                      plan_peak_bytes=m["memory_plan"]["peak_bytes"], prune_s=m["timings"]["prune_total_s"],
                      params_pruned=m["size"]["params_pruned"])
        saved = out / "run.model"
        result["saved_bytes"] = sum(f.stat().st_size for f in saved.glob("*.safetensors")) if saved.is_dir() else None
    shutil.rmtree(out, ignore_errors=True)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.offload_memory", description=__doc__.splitlines()[0])
    p.add_argument("--gib", type=float, default=6.5, help="least size of each model on disk (GiB, float32)")
    p.add_argument("--families", default=",".join(FAMILIES), help=f"comma-separated, of {', '.join(FAMILIES)}")
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated offload modes, each one run")
    p.add_argument("--threads", type=int, default=2, help="torch threads of each run")
    p.add_argument("--workdir", default=None, help="where the temporary models go (default: the system temp)")
    p.add_argument("--out", default="results/offload_memory.json", help="the results JSON")
    a = p.parse_args(argv)
    families = [f for f in a.families.split(",") if f]
    bad = [f for f in families if f not in FAMILIES]
    if bad:
        p.error(f"--families: unknown {bad}; allowed: {', '.join(FAMILIES)}")
    report: dict[str, Any] = {"what": __doc__.split("\n\n")[0], "limit_ratio": 0.25, "models": [],
                              "versions": {**versions(("torch", "transformers", "safetensors", "accelerate")),
                                           "python": platform.python_version(), "platform": platform.platform(),
                                           "cpus": str(os.cpu_count()), "git_commit": git_state()["commit"] or "unknown"},
                              "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    for family in families:
        work = Path(tempfile.mkdtemp(prefix=f"osscar-bench-{family}-", dir=a.workdir))
        try:
            t = time.perf_counter()
            corpus, tok = write_corpus_and_tokenizer(work)
            info = write_random_model(work / "model", family, int(a.gib * GiB), tok)
            info["build_s"] = time.perf_counter() - t
            print(f"{family}: {info['params'] / 1e9:.2f}B params, {info['bytes_on_disk'] / GiB:.2f} GiB in "
                  f"{info['shards']} shards ({info['build_s']:.0f} s)", flush=True)
            info["runs"] = {}
            for mode in [m for m in a.modes.split(",") if m]:
                r = run_mode(work / "model", mode, work, a.threads, corpus)
                r["ratio_to_model_bytes"] = r["peak_rss_bytes"] / info["bytes_on_disk"]
                info["runs"][mode] = r
                print(f"  offload {mode}: peak RSS {r['peak_rss_bytes'] / GiB:.2f} GiB = "
                      f"{r['ratio_to_model_bytes']:.3f} × model, {r['wall_s']:.0f} s, rc {r['returncode']}", flush=True)
            runs = info["runs"]
            if "disk" in runs and "none" in runs and "window_nll" in runs["disk"] and "window_nll" in runs["none"]:
                info["disk_equals_none_perplexity"] = runs["disk"]["window_nll"] == runs["none"]["window_nll"]
            if "disk" in runs:
                info["disk_within_limit"] = runs["disk"]["ratio_to_model_bytes"] <= report["limit_ratio"]
            report["models"].append(info)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    report["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {a.out}")
    failed = [m["family"] for m in report["models"] if any(r["returncode"] != 0 for r in m["runs"].values())]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
