"""Markdown table from LM metrics JSON files: ``python -m osscar.lm.table results/lm_runs/*.json``."""

from __future__ import annotations

import json
import sys


def _acc(block: dict, task: str, key: str) -> str:
    v = block.get("zero_shot", {}).get("tasks", {}).get(task, {}).get(key)
    return "–" if v is None else f"{v:.3f}"


def rows(paths: list[str]) -> list[str]:
    out = ["| model | method | heads removed (applied) | neurons removed | wiki-gensim ppl | PIQA acc / acc_norm "
           "| ARC-e acc / acc_norm | prune s (solver s) | block-FLOPs ratio | params |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    dense_done = False
    for p in paths:
        r = json.load(open(p))
        if "config" not in r:
            continue
        c, a = r["config"], r["applied"]
        if "dense" in r and not dense_done:
            d = r["dense"]
            ppl = d.get("wiki-gensim", {}).get("ppl")
            out.append(f"| {c['model']} | dense | 0 | 0 | {ppl:.2f} | {_acc(d, 'piqa', 'acc')} / {_acc(d, 'piqa', 'acc_norm')} "
                       f"| {_acc(d, 'arc_easy', 'acc')} / {_acc(d, 'arc_easy', 'acc_norm')} | – | 1.00 | "
                       f"{r['size']['params_dense'] / 1e6:.1f}M |")
            dense_done = True
        pr = r["pruned"]
        ppl = pr.get("wiki-gensim", {}).get("ppl")
        t = r["timings"]
        out.append(
            f"| {c['model']} | {c['method']} | {a['head_fraction_applied']:.3f} (req. {a['head_fraction_requested']:.2f}) "
            f"| {a['neuron_fraction_applied']:.3f} | {ppl:.2f} | {_acc(pr, 'piqa', 'acc')} / {_acc(pr, 'piqa', 'acc_norm')} "
            f"| {_acc(pr, 'arc_easy', 'acc')} / {_acc(pr, 'arc_easy', 'acc_norm')} "
            f"| {t['prune_total_s']:.0f} ({t['prune_solver_s']:.0f}) | {r['size']['block_flops_ratio']:.2f} "
            f"| {r['size']['params_pruned'] / 1e6:.1f}M |")
    return out


def latency_rows(paths: list[str]) -> list[str]:
    out = ["| run | batch×seqlen | threads | dense s | sliced s | measured speedup | block-FLOPs ratio | total-FLOPs ratio |",
           "|---|---|---|---|---|---|---|---|"]
    for p in paths:
        r = json.load(open(p))
        if "config" not in r:  # standalone `python -m osscar.lm.measure` output
            for L in r.get("latency", []):
                out.append(f"| measure {r['kept_attn_groups']} groups/{r['kept_neurons']} neurons | {L['batch']}×{L['seqlen']} "
                           f"| {L['threads']} | {L['dense_s']:.3f} | {L['sliced_s']:.3f} | {L['speedup']:.2f} "
                           f"| {r['block_flops_ratio']:.2f} | {r['total_flops_ratio']:.2f} |")
            continue
        for L in r.get("latency", []):
            out.append(f"| {r['config']['method']} {r['applied']['neuron_fraction_requested']} | {L['batch']}×{L['seqlen']} "
                       f"| {L['threads']} | {L['dense_s']:.3f} | {L['sliced_s']:.3f} | {L['speedup']:.2f} "
                       f"| {r['size']['block_flops_ratio']:.2f} | {r['size']['total_flops_ratio']:.2f} |")
    return out


def main(argv: list[str] | None = None) -> int:
    paths = list(sys.argv[1:] if argv is None else argv)
    print("\n".join(rows(paths)))
    print()
    print("\n".join(latency_rows(paths)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
