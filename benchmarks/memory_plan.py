"""The README's memory-plan table: OPT-1.3B…30B and Llama-3-8B/70B, from their configs alone (no weights).

    python -m benchmarks.memory_plan [--n-samples 128] [--seqlen 2048] [--dtype float16] [--method osscar]
                                     [--offload none|cpu|disk]

Builds each model's transformers config with its published sizes (offline: no hub access), plans
a CUDA run with :func:`osscar.lm.plan.plan_for_run` and checks it against 32 GB and 80 GB devices
with :func:`osscar.lm.plan.fit_error` (the same check a run does before loading). Prints Markdown.
"""

from __future__ import annotations

import argparse
from types import SimpleNamespace
from typing import Any

from osscar.options import MODEL_DTYPES, OFFLOAD_MODES

# published sizes (the models' config.json on the hub)
OPT = {"facebook/opt-1.3b": (2048, 8192, 24, 32), "facebook/opt-2.7b": (2560, 10240, 32, 32),
       "facebook/opt-6.7b": (4096, 16384, 32, 32), "facebook/opt-13b": (5120, 20480, 40, 40),
       "facebook/opt-30b": (7168, 28672, 48, 56)}
LLAMA3 = {"meta-llama/Meta-Llama-3-8B": (4096, 14336, 32, 32, 8), "meta-llama/Meta-Llama-3-70B": (8192, 28672, 80, 64, 8)}
DEVICES = (("32 GB", 32 * 10**9), ("80 GB", 80 * 10**9))


def configs() -> dict[str, Any]:
    """{hub id: transformers config} with the real sizes."""
    from transformers import LlamaConfig, OPTConfig

    out: dict[str, Any] = {}
    for name, (d, ffn, layers, heads) in OPT.items():
        out[name] = OPTConfig(hidden_size=d, ffn_dim=ffn, num_hidden_layers=layers, num_attention_heads=heads,
                              vocab_size=50272, max_position_embeddings=2048, word_embed_proj_dim=d)
    for name, (d, ffn, layers, heads, kv) in LLAMA3.items():
        out[name] = LlamaConfig(hidden_size=d, intermediate_size=ffn, num_hidden_layers=layers,
                                num_attention_heads=heads, num_key_value_heads=kv, vocab_size=128256,
                                max_position_embeddings=8192, tie_word_embeddings=False, rope_theta=500000.0)
    return out


def run_config(model: str, n_samples: int, seqlen: int, dtype: str, method: str,
               offload: str = "none") -> SimpleNamespace:
    """The fields of an LMRunConfig the plan reads (an LMRunConfig would read the hub config)."""
    return SimpleNamespace(model=model, n_samples=n_samples, seqlen=seqlen, dtype=dtype, method=method, device="cuda",
                           offload=offload, eval_seqlen=None, latency_points=(), fractions=lambda: (0.5, 0.5))


def table(n_samples: int, seqlen: int, dtype: str, method: str, offload: str = "none") -> str:
    from osscar.lm.plan import fit_error, fmt_bytes, model_shape, plan_for_run

    head = ["model", "params", "weights", "activations in+out" + (" (host)" if offload != "none" else ""),
            "largest solve (f64)", "prune peak", "evaluate peak", "load (host)"] + [f"fits {d}" for d, _ in DEVICES]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, cfg in configs().items():
        shape = model_shape(cfg)
        rc = run_config(name, n_samples, seqlen, dtype, method, offload)
        plan = plan_for_run(rc, shape)
        by = {i.name: i for i in plan.items if i.where == "device" and i.phase == "prune"}
        solve = sum(i.bytes for n, i in by.items() if n.startswith("solve "))
        p = next(i.shape for n, i in by.items() if n.endswith("working set")).split()[0]
        acts = sum(i.bytes for i in plan.items if i.phase == "prune" and i.name in ("activations in", "activations out"))
        fits = []
        for label, limit in DEVICES:
            err = fit_error(rc, shape, limit, label)
            fits.append("yes" if err is None else short(err))
        rows.append("| " + " | ".join([
            name.split("/")[-1], f"{shape.params / 1e9:.2f}B", fmt_bytes(shape.params * plan_bytes(dtype)),
            fmt_bytes(acts), f"{fmt_bytes(solve)} ({p})",
            fmt_bytes(plan.peak("device", "prune")), fmt_bytes(plan.peak("device", "evaluate")),
            fmt_bytes(plan.peak("host", "load")), *fits]) + " |")
    return "\n".join(rows)


def short(err: str) -> str:
    """The fix of a :func:`osscar.lm.plan.fit_error` message, for a table cell."""
    if "it fits with " in err:
        return "with " + err.split("it fits with ", 1)[1].replace("n_samples=", "--n-samples ")
    return "no (≥ " + err.split("the least is ", 1)[1].split(",", 1)[0] + ")"


def plan_bytes(dtype: str) -> int:
    from osscar.lm.plan import DTYPE_BYTES

    return DTYPE_BYTES[dtype]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.memory_plan", description=__doc__.splitlines()[0])
    p.add_argument("--n-samples", type=int, default=128, help="calibration segments")
    p.add_argument("--seqlen", type=int, default=2048, help="tokens per segment")
    p.add_argument("--dtype", default="float16", choices=MODEL_DTYPES, help="model weights/activations")
    p.add_argument("--method", default="osscar", help="pruning method (its solver working set)")
    p.add_argument("--offload", default="none", choices=OFFLOAD_MODES, help="where the blocks wait (default: none)")
    a = p.parse_args(argv)
    from osscar.methods import available_methods

    if a.method not in available_methods():
        p.error(f"--method: unknown method {a.method!r}; allowed: {', '.join(available_methods())}")
    print(f"Memory plan, CUDA device, offload {a.offload}, {a.n_samples}×{a.seqlen} calibration, {a.dtype}, {a.method} "
          f"(`python -m benchmarks.memory_plan --n-samples {a.n_samples} --seqlen {a.seqlen} --dtype {a.dtype} "
          f"--method {a.method} --offload {a.offload}`):\n")
    print(table(a.n_samples, a.seqlen, a.dtype, a.method, a.offload))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
