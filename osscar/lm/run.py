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

import contextlib
import copy
import time
from typing import Any

from osscar.devices import resolve_device, torch_threads
from osscar.lm.run_config import LMRunConfig
from osscar.lm.run_record import record
from osscar.lm.run_state import ConsumerMethods, RunEvents, RunState, uniform_widths
from osscar.lm.allocation.run_step import global_allocation, uniform_latency_allocation
from osscar.lm.runtime_allocation import runtime_allocation
from osscar.lm.text import data as lm_data
from osscar.memory import MemoryMonitor, run_monitor


def run_lm(config: LMRunConfig, progress: bool = False, save_to: str | None = None,
           plan: Any = None, events: RunEvents | None = None) -> dict[str, Any]:
    """Calibrate, prune, slice and evaluate one model. Returns metrics and the run's provenance; writes nothing
    but the sliced model (``save_to``: its folder, :func:`osscar.lm.slicing.save_pruned`, saved before evaluation).

    First the memory plan (:func:`osscar.lm.plan.check_memory`; ``plan``: one already checked): a run that would
    not fit stops here, before any weights load; the plan is recorded under ``memory_plan``. Then the steps
    :func:`read_text` → :func:`load` → :func:`evaluate_dense` → :func:`dense_drift_reference` → :func:`prune` →
    :func:`slice_pruned` → :func:`save` → :func:`evaluate_pruned` → :func:`measure_drift` → :func:`measure_latency`
    → :func:`record` over one :class:`RunState`.
    Runs with ``config.threads`` torch threads; the caller's count is restored afterwards.
    """
    if plan is None:
        from osscar.lm.plan import check_memory

        plan, _, err = check_memory(config)
        if err is not None:
            raise ValueError(err)
    with torch_threads(config.threads), run_monitor(config.device) as mem, contextlib.ExitStack() as stack:
        state = start(config, progress, events or RunEvents())
        read_text(state)
        load(state, stack, save_to)  # stack: a disk run's output folder
        evaluate_dense(state)
        dense_drift_reference(state)
        prune(state, mem)
        slice_pruned(state)
        save(state, save_to)
        evaluate_pruned(state)
        measure_drift(state)
        measure_latency(state)
        result = record(state, mem)
    result["memory_plan"] = plan.to_dict()
    return result


def start(config: LMRunConfig, progress: bool, events: RunEvents) -> RunState:
    """Seed torch and resolve the device (a CUDA config on a machine without one fails here)."""
    import torch

    torch.manual_seed(config.seed)
    return RunState(config=config, device=resolve_device(config.device, "device"), progress=progress, events=events)


def read_text(state: RunState) -> None:
    """Tokenize the calibration segments (n_samples, seqlen), the evaluation windows and the held-out windows:
    text first, so a short corpus fails before any weights are loaded."""
    from osscar.lm.sources.models import load_tokenizer
    from osscar.lm.text.heldout import heldout_segments

    c, t = state.config, time.perf_counter()
    state.events.step("reading and tokenizing corpora")
    state.tok = load_tokenizer(c.model, c.cache_dir)
    cal_ids = None  # the joined calibration text, tokenized once for the calibration and held-out windows
    if c.heldout_samples and lm_data.get_corpus(c.calib_corpus).sampling == "joined":
        cal_ids = lm_data.joined_tokens(c.calib_corpus, state.tok, "calibration")
    state.segments = lm_data.calibration_segments(c.calib_corpus, state.tok, c.n_samples, c.seqlen, c.seed, ids=cal_ids)
    eval_len = c.eval_seqlen or c.seqlen
    state.windows = {name: lm_data.eval_windows(name, state.tok, eval_len, c.eval_windows) for name in c.eval_corpora}
    if c.heldout_samples:
        state.heldout, state.heldout_info = heldout_segments(
            c.calib_corpus, state.tok, c.heldout_samples, c.heldout_seqlen or c.seqlen, c.n_samples, c.seqlen, c.seed,
            eval_len, ids=cal_ids)
    state.timed("data_s", t)


def load(state: RunState, stack: contextlib.ExitStack, save_to: str | None) -> None:
    """Load the model (disk offload: a skeleton whose blocks are read when fetched), find its adapter, fix the
    uniform widths (told to ``events.widths``) and the dense sizes, before anything is pruned."""
    import torch

    from osscar.lm.adapters import get_adapter
    from osscar.lm.evaluation.measure import flops_per_token, param_count
    from osscar.lm.offloading.offload_run import OffloadedModel, load_skeleton
    from osscar.lm.sources.models import load_model

    c, t = state.config, time.perf_counter()
    state.events.step(f"loading {c.model}")
    if c.offload == "disk":
        state.loaded = load_skeleton(c.model, c.cache_dir, c.dtype)
    else:
        state.loaded = load_model(c.model, c.cache_dir, dtype=c.dtype)
    model = state.loaded.model.to(state.device) if c.offload == "none" else state.loaded.model
    state.model, state.tok = model, state.loaded.tokenizer
    state.adapter = get_adapter(model, c.attention_unit)  # the run's one adapter: every step gets it
    state.handle = OffloadedModel(c.offload, model, state.device, getattr(torch, c.dtype), state.adapter,
                                  source=state.loaded.source)
    state.handle.open_output(stack, save_to, c.output_dir)
    state.timed("load_s", t)
    state.widths = uniform_widths(state.adapter, *c.fractions(), c.allocation)
    state.events.widths(state.widths)
    state.dense_params, state.dense_flops = param_count(model), flops_per_token(state.adapter)
    state.dense_config = copy.deepcopy(model.config)  # slicing rewrites model.config
    state.result["config"] = c.to_dict()


def _evaluate(state: RunState, tag: str) -> dict[str, Any]:
    """Perplexity on every evaluation corpus, then the zero-shot tasks, of the dense or pruned model."""
    from tqdm.auto import tqdm

    from osscar.lm.evaluation.evaluate import zero_shot

    c, out = state.config, {}
    for name, w in state.windows.items():
        bar = tqdm(total=len(w), desc=f"ppl {name} ({tag})", disable=not state.progress, leave=False)
        out[name] = state.handle.perplexity(w, pruned=tag != "dense", progress=bar.update)
        bar.close()
    if c.zero_shot_tasks:
        t = time.perf_counter()
        out["zero_shot"] = zero_shot(state.model, state.tok, list(c.zero_shot_tasks), c.zero_shot_limit,
                                     cache_dir=c.cache_dir)
        state.timed(f"zero_shot_{tag}_s", t)
    return out


def evaluate_dense(state: RunState) -> None:
    """With ``evaluate_dense``: the dense model's evaluation, told to ``events.dense`` at once."""
    if not state.config.evaluate_dense:
        return
    t = time.perf_counter()
    state.events.step("evaluating the dense model")
    state.result["dense"] = _evaluate(state, "dense")
    state.timed("eval_dense_s", t)
    state.events.dense(state.result["dense"])


def dense_drift_reference(state: RunState) -> None:
    """With ``drift``: the dense model's hidden states and log-probabilities on the held-out windows."""
    if state.config.drift:
        from osscar.lm.evaluation.drift import dense_reference

        state.events.step("drift: the dense model on the held-out windows")
        state.drift_reference = dense_reference(state.model, state.heldout)


def measure_drift(state: RunState) -> None:
    """With ``drift``: per-block output error and final KL of the pruned model against the dense reference."""
    if state.drift_reference is not None:
        from osscar.lm.evaluation.drift import drift

        t = time.perf_counter()
        state.events.step("drift: the pruned model on the held-out windows")
        state.result["drift"] = drift(state.model, state.drift_reference)
        state.drift_reference = None
        state.timed("drift_s", t)


def _block_widths(plan: int | dict[int, int], uniform: int, total: int, todo: list[int], n_all: int) -> list[int]:
    """Groups kept in every block: ``plan`` per block (runtime allocation) or ``uniform`` in the blocks pruned."""
    if isinstance(plan, dict):
        return [plan.get(i, total) for i in range(n_all)]
    return [uniform if i in todo else total for i in range(n_all)]


def _allocate(state: RunState, todo: list[int], bar: Any) -> tuple[int | dict[int, int], int | dict[int, int]]:
    """(attention plan, MLP plan): the uniform counts, or {block: count} from the run's allocation (its report
    goes to ``state.result["allocation"]``)."""
    c, w = state.config, state.widths
    if c.allocation == "uniform":
        return w.keep_attn, w.keep_mlp
    t = time.perf_counter()
    if c.allocation == "runtime":
        state.events.step("runtime allocation: timing the latency table and the dense model's loss curves")
        plan_attn, plan_mlp, state.result["allocation"] = runtime_allocation(
            state.model, state.segments, c, todo, uniform=(w.keep_attn, w.keep_mlp),
            progress=(lambda msg: bar.set_postfix_str(msg)) if state.progress else None)
    elif c.allocation == "uniform-latency":
        state.events.step("uniform-latency allocation: the latency table, then the largest common kept fraction")
        plan_attn, plan_mlp, state.result["allocation"] = uniform_latency_allocation(state.model, c)
    else:
        state.events.step(f"{c.allocation} allocation: the latency table, the {c.method} candidate database "
                          "(cached) and the search over stitched models")
        plan_attn, plan_mlp, state.result["allocation"] = global_allocation(
            state.model, state.segments, state.heldout, c, state.methods, progress=state.events.step)
    state.timed("allocation_s", t)
    return plan_attn, plan_mlp


def prune(state: RunState, mem: MemoryMonitor) -> None:
    """Allocate per-block widths (any allocation but ``uniform``) and prune the blocks sequentially."""
    from tqdm.auto import tqdm

    from osscar.lm.calibrate.calibration import prune_model_sequential
    from osscar.lm.evaluation.measure import peak_rss_mb
    from osscar.methods import make_method

    c, w, adapter = state.config, state.widths, state.adapter
    state.methods = ConsumerMethods(make_method(c.method, **c.params_for("attn")),
                                    make_method(c.method, **c.params_for("mlp")), adapter.attn_consumer)
    n_all = len(adapter.layers(state.model))
    n_blocks = len(c.layers) if c.layers is not None else n_all
    bar = tqdm(total=2 * n_blocks, desc=f"prune {c.method}", disable=not state.progress)
    todo = sorted(set(c.layers)) if c.layers is not None else list(range(n_all))
    plan_attn, plan_mlp = _allocate(state, todo, bar)
    state.widths_attn = _block_widths(plan_attn, w.keep_attn, w.n_attn, todo, n_all)
    state.widths_mlp = _block_widths(plan_mlp, w.keep_mlp, w.n_mlp, todo, n_all)
    state.rss_before = peak_rss_mb()
    mem.phase("load_and_dense_eval")
    t = time.perf_counter()
    if c.allocation_apply == "database":
        from osscar.lm.allocation.apply import apply_from_database, open_database

        state.events.step(f"taking {n_blocks} blocks' weights from the {c.method} candidate database (no solver call)")
        state.outcome = apply_from_database(state.model, open_database(state.result["allocation"]),
                                            list(zip(state.widths_attn, state.widths_mlp)), adapter=adapter)
    else:
        state.events.step(f"pruning {n_blocks} blocks with {c.method}")
        state.outcome = prune_model_sequential(
            state.model, state.segments, state.methods, plan_attn, plan_mlp, damping=c.damping,
            layers=list(c.layers) if c.layers is not None else None, inputs_from=c.calibration_inputs,
            heldout=state.heldout, progress=lambda msg: (bar.update(1), bar.set_postfix_str(msg)),
            blocks=state.handle.prune_store(), adapter=adapter)
    state.timed("prune_total_s", t)
    state.timings["prune_solver_s"] = state.outcome.seconds_solver
    state.rss_after = peak_rss_mb()
    mem.phase("prune")
    bar.close()


def slice_pruned(state: RunState) -> None:
    """Slice the pruned groups away, checking on one window that the logits do not move (a subset of blocks:
    non-uniform widths, the model stays unsliced; disk offload: every block was sliced as it was written)."""
    import torch

    c, w = state.config, state.widths
    probe = next(iter(state.windows.values()))[:1] if state.windows else state.segments[:1]
    state.sliced = c.layers is None or len(set(c.layers)) == len(state.adapter.layers(state.model))
    if c.offload == "disk":
        state.manifest = state.handle.finish(state.outcome.kept, state.tok)
    elif state.sliced:  # uniform widths give a plain config; per-block widths a manifest (see slicing)
        from osscar.lm.slicing import slice_model

        with torch.no_grad():
            before = state.handle.logits(probe)
        state.manifest = slice_model(state.model, state.outcome.kept, state.adapter)
        with torch.no_grad():
            after = state.handle.logits(probe)
        state.slice_diff = float((before - after).abs().max())
    else:
        state.manifest = {"kept_attn_groups": w.keep_attn, "kept_neurons": w.keep_mlp,
                          "note": "only some blocks pruned; model not sliced (non-uniform widths)"}


def save(state: RunState, save_to: str | None) -> None:
    """Save the sliced model before it is evaluated (disk offload: written block by block into ``save_to``,
    renamed when the run ends)."""
    if not (save_to and state.sliced):
        return
    if state.config.offload != "disk":
        from osscar.lm.slicing import save_pruned

        state.events.step(f"saving the pruned model to {save_to}")
        save_pruned(state.model, state.tok, save_to)
    state.result["saved_to"] = str(save_to)


def evaluate_pruned(state: RunState) -> None:
    t = time.perf_counter()
    state.events.step("evaluating the pruned model")
    state.result["pruned"] = _evaluate(state, "pruned")
    state.timed("eval_pruned_s", t)


def measure_latency(state: RunState) -> None:
    """Prefill latency, dense vs sliced in the same process; shared by runs with the same widths (cache)."""
    from osscar.lm.evaluation.latency import prefill_comparison
    from osscar.lm.sources.models import load_model

    c = state.config
    if not (c.latency_points and state.sliced):
        return
    t = time.perf_counter()
    state.events.step("timing prefill latency, dense and pruned")
    state.result["latency"], cache_info = prefill_comparison(
        state.dense_config, state.model, (state.widths_attn, state.widths_mlp), list(c.latency_points),
        lambda: load_model(c.model, c.cache_dir, dtype=c.dtype).model, c.latency_repeats, cache_dir=c.cache_dir,
        attention_unit=c.attention_unit)
    state.result["latency_cache"] = {k: cache_info[k] for k in ("cached", "path", "measured_at")}
    state.timed("latency_s", t)
