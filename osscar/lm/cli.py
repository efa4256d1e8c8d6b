"""``python -m osscar lm``: prune a causal LM with one method, evaluate it, write metrics JSON."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any

from osscar.lm.run_state import RunEvents, Widths
from osscar.options import (ALLOCATIONS, ATTENTION_UNITS, CALIBRATION_INPUTS, CORPUS_NAMES, EMBEDDED_LM_NAMES, MODEL_DTYPES,
                            OFFLOAD_MODES, ZERO_SHOT_TASKS, HelpFormatter, as_flags, parser_flags)

# the model_types osscar.lm.adapters registers (tests/lm/test_families.py checks the two agree)
LM_FAMILIES = ("opt, llama, mistral, qwen2, qwen3, gemma, gemma2, gemma3_text (Gemma 3 text-only), phi3, "
               "olmo2 (MLP only: --head-fraction 0)")

# LMRunConfig fields whose flag is not the field's name
FIELD_FLAGS = {"eval_corpora": "--eval-corpus", "zero_shot_tasks": "--tasks", "zero_shot_limit": "--limit",
               "evaluate_dense": "--dense", "latency_points": "--latency", "method_params": "--method-param",
               "attn_params": "--attn-param", "mlp_params": "--mlp-param", "calib_corpus": "--calib-corpus"}


def _kv(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    k, v = text.split("=", 1)
    try:
        val = json.loads(v)
    except json.JSONDecodeError:
        val = v
    return k, val


def _point(text: str) -> tuple[int, int]:
    try:
        b, s = text.lower().split("x")
        return int(b), int(s)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected BATCHxSEQLEN like 1x512, got {text!r}") from e


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="osscar lm",
        description="Prune a Hugging Face causal LM layer-wise with OSSCAR or a baseline, slice it physically, "
                    "and evaluate perplexity / zero-shot accuracy / latency. Architectures (config model_type): "
                    f"{LM_FAMILIES}.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--model", default="smollm2-135m",
                   help=f"embedded model ({', '.join(EMBEDDED_LM_NAMES)}); a GGUF file, or a folder holding one .gguf "
                        "(Gemma2/Llama/Mistral/Phi3/Qwen2/Qwen3; converted to fp32 once, cached); a "
                        "transformers folder; or a hub id (facebook/opt-1.3b)")
    p.add_argument("--method", default="osscar", help="registered pruning method (osscar, ziplm, mp, mp+, thinet, lasso, ...)")
    p.add_argument("--t-hat", type=int, default=None, help="OSSCAR t̂: groups changed per local-search iteration (both consumers; None: method default)")
    p.add_argument("--p-hat", type=int, default=None, help="OSSCAR p̂: groups removed per Stage-A iteration (both consumers; None: method default)")
    p.add_argument("--method-param", type=_kv, action="append", default=[], metavar="KEY=VALUE",
                   help="extra method parameter for both consumers (JSON value), repeatable")
    p.add_argument("--attn-param", type=_kv, action="append", default=[], metavar="KEY=VALUE",
                   help="method parameter for the attention consumer only, repeatable")
    p.add_argument("--mlp-param", type=_kv, action="append", default=[], metavar="KEY=VALUE",
                   help="method parameter for the MLP consumer only, repeatable")
    p.add_argument("--head-fraction", type=float, default=None,
                   help="fraction of attention heads removed per block (grouped-query models: query heads, the same number per KV group; with --attention-unit kv-group: whole KV groups); None with no --speedup: 0.5")
    p.add_argument("--neuron-fraction", type=float, default=None,
                   help="fraction of MLP neurons removed per block; None with no --speedup: 0.5")
    p.add_argument("--speedup", type=float, default=None,
                   help="target speedup (>1) of the decoder blocks instead of the fractions: by block FLOPs with "
                        "--allocation uniform, by predicted (measured-table) block latency with --allocation runtime; "
                        "embeddings and the LM head are not pruned and not counted")
    p.add_argument("--allocation", default="uniform", choices=ALLOCATIONS,
                   help="per-block widths: 'uniform' removes the same fractions in every block; 'runtime' "
                        "(ZipLM-style, any method, needs --speedup) measures a per-layer latency table on this "
                        "device, gets every consumer's loss curve from one gradual-removal pass on the dense "
                        "model, and picks per-block widths by knapsack so the predicted decoder-block latency is "
                        "dense/SPEEDUP; the model is then pruned sequentially with those widths")
    p.add_argument("--allocation-point", type=_point, default=None, metavar="BxS",
                   help="prefill shape BATCHxSEQLEN of the latency table for --allocation runtime (default: 1x--seqlen)")
    p.add_argument("--allocation-mlp-levels", type=int, default=16,
                   help="MLP widths timed and offered to the runtime allocator (evenly spaced)")
    p.add_argument("--allocation-min-keep", type=float, default=0.0,
                   help="--allocation runtime: no layer keeps fewer than this fraction of its groups/neurons")
    p.add_argument("--calib-corpus", default="wiki-gensim", metavar="NAME|PATH",
                   help=f"calibration corpus ({', '.join(CORPUS_NAMES)}): wiki-gensim (offline Wikipedia); "
                        "wikitext2, ptb, c4 (C4 validation shard 0, as the OSSCAR authors; at --seed 0 and --eval-seqlen = --seqlen its "
                        "segments are the first C4 perplexity segments), c4-train (C4 train shard 0, as GPTQ) - these four through `datasets` - or "
                        "your own text: a .txt file (documents separated by blank lines), a folder of .txt files "
                        "or a .jsonl file with a 'text' field (every 4th document is held out for evaluation). "
                        "Segments are cut as GPTQ's loaders do (README: LM evaluation protocol)")
    p.add_argument("--n-samples", type=int, default=32, help="calibration segments")
    p.add_argument("--seqlen", type=int, default=256, help="tokens per calibration segment")
    p.add_argument("--heldout-samples", type=int, default=4,
                   help="held-out windows of the calibration text (never solved on) for each layer's held-out error; 0: none")
    p.add_argument("--heldout-seqlen", type=int, default=None, help="tokens per held-out window (None: --seqlen)")
    p.add_argument("--damping", type=float, default=0.01, help="λ: H + λ·mean(diag H)·I")
    p.add_argument("--eval-corpus", action="append", default=None, metavar="NAME|PATH",
                   help="perplexity corpus, repeatable, as --calib-corpus (wikitext2: test set, ptb: "
                        "validation set, c4 and c4-train: 256 segments of C4 validation drawn with seed 0; "
                        "default: wiki-gensim held-out articles)")
    p.add_argument("--eval-seqlen", type=int, default=None, help="perplexity window length (None: --seqlen)")
    p.add_argument("--eval-windows", type=int, default=None,
                   help="cap on perplexity windows per corpus, the first ones (default: all: the whole test text "
                        "in non-overlapping --eval-seqlen windows, C4's 256 segments; 0: all)")
    p.add_argument("--tasks", default="", help=f"comma-separated zero-shot tasks ({','.join(ZERO_SHOT_TASKS)}); empty: none")
    p.add_argument("--limit", type=int, default=200, help="examples per zero-shot task (0: all)")
    p.add_argument("--latency", type=_point, action="append", default=None, metavar="BxS",
                   help="prefill latency point BATCHxSEQLEN timed dense vs sliced, repeatable (default: none)")
    p.add_argument("--latency-repeats", type=int, default=5, help="timed repeats per latency point (after 2 warm-ups)")
    p.add_argument("--dense", action="store_true", help="also evaluate the dense model")
    p.add_argument("--layers", default="", help="comma-separated block indices to prune (empty: all)")
    p.add_argument("--seed", type=int, default=0, help="seed for calibration windows (default: 0; C4 perplexity segments always use seed 0, as GPTQ's)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (recorded)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N: model, calibration, H and solvers run there")
    p.add_argument("--attention-unit", default=None, choices=ATTENTION_UNITS,
                   help="grouped-query models: 'head' prunes query heads, the same number in every KV group "
                        "(per-group counts: nearest, ties toward removing more, at least one kept); 'kv-group' "
                        "prunes whole KV groups with their K/V heads. Unset: 'head' with --allocation uniform, "
                        "'kv-group' with --allocation runtime")
    p.add_argument("--calibration-inputs", default="pruned", choices=list(CALIBRATION_INPUTS),
                   help="each block's H from the already-pruned model's inputs (the paper's sequential protocol) "
                        "or from the dense model's (ablation: every method solves identical layer problems)")
    p.add_argument("--dtype", default="float32", choices=list(MODEL_DTYPES),
                   help="model weights/activations (H and the solvers are float64 regardless)")
    p.add_argument("--offload", default="none", choices=list(OFFLOAD_MODES),
                   help="where blocks wait while another is computed: 'none' keeps the whole model on --device; "
                        "'cpu' keeps the weights in host memory and moves one block at a time to --device "
                        "(activations wait on the host, one batch at a time on the device); 'disk' reads each block "
                        "from the model's safetensors shards when needed and writes each pruned block, sliced, to the "
                        "output folder as it finishes (the model is never whole in memory; the folder reloads with "
                        "from_pretrained, or osscar's loader for OPT). Same results as 'none'; not with --tasks, "
                        "--latency or --allocation runtime")
    p.add_argument("--max-device-memory", default=None, metavar="SIZE",
                   help="stop before loading if the memory plan needs more than SIZE on --device (GiB, or with a "
                        "unit: 24GiB, 500MiB; default: the device's free memory, CPU: available host memory)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the memory plan (predicted peak device and host memory per phase, from the model's "
                        "config alone, for the chosen --offload mode) and whether it fits, then stop; every run "
                        "prints this plan first")
    p.add_argument("--output-dir", default="results/lm", help="folder for the metrics JSON (and --save-model)")
    p.add_argument("--name", default=None, help="file stem of the metrics JSON (default: model_method_fractions)")
    p.add_argument("--save-model", action="store_true", help="save the sliced model under OUTPUT_DIR/NAME.model")
    p.add_argument("--cache-dir", default=None, help="model/data cache (default: $OSSCAR_CACHE or ~/.cache/osscar)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return p


def config_from_args(args: argparse.Namespace):
    from osscar.lm.run_config import LMRunConfig

    params = dict(args.method_param)
    if args.t_hat is not None:
        params["t_hat"] = args.t_hat
    if args.p_hat is not None:
        params["p_hat"] = args.p_hat
    return LMRunConfig(
        model=args.model, method=args.method, method_params=params, attn_params=dict(args.attn_param),
        mlp_params=dict(args.mlp_param), head_fraction=args.head_fraction, neuron_fraction=args.neuron_fraction,
        speedup=args.speedup, allocation=args.allocation, allocation_point=args.allocation_point,
        allocation_mlp_levels=args.allocation_mlp_levels, allocation_min_keep=args.allocation_min_keep,
        calib_corpus=args.calib_corpus, n_samples=args.n_samples, seqlen=args.seqlen,
        heldout_samples=args.heldout_samples, heldout_seqlen=args.heldout_seqlen,
        damping=args.damping, eval_corpora=tuple(args.eval_corpus or ["wiki-gensim"]),
        eval_seqlen=args.eval_seqlen, eval_windows=args.eval_windows or None,
        zero_shot_tasks=tuple(t for t in args.tasks.split(",") if t), zero_shot_limit=args.limit or None,
        latency_points=tuple(args.latency or ()), latency_repeats=args.latency_repeats,
        evaluate_dense=args.dense, layers=tuple(int(i) for i in args.layers.split(",") if i) or None,
        seed=args.seed, threads=args.threads, device=args.device, dtype=args.dtype,
        calibration_inputs=args.calibration_inputs, attention_unit=args.attention_unit, offload=args.offload,
        max_device_memory=args.max_device_memory, output_dir=args.output_dir, save_model=args.save_model,
        cache_dir=args.cache_dir)


def _fmt(value: float | None) -> str:
    return f"{value:>12.3f}" if value is not None else f"{'not measured':>12}"


def _distinct(value: float, other: float) -> str:
    """``value`` with the fewest decimals (at least 3) that tell it from ``other``: 0.3001 beside 0.3."""
    for digits in range(3, 8):
        if f"{value:.{digits}f}" != f"{other:.{digits}f}":
            break
    return f"{value:.{digits}f}"


def width_notes(w: Widths) -> list[str]:
    """A note for each fraction applied other than requested (rounded to whole groups, at least one kept);
    none with ``allocation="runtime"`` (per-block widths)."""
    if w.allocation != "uniform":
        return []
    groups = f"heads in {w.attn_blocks} KV groups" if w.attn_blocks > 1 else ("KV groups" if w.heads_per_group > 1 else "heads")
    notes = []
    for what, frac, keep, total, flag, unit in (("attention", w.head_fraction, w.keep_attn, w.n_attn, "--head-fraction", groups),
                                                ("MLP", w.neuron_fraction, w.keep_mlp, w.n_mlp, "--neuron-fraction", "neurons")):
        applied = 1 - keep / total
        if frac > 0 and keep == total:
            notes.append(f"note: {flag} {frac:g} removes nothing from {what} on this model ({total} {unit} per block, "
                         f"rounded to the nearest count, at least one kept); {what} is not pruned")
        elif not math.isclose(applied, frac, rel_tol=0.0, abs_tol=1e-12):
            notes.append(f"note: {flag} {frac:g} is applied as {_distinct(applied, frac)} on this model ({total - keep} of {total} "
                         f"{unit} per block removed)")
    return notes


def format_dense(dense: dict[str, Any]) -> str:
    """One line of the dense model's results, printed as soon as they exist."""
    parts = [f"ppl {os.path.basename(c)} {v['ppl']:.3f}" for c, v in dense.items() if isinstance(v, dict) and "ppl" in v]
    parts += [f"acc {t} {v['acc']:.3f}" for t, v in (dense.get("zero_shot") or {}).get("tasks", {}).items()]
    return "dense model: " + ", ".join(parts)


def format_summary(result: dict[str, Any], path: str) -> str:
    """Dense and pruned perplexity (and zero-shot accuracy) side by side ("not measured": no ``--dense``), what
    was applied, and the share of parameters and FLOPs left in the whole model."""
    pruned, dense = result["pruned"], result.get("dense") or {}
    lines = [f"{'metric':<28} {'dense':>12} {'pruned':>12}"]
    for c, v in pruned.items():
        if isinstance(v, dict) and "ppl" in v:
            d = dense.get(c, {}).get("ppl") if isinstance(dense.get(c), dict) else None
            lines.append(f"{'ppl ' + os.path.basename(c):<28} {_fmt(d)} {_fmt(v['ppl'])}")
    for task, v in (pruned.get("zero_shot") or {}).get("tasks", {}).items():
        d = ((dense.get("zero_shot") or {}).get("tasks", {}).get(task) or {}).get("acc")
        lines.append(f"{'acc ' + task:<28} {_fmt(d)} {_fmt(v['acc'])}")
    a, size = result["applied"], result["size"]
    lines.append(f"applied: heads removed {a['head_fraction_applied']:.3f} (requested {a['head_fraction_requested']}), "
                 f"neurons removed {a['neuron_fraction_applied']:.3f} (requested {a['neuron_fraction_requested']}); "
                 f"prune {result['timings']['prune_total_s']:.1f}s; metrics: {path}")
    lines.append(f"left in the whole model: {size['params_pruned'] / size['params_dense']:.1%} of the parameters, "
                 f"{size['flops_pruned']['total_flops'] / size['flops_dense']['total_flops']:.1%} of the FLOPs per token "
                 f"(decoder blocks alone: {1 / size['block_flops_ratio']:.1%} of their FLOPs; embeddings and the LM head "
                 "are not pruned)")
    return "\n".join(lines)


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def console_events() -> RunEvents:
    """What the console shows while a run runs: each long step, the rounding notes, the dense results."""
    return RunEvents(step=lambda text: _say(f"{text} ..."), widths=lambda w: [_say(n) for n in width_notes(w)],
                     dense=lambda dense: _say(format_dense(dense)))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    flags = parser_flags(parser, FIELD_FLAGS)
    from osscar.lm.text.data import CorpusUnavailable
    from osscar.lm.plan import check_memory
    from osscar.io import atomic_write_json
    from osscar.lm.run import run_lm
    from osscar.provenance import environment

    try:
        config = config_from_args(args)
        plan, limit, err = check_memory(config)
    except ValueError as e:
        print(f"osscar lm: error: {as_flags(str(e), flags)}", file=sys.stderr)
        return 2
    print(plan.format(), flush=True)
    if err is not None:
        print(f"osscar lm: error: {as_flags(err, flags)}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(f"dry run: the plan fits ({as_flags(limit, flags)}); nothing loaded")
        return 0
    hf, nf = config.fractions()
    base = os.path.basename(config.model.rstrip('/'))
    stem = f"{base[:-5] if base.lower().endswith('.gguf') else base}_{config.method}"
    if config.allocation == "runtime":  # per-block widths: name by the latency target
        name = args.name or f"{stem}_runtime_s{config.speedup:g}"
    else:
        name = args.name or f"{stem}_h{hf:.2f}_n{nf:.2f}"
    os.makedirs(config.output_dir, exist_ok=True)
    save_to = os.path.join(config.output_dir, f"{name}.model") if config.save_model else None
    try:
        result = run_lm(config, progress=not args.no_progress, save_to=save_to, plan=plan, events=console_events())
    except (ValueError, CorpusUnavailable) as e:  # a corpus too short, or a hub corpus not reachable
        print(f"osscar lm: error: {as_flags(str(e), flags)}", file=sys.stderr)
        return 2
    path = os.path.join(config.output_dir, f"{name}.json")
    atomic_write_json(path, {**result, "environment": environment()})
    print(format_summary(result, path))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
