"""``python -m osscar lm``: prune a causal LM with one method, evaluate it, write metrics JSON."""

from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Any

from osscar.config_cli import add_config_options, config_flags, config_values
from osscar.lm.run_config import LMRunConfig
from osscar.options import HelpFormatter, as_flags, parser_flags
from osscar.lm.run_state import RunEvents, Widths

# the model_types osscar.lm.adapters registers (tests/lm/test_families.py checks the two agree)
LM_FAMILIES = ("opt, llama, mistral, qwen2, qwen3, gemma, gemma2, gemma3_text (Gemma 3 text-only), phi3, "
               "olmo2 (MLP only: --head-fraction 0)")

# {LMRunConfig field: its flag}, from the fields' own option metadata
FIELD_FLAGS = config_flags(LMRunConfig)


def build_parser(config_class: type | None = None) -> argparse.ArgumentParser:
    """The parser: one option per :func:`osscar.config_cli.option` field of ``config_class`` (default
    :class:`~osscar.lm.run_config.LMRunConfig`), grouped by section, plus the CLI's own options."""
    cls = config_class or LMRunConfig
    p = argparse.ArgumentParser(
        prog="osscar lm",
        description="Prune a Hugging Face causal LM layer-wise with OSSCAR or a baseline, slice it physically, "
                    "and evaluate perplexity / zero-shot accuracy / latency. Architectures (config model_type): "
                    f"{LM_FAMILIES}.",
        formatter_class=HelpFormatter,
    )
    groups = add_config_options(p, cls)
    target = groups["target"]
    target.add_argument("--t-hat", type=int, default=None, help="OSSCAR t̂: groups changed per local-search iteration (both consumers; None: method default)")
    target.add_argument("--p-hat", type=int, default=None, help="OSSCAR p̂: groups removed per Stage-A iteration (both consumers; None: method default)")
    groups["execution"].add_argument(
        "--dry-run", action="store_true",
        help="print the memory plan (predicted peak device and host memory per phase, from the model's "
             "config alone, for the chosen --offload mode) and whether it fits, then stop; every run "
             "prints this plan first")
    out = groups["output"]
    out.add_argument("--name", default=None, help="file stem of the metrics JSON (default: model_method_fractions)")
    out.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return p


def config_from_args(args: argparse.Namespace, config_class: type | None = None):
    """The run config of parsed arguments (``--t-hat`` / ``--p-hat`` join the method parameters)."""
    cls = config_class or LMRunConfig
    values = config_values(cls, args)
    for name in ("t_hat", "p_hat"):
        if getattr(args, name) is not None:
            values["method_params"][name] = getattr(args, name)
    return cls(**values)


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
