#!/usr/bin/env bash
# One prepared GPU check, for a machine with CUDA and PyTorch but no network (e.g. the lent device):
#   1. the `gpu`-marked solver tests: every method on CUDA gives the CPU's kept groups and weights;
#   2. the solver benchmark with the problems on the GPU (float64), beside one p×p inverse there;
#   3. block offloading (--offload none/cpu/disk) on a small random Llama: device peak <= the memory plan
#      (UNTESTED: no GPU was available when it was written).
# Usage (repository root): OUT=gpu_out benchmarks/gpu_check.sh   — logs and the benchmark JSON go to $OUT.
# The LM/vision `gpu` tests also need the offline corpus and Fashion-MNIST: run them with `pytest -m gpu`
# where those are installed (`.ci/run` shows how).
set -euo pipefail
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-deps --no-build-isolation -e . >"$OUT/install.log" 2>&1 \
  || { echo "editable install failed (see $OUT/install.log)"; exit 1; }
python3 - <<'EOF' 2>&1 | tee "$OUT/env.txt"
import torch
print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
EOF
python3 -m pytest tests/test_device.py -m gpu -o addopts= -p no:cacheprovider -q 2>&1 | tee "$OUT/gpu_tests.log"
python3 -m pytest benchmarks -o addopts= -p no:cacheprovider --benchmark-only -s --solver-device cuda \
  --benchmark-json "$OUT/bench_cuda.json" 2>&1 | tee "$OUT/bench_cuda.log"
# 3. block offloading on CUDA (UNTESTED HERE: written on a machine without a GPU). A tiny random Llama
#    (safetensors, byte-level tokenizer, a synthetic text corpus) pruned with --offload none, cpu and disk;
#    each run's measured device peak (torch.cuda.max_memory_allocated) must be <= its memory plan's device
#    peak, and cpu/disk must keep the groups that none keeps.
OUT="$OUT" python3 - <<'EOF2' 2>&1 | tee "$OUT/offload_cuda.log"
import json, os, random, subprocess, sys
from pathlib import Path
import torch
from tokenizers import ByteLevelBPETokenizer
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast
out = Path(os.environ.get("OUT", "gpu_out")) / "offload"
out.mkdir(parents=True, exist_ok=True)
rng = random.Random(0)
words = ["".join(rng.choice("abcdefghij") for _ in range(rng.randint(2, 7))) for _ in range(2000)]
docs = [" ".join(rng.choice(words) for _ in range(400)) + "." for _ in range(200)]
(out / "corpus.txt").write_text("\n\n".join(docs))
bpe = ByteLevelBPETokenizer()
bpe.train_from_iterator(docs, vocab_size=4096, min_frequency=1, special_tokens=["<|endoftext|>"])
tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                              pad_token="<|endoftext|>")
cfg = LlamaConfig(vocab_size=4096, hidden_size=512, intermediate_size=1024, num_attention_heads=8, num_key_value_heads=4,
                  num_hidden_layers=8, max_position_embeddings=512)
torch.manual_seed(0)
AutoModelForCausalLM.from_config(cfg).save_pretrained(out / "model")
tok.save_pretrained(out / "model")
runs, bad = {}, []
for mode in ("none", "cpu", "disk"):
    cmd = [sys.executable, "-m", "osscar", "lm", "--model", str(out / "model"), "--device", "cuda", "--method", "osscar",
           "--n-samples", "16", "--seqlen", "128", "--calib-corpus", str(out / "corpus.txt"), "--eval-corpus",
           str(out / "corpus.txt"), "--eval-windows", "4", "--offload", mode, "--output-dir", str(out / mode),
           "--name", "run", "--no-progress"]
    rc = subprocess.run(cmd).returncode
    if rc:
        bad.append(f"{mode}: exit {rc}")
        continue
    r = json.loads((out / mode / "run.json").read_text())
    plan_mb = max(r["memory_plan"]["peak_bytes"]["device"].values()) / 2**20
    measured = r["memory"]["peak_accelerator_mb"]
    runs[mode] = {"plan_device_peak_mb": plan_mb, "measured_device_peak_mb": measured,
                  "ppl": r["pruned"][str(out / "corpus.txt")]["ppl"], "kept": [L["kept"] for L in r["layers"]]}
    print(f"offload {mode}: device peak {measured:.1f} MiB measured, {plan_mb:.1f} MiB planned, ppl {runs[mode]['ppl']:.4f}")
    if measured is None or measured > plan_mb:
        bad.append(f"{mode}: measured device peak {measured} MiB > plan {plan_mb:.1f} MiB")
for mode in ("cpu", "disk"):
    if mode in runs and "none" in runs and runs[mode]["kept"] != runs["none"]["kept"]:
        bad.append(f"{mode}: kept groups differ from offload none")
(out / "summary.json").write_text(json.dumps({"runs": runs, "failures": bad}, indent=2))
print("offload check:", "OK" if not bad else "FAILED: " + "; ".join(bad))
sys.exit(1 if bad else 0)
EOF2
