"""One language-model pruning run: :class:`LMRunConfig` in, a metrics + provenance dict out.

``LMRunConfig.__post_init__`` validates everything cheap before any weights are loaded (names,
fractions, method parameters, sequence length vs the model's maximum positions — read from the
config only). :func:`run_lm` then tokenizes the calibration corpus (and fails if it is too short
for ``n_samples × seqlen`` tokens) before it loads the weights.

Per-layer targets: ``head_fraction`` of the attention groups (heads for OPT, whole KV groups for
Llama/GQA) and ``neuron_fraction`` of the MLP neurons are removed in every block; or ``speedup``
S sets both to 1 − 1/S (block-FLOPs model in :mod:`osscar.lm.evaluation.measure`). A fraction r of n groups
removes round(r·n) groups, ties rounded down, at least one group kept; the fractions actually
applied are reported (``applied``).

**Runtime-aware allocation** (``allocation="runtime"``, ZipLM's idea, any registered method): the
target ``speedup`` is then a *measured-latency* speedup of the decoder blocks at one prefill shape
(``allocation_point``, default (1, seqlen)) — the same quantity uniform allocation targets by block
FLOPs; embeddings and the LM head are neither pruned nor counted — and every block gets its own
widths. Two passes:

1. *Loss curves on the dense model.* :func:`osscar.lm.calibrate.calibration.collect_loss_curves` runs one
   calibration forward through the dense model (nothing pruned) and, for every block and
   consumer, one Stage-A gradual-removal pass (:func:`osscar.allocation.removal_path`) giving the
   least-squares loss at every candidate level, normalised by the dense output energy
   ½ tr(ŴᵀHŴ) so that layers are comparable.
2. *Allocate.* :func:`osscar.lm.evaluation.latency.latency_table` (measured once, cached) gives the latency
   of each candidate level: attention at every group count, the MLP at ``allocation_mlp_levels``
   widths. With T_dense the table's predicted dense latency and T_fixed its unprunable part
   (embeddings, norms, LM head, per-block rest, blocks not pruned) and T_model the embeddings/LM
   head alone, the multiple-choice knapsack :func:`osscar.allocation.allocate` picks one level per
   consumer minimising the summed loss subject to
   Σ latency ≤ T_model + (T_dense − T_model) / speedup − T_fixed.
3. *Prune.* :func:`osscar.lm.calibrate.calibration.prune_model_sequential` prunes sequentially (pruned-model
   inputs, as in the uniform case) with the chosen per-block counts and the requested method.

The loss curves come from dense inputs while pass 3 sees pruned inputs: the allocation is an
estimate, the pruning itself is the usual sequential one. The chosen levels, the predicted
latency (and that of the uniform allocation for the same target) and the target are reported
under ``allocation`` in the metrics. ``allocation="uniform"`` (default) is the behaviour above.
"""

from __future__ import annotations

import copy
import dataclasses
import platform
import sys
import time
from typing import Any

from osscar.devices import device_label, peak_accelerator_mb, resolve_device, torch_threads
from osscar.io import atomic_write_json
from osscar.lm.text import data as lm_data
from osscar.lm.run_config import LMRunConfig  # noqa: F401  (re-exported: the sweep pipeline names it here)
from osscar.lm.runtime_allocation import runtime_allocation
from osscar.lm.targets import heads_removed, removed_count  # noqa: F401  (re-exported)
from osscar.options import ALLOCATIONS  # noqa: F401  (re-exported)


def versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for mod in ("torch", "transformers", "lm_eval", "datasets", "gensim", "osscar"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001
            out[mod] = "unavailable"
    return out


def run_lm(config: LMRunConfig, progress: bool = False, save_to: str | None = None,
           plan: Any = None) -> dict[str, Any]:
    """Calibrate, prune, slice and evaluate one model. Returns metrics and provenance.

    First the memory plan (:func:`osscar.lm.plan.check_memory`; ``plan``: one already checked): a run that would
    not fit stops here, before any weights load; the plan is recorded under ``memory_plan``.
    ``save_to``: folder for the sliced model (:func:`osscar.lm.slicing.save_pruned`).
    Runs with ``config.threads`` torch threads; the caller's count is restored afterwards.
    """
    import contextlib

    from osscar.memory import MemoryMonitor

    if plan is None:
        from osscar.lm.plan import check_memory

        plan, _, err = check_memory(config)
        if err is not None:
            raise ValueError(err)
    with torch_threads(config.threads), MemoryMonitor(device=config.device) as mem, contextlib.ExitStack() as stack:
        result = _run_lm(config, progress, save_to, mem, stack)  # stack: a disk run's output folder
    result["memory"].update(mem.summary())
    result["memory_plan"] = plan.to_dict()
    return result


def _run_lm(config: LMRunConfig, progress: bool, save_to: str | None, mem: Any, stack: Any) -> dict[str, Any]:
    import torch
    from tqdm.auto import tqdm

    from osscar.lm.adapters import get_adapter
    from osscar.lm.calibrate.calibration import prune_model_sequential
    from osscar.lm.evaluation.evaluate import zero_shot
    from osscar.lm.text.heldout import heldout_segments
    from osscar.lm.evaluation.latency import prefill_comparison
    from osscar.lm.evaluation.measure import flops_per_token, param_count, peak_rss_mb
    from osscar.lm.sources.models import load_model, load_tokenizer
    from osscar.lm.offloading.offload_run import OffloadedModel, load_skeleton
    from osscar.lm.slicing import save_pruned, slice_model
    from osscar.methods import make_method

    torch.manual_seed(config.seed)
    device = resolve_device(config.device, "device")
    t0 = time.perf_counter()
    timings: dict[str, float] = {}

    # 1. text first: fails fast on a short corpus, before any weights are loaded
    t = time.perf_counter()
    tok = load_tokenizer(config.model, config.cache_dir)
    cal_ids = None  # the joined calibration text, tokenized once for the calibration and held-out windows
    if config.heldout_samples and lm_data.get_corpus(config.calib_corpus).sampling == "joined":
        cal_ids = lm_data.joined_tokens(config.calib_corpus, tok, "calibration")
    segments = lm_data.calibration_segments(config.calib_corpus, tok, config.n_samples, config.seqlen, config.seed,
                                            ids=cal_ids)
    eval_len = config.eval_seqlen or config.seqlen
    windows = {c: lm_data.eval_windows(c, tok, eval_len, config.eval_windows) for c in config.eval_corpora}
    heldout, heldout_info = None, None
    if config.heldout_samples:
        heldout, heldout_info = heldout_segments(config.calib_corpus, tok, config.heldout_samples,
                                                 config.heldout_seqlen or config.seqlen, config.n_samples,
                                                 config.seqlen, config.seed, eval_len, ids=cal_ids)
    timings["data_s"] = time.perf_counter() - t

    # 2. model
    t = time.perf_counter()
    if config.offload == "disk":  # a skeleton: each block's weights are read when it is fetched
        loaded = load_skeleton(config.model, config.cache_dir, config.dtype)
    else:
        loaded = load_model(config.model, config.cache_dir, dtype=config.dtype)
    model, tok = (loaded.model.to(device) if config.offload == "none" else loaded.model), loaded.tokenizer
    handle = OffloadedModel(config.offload, model, device, getattr(torch, config.dtype), source=loaded.source)
    handle.open_output(stack, save_to, config.output_dir)
    timings["load_s"] = time.perf_counter() - t
    model.config.osscar_attention_unit = config.attention_unit  # every adapter of this model reads it
    adapter = get_adapter(model)
    n_attn, n_mlp = adapter.n_attn_groups, adapter.ffn_dim
    hf, nf = config.fractions()
    # read before slicing rewrites model.config (and so what the adapter reports)
    unit, attn_blocks, kv_groups, heads_per_group = (adapter.attention_unit, adapter.attn_blocks, adapter.n_kv_heads,
                                                     adapter.heads_per_group)
    if adapter.attn_blocks > 1:  # query heads, the same number in every KV group
        per = n_attn // adapter.attn_blocks
        keep_attn = adapter.attn_blocks * (per - heads_removed(hf, per))
    else:
        keep_attn = n_attn - removed_count(hf, n_attn)
    keep_mlp = n_mlp - removed_count(nf, n_mlp)
    if config.allocation == "uniform":
        groups_word = "KV groups" if heads_per_group > 1 else "heads"
        if attn_blocks > 1:
            groups_word = f"heads in {attn_blocks} KV groups"
        for what, frac, keep, total, flag in (("attention", hf, keep_attn, n_attn, "--head-fraction"),
                                              ("MLP", nf, keep_mlp, n_mlp, "--neuron-fraction")):
            if frac > 0 and keep == total:
                print(f"note: {flag} {frac:g} removes nothing from {what} on this model ({total} "
                      f"{groups_word if what == 'attention' else 'neurons'} per block, rounded to the nearest count, at "
                      f"least one kept); {what} is not pruned", file=sys.stderr, flush=True)
            elif frac > 0 and abs((1 - keep / total) - frac) > 0.05:
                print(f"note: {flag} {frac:g} is applied as {1 - keep / total:.3f} on this model ({total - keep} of "
                      f"{total} {groups_word if what == 'attention' else 'neurons'} per block)", file=sys.stderr, flush=True)
    dense_params = param_count(model)
    dense_flops = flops_per_token(model)
    dense_config = copy.deepcopy(model.config)  # slicing rewrites model.config
    result: dict[str, Any] = {"config": config.to_dict()}

    def eval_all(tag: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for c, w in windows.items():
            bar = tqdm(total=len(w), desc=f"ppl {c} ({tag})", disable=not progress, leave=False)
            out[c] = handle.perplexity(w, pruned=tag != "dense", progress=bar.update)
            bar.close()
        if config.zero_shot_tasks:
            t = time.perf_counter()
            out["zero_shot"] = zero_shot(model, tok, list(config.zero_shot_tasks), config.zero_shot_limit,
                                         cache_dir=config.cache_dir)
            timings[f"zero_shot_{tag}_s"] = time.perf_counter() - t
        return out

    if config.evaluate_dense:
        t = time.perf_counter()
        result["dense"] = eval_all("dense")
        timings["eval_dense_s"] = time.perf_counter() - t

    # 3. prune sequentially
    method_attn = make_method(config.method, **config.params_for("attn"))
    method_mlp = make_method(config.method, **config.params_for("mlp"))
    n_blocks = len(config.layers) if config.layers is not None else len(adapter.layers(model))
    bar = tqdm(total=2 * n_blocks, desc=f"prune {config.method}", disable=not progress)

    def prune_with(problem):  # one method object per consumer kind (their params may differ)
        m = method_attn if problem.name.endswith(adapter.attn_consumer) else method_mlp
        return m.prune(problem)

    class _Router:
        def prune(self, problem):
            return prune_with(problem)

    n_all = len(adapter.layers(model))
    todo = sorted(set(config.layers)) if config.layers is not None else list(range(n_all))
    plan_attn: int | dict[int, int] = keep_attn
    plan_mlp: int | dict[int, int] = keep_mlp
    if config.allocation == "runtime":
        t = time.perf_counter()
        plan_attn, plan_mlp, result["allocation"] = runtime_allocation(
            model, segments, config, todo, uniform=(keep_attn, keep_mlp),
            progress=(lambda msg: bar.set_postfix_str(msg)) if progress else None)
        timings["allocation_s"] = time.perf_counter() - t
    widths_attn = [plan_attn.get(i, n_attn) if isinstance(plan_attn, dict) else (keep_attn if i in todo else n_attn)
                   for i in range(n_all)]
    widths_mlp = [plan_mlp.get(i, n_mlp) if isinstance(plan_mlp, dict) else (keep_mlp if i in todo else n_mlp)
                  for i in range(n_all)]

    rss_before = peak_rss_mb()
    mem.phase("load_and_dense_eval")
    t = time.perf_counter()
    outcome = prune_model_sequential(model, segments, _Router(), plan_attn, plan_mlp, damping=config.damping,
                                     layers=list(config.layers) if config.layers is not None else None,
                                     inputs_from=config.calibration_inputs, heldout=heldout,
                                     progress=lambda msg: (bar.update(1), bar.set_postfix_str(msg)),
                                     blocks=handle.prune_store())
    timings["prune_total_s"] = time.perf_counter() - t
    timings["prune_solver_s"] = outcome.seconds_solver
    rss_after = peak_rss_mb()
    mem.phase("prune")
    bar.close()

    # 4. slice (check it keeps the pruned model's function on one window)
    probe = next(iter(windows.values()))[:1] if windows else segments[:1]
    sliced = config.layers is None or len(set(config.layers)) == len(adapter.layers(model))
    slice_diff: float | None = None
    if config.offload == "disk":  # every block was sliced and written as it finished; no unsliced copy is left
        manifest = handle.finish(outcome.kept, tok)
    elif sliced:  # uniform widths give a plain config; per-block widths a manifest (see slicing)
        with torch.no_grad():
            before = handle.logits(probe)
        manifest = slice_model(model, outcome.kept)
        with torch.no_grad():
            after = handle.logits(probe)
        slice_diff = float((before - after).abs().max())
    else:  # a subset of blocks gives non-uniform widths: evaluate the pruned, unsliced model
        manifest = {"kept_attn_groups": keep_attn, "kept_neurons": keep_mlp,
                    "note": "only some blocks pruned; model not sliced (non-uniform widths)"}

    # 5. evaluate the sliced model
    t = time.perf_counter()
    result["pruned"] = eval_all("pruned")
    timings["eval_pruned_s"] = time.perf_counter() - t

    if config.allocation == "runtime":
        pruned_flops = flops_per_token(adapter.original_config(), widths_attn, widths_mlp)
    else:
        pruned_flops = flops_per_token(adapter.original_config(), keep_attn, keep_mlp)  # if every block is pruned
    result["applied"] = {
        "attn_groups_total": n_attn, "attn_groups_kept": keep_attn, "head_fraction_applied": 1 - keep_attn / n_attn,
        "attn_group": "kv-group" if heads_per_group > 1 else "head", "heads_per_group": heads_per_group,
        "attention_unit": unit, "kv_groups": kv_groups,
        "heads_kept_per_kv_group": (keep_attn // attn_blocks) if attn_blocks > 1 else None,
        "neurons_total": n_mlp, "neurons_kept": keep_mlp, "neuron_fraction_applied": 1 - keep_mlp / n_mlp,
        "head_fraction_requested": hf, "neuron_fraction_requested": nf,
        "blocks_pruned": n_blocks, "allocation": config.allocation,
    }
    if config.allocation == "runtime":  # per-block widths; the scalar fields above are the uniform plan
        tot_a, tot_m = sum(widths_attn), sum(widths_mlp)
        result["applied"].update({
            "attn_groups_kept": None, "neurons_kept": None,
            "attn_groups_kept_per_block": widths_attn, "neurons_kept_per_block": widths_mlp,
            "head_fraction_applied": 1 - tot_a / (n_attn * n_all), "neuron_fraction_applied": 1 - tot_m / (n_mlp * n_all),
            "head_fraction_requested": None, "neuron_fraction_requested": None})
    result["size"] = {
        "params_dense": dense_params, "params_pruned": param_count(model),
        "flops_dense": dense_flops, "flops_pruned": pruned_flops,
        "block_flops_ratio": dense_flops["block_flops"] / pruned_flops["block_flops"],
        "total_flops_ratio": dense_flops["total_flops"] / pruned_flops["total_flops"],
    }
    result["slicing"] = {"sliced": sliced, "manifest": manifest, "max_abs_logit_diff_vs_unsliced": slice_diff}
    result["layers"] = [dataclasses.asdict(r) for r in outcome.records]

    # 6. latency, dense vs sliced in the same process; shared by runs with the same widths (cache)
    if config.latency_points and sliced:
        t = time.perf_counter()
        result["latency"], cache_info = prefill_comparison(
            dense_config, model, (widths_attn, widths_mlp), list(config.latency_points),
            lambda: load_model(config.model, config.cache_dir, dtype=config.dtype).model, config.latency_repeats,
            cache_dir=config.cache_dir)
        result["latency_cache"] = {k: cache_info[k] for k in ("cached", "path", "measured_at")}
        timings["latency_s"] = time.perf_counter() - t

    if save_to and sliced:
        if config.offload != "disk":  # disk: written block by block into save_to (renamed when the run ends)
            save_pruned(model, tok, save_to)
        result["saved_to"] = str(save_to)
    if config.offload != "none":
        result["offload"] = {"mode": config.offload, "weights_from": loaded.source if config.offload == "disk" else None,
                             "written_block_by_block": config.offload == "disk"}
    timings["total_s"] = time.perf_counter() - t0
    result["timings"] = timings
    mem.phase("slice_and_evaluate")
    result["memory"] = {"process_max_rss_mb": peak_rss_mb(), "process_max_rss_before_prune_mb": rss_before,
                        "process_max_rss_after_prune_mb": rss_after, "peak_accelerator_mb": peak_accelerator_mb(device),
                        "note": "phases / peak_rss_mb: this run alone (sampled RSS, see osscar.memory); process_*: "
                                "ru_maxrss of the whole process, which includes earlier runs of a sweep"}
    result["provenance"] = {
        "model": config.model, "model_source": loaded.source, "model_provenance": loaded.provenance,
        "calib_corpus": config.calib_corpus, "eval_corpora": list(config.eval_corpora),
        "corpora": {c: lm_data.corpus_provenance(c) for c in dict.fromkeys((config.calib_corpus, *config.eval_corpora))},
        "calib_segments_shape": list(segments.shape), "heldout_windows": heldout_info,
        "seed": config.seed, "threads": config.threads,
        "threads_used": torch.get_num_threads(), "device": device_label(device), "dtype": config.dtype,
        "method": config.method, "method_params": {"attn": method_attn.params(), "mlp": method_mlp.params()},
        "versions": versions(),
    }
    return result


def write_json_atomic(obj: Any, path: str) -> None:
    atomic_write_json(path, obj)
