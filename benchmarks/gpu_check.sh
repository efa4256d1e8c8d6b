#!/usr/bin/env bash
# One prepared GPU check, for a machine with CUDA and PyTorch but no network (e.g. the lent device):
#   1. the `gpu`-marked solver tests: every method on CUDA gives the CPU's kept groups and weights;
#   2. block offloading (--offload none/cpu/disk) on a small random Llama: device peak <= the memory plan;
#   3. the solver benchmark with the problems on the GPU (float64), beside one p×p inverse there (longest, so last).
# Usage (repository root): OUT=gpu_out benchmarks/gpu_check.sh   — logs and the benchmark JSON go to $OUT;
# PARTS="offload" (any of: tests offload bench) reruns only those parts.
# The LM/vision `gpu` tests also need the offline corpus and Fashion-MNIST: run them with `pytest -m gpu`
# where those are installed (`.ci/run` shows how).
set -uo pipefail  # every part runs even when an earlier one fails; each part's log says how it ended
OUT=${OUT:-gpu_out}
PARTS=" ${PARTS:-tests offload bench} "
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-deps --no-build-isolation -e . >"$OUT/install.log" 2>&1 \
  || { echo "editable install failed (see $OUT/install.log)"; exit 1; }
python3 - <<'EOF' 2>&1 | tee "$OUT/env.txt"
import torch
print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
EOF
failed=""
if [[ $PARTS == *" tests "* ]]; then
  python3 -m pytest tests/test_device.py -m gpu -o addopts= -p no:cacheprovider -q 2>&1 | tee "$OUT/gpu_tests.log" \
    || failed+=" tests"
fi
# 2. block offloading on CUDA. A tiny random Llama
#    (safetensors, byte-level tokenizer, a synthetic text corpus) pruned with --offload none, cpu and disk;
#    each run's measured device peak per phase (torch.cuda.max_memory_allocated) must be <= the memory plan's
#    device peak for that phase, and cpu/disk must keep the groups that none keeps.
if [[ $PARTS == *" offload "* ]]; then
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
           "--name", "run", "--no-progress", "--dense"]
    rc = subprocess.run(cmd).returncode
    if rc:
        bad.append(f"{mode}: exit {rc}")
        continue
    r = json.loads((out / mode / "run.json").read_text())
    plan = {ph: n / 2**20 for ph, n in r["memory_plan"]["peak_bytes"]["device"].items()}
    # each measured phase against the plan's phase it spans (the dense evaluation runs in the first one)
    spans = {"load_and_dense_eval": max(plan["load"], plan["evaluate"]), "prune": plan["prune"],
             "slice_and_evaluate": plan["evaluate"]}
    measured = {ph: v["device_peak_mb"] for ph, v in r["memory"]["phases"].items()}
    runs[mode] = {"plan_device_mb": plan, "measured_device_mb": measured, "ppl": r["pruned"][str(out / "corpus.txt")]["ppl"],
                  "kept": [L["kept"] for L in r["layers"]]}
    for ph, limit in spans.items():
        got = measured.get(ph)
        print(f"offload {mode} {ph}: device peak {got} MiB measured, {limit:.1f} MiB planned")
        if got is None or got > limit:
            bad.append(f"{mode} {ph}: measured device peak {got} MiB > plan {limit:.1f} MiB")
    print(f"offload {mode}: ppl {runs[mode]['ppl']:.4f}")
for mode in ("cpu", "disk"):
    if mode in runs and "none" in runs and runs[mode]["kept"] != runs["none"]["kept"]:
        bad.append(f"{mode}: kept groups differ from offload none")
(out / "summary.json").write_text(json.dumps({"runs": runs, "failures": bad}, indent=2))
print("offload check:", "OK" if not bad else "FAILED: " + "; ".join(bad))
sys.exit(1 if bad else 0)
EOF2
[[ ${PIPESTATUS[0]} == 0 ]] || failed+=" offload"
fi
# 3. the solver benchmark last (the longest part; its JSON is written when it ends)
if [[ $PARTS == *" bench "* ]]; then
  python3 -m pytest benchmarks -o addopts= -p no:cacheprovider --benchmark-only -s --solver-device cuda \
    --benchmark-json "$OUT/bench_cuda.json" 2>&1 | tee "$OUT/bench_cuda.log" || failed+=" bench"
fi
echo "gpu_check: ${failed:+FAILED:}${failed:-all parts passed}"
[[ -z $failed ]]
