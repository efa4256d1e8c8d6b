"""The last step of an LM run (:mod:`osscar.lm.run`): its result from the run state: what was applied,
sizes, slicing, layer records, timings, memory and the run's own provenance."""

from __future__ import annotations

import dataclasses
from typing import Any

from osscar.devices import device_label
from osscar.lm.run_state import RunState
from osscar.lm.text import data as lm_data
from osscar.memory import MemoryMonitor


def _applied(state: RunState) -> dict[str, Any]:
    """The widths applied (uniform scalars; runtime allocation: per block) beside the fractions requested."""
    w, n_all = state.widths, len(state.widths_attn)
    applied = {
        "attn_groups_total": w.n_attn, "attn_groups_kept": w.keep_attn, "head_fraction_applied": w.head_fraction_applied,
        "attn_group": "kv-group" if w.heads_per_group > 1 else "head", "heads_per_group": w.heads_per_group,
        "attention_unit": w.attention_unit, "kv_groups": w.kv_groups,
        "heads_kept_per_kv_group": (w.keep_attn // w.attn_blocks) if w.attn_blocks > 1 else None,
        "neurons_total": w.n_mlp, "neurons_kept": w.keep_mlp, "neuron_fraction_applied": w.neuron_fraction_applied,
        "head_fraction_requested": w.head_fraction, "neuron_fraction_requested": w.neuron_fraction,
        "blocks_pruned": len(state.config.layers) if state.config.layers is not None else n_all,
        "allocation": w.allocation,
    }
    if w.allocation != "uniform":  # per-block widths; the scalar fields above are the uniform plan
        applied.update({
            "attn_groups_kept": None, "neurons_kept": None,
            "attn_groups_kept_per_block": state.widths_attn, "neurons_kept_per_block": state.widths_mlp,
            "head_fraction_applied": 1 - sum(state.widths_attn) / (w.n_attn * n_all),
            "neuron_fraction_applied": 1 - sum(state.widths_mlp) / (w.n_mlp * n_all),
            "head_fraction_requested": None, "neuron_fraction_requested": None})
    return applied


def _size(state: RunState) -> dict[str, Any]:
    """Parameters and FLOPs per token, dense and pruned (pruned FLOPs: every block at its width)."""
    from osscar.lm.evaluation.measure import flops_per_token, param_count

    w, dense = state.widths, state.dense_flops
    if w.allocation != "uniform":
        pruned = flops_per_token(state.adapter.original(), state.widths_attn, state.widths_mlp)
    else:
        pruned = flops_per_token(state.adapter.original(), w.keep_attn, w.keep_mlp)  # if every block is pruned
    return {"params_dense": state.dense_params, "params_pruned": param_count(state.model),
            "flops_dense": dense, "flops_pruned": pruned,
            "block_flops_ratio": dense["block_flops"] / pruned["block_flops"],
            "total_flops_ratio": dense["total_flops"] / pruned["total_flops"]}


def _provenance(state: RunState) -> dict[str, Any]:
    """Where this run's numbers came from: model, corpora, seed, threads, device, method parameters. The
    environment (package versions, git commit) is the caller's to add once (:mod:`osscar.provenance`)."""
    import torch

    c = state.config
    return {
        "model": c.model, "model_source": state.loaded.source, "model_provenance": state.loaded.provenance,
        "calib_corpus": c.calib_corpus, "eval_corpora": list(c.eval_corpora),
        "corpora": {name: lm_data.corpus_provenance(name) for name in dict.fromkeys((c.calib_corpus, *c.eval_corpora))},
        "calib_segments_shape": list(state.segments.shape), "heldout_windows": state.heldout_info,
        "seed": c.seed, "threads": c.threads, "threads_used": torch.get_num_threads(),
        "device": device_label(state.device), "dtype": c.dtype, "method": c.method,
        "method_params": {"attn": state.methods.attn.params(), "mlp": state.methods.mlp.params()},
    }


def record(state: RunState, mem: MemoryMonitor) -> dict[str, Any]:
    """The run's result: what was applied, sizes, slicing, layer records, timings, memory, provenance."""
    from osscar.lm.evaluation.measure import peak_rss_mb

    c, result = state.config, state.result
    result["applied"] = _applied(state)
    result["size"] = _size(state)
    result["slicing"] = {"sliced": state.sliced, "manifest": state.manifest,
                         "max_abs_logit_diff_vs_unsliced": state.slice_diff}
    result["layers"] = [dataclasses.asdict(r) for r in state.outcome.records]
    if c.offload != "none":
        result["offload"] = {"mode": c.offload, "weights_from": state.loaded.source if c.offload == "disk" else None,
                             "written_block_by_block": c.offload == "disk"}
    state.timed("total_s", state.t0)
    result["timings"] = state.timings
    mem.phase("slice_and_evaluate")
    summary = mem.summary()
    result["memory"] = {"process_max_rss_mb": peak_rss_mb(), "process_max_rss_before_prune_mb": state.rss_before,
                        "process_max_rss_after_prune_mb": state.rss_after, "peak_accelerator_mb": summary["device_peak_mb"],
                        "note": "phases / peak_rss_mb: this run alone (sampled RSS, see osscar.memory); process_*: "
                                "ru_maxrss of the whole process, which includes earlier runs of a sweep",
                        **summary}
    result["provenance"] = _provenance(state)
    return result
