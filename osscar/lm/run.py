"""One language-model pruning run: :class:`LMRunConfig` in, a metrics + provenance dict out.

``LMRunConfig.__post_init__`` validates everything cheap before any weights are loaded (names,
fractions, method parameters, sequence length vs the model's maximum positions — read from the
config only). :func:`run_lm` then tokenizes the calibration corpus (and fails if it is too short
for ``n_samples × seqlen`` tokens) before it loads the weights.

Per-layer targets: ``head_fraction`` of the attention groups (heads for OPT, whole KV groups for
Llama/GQA) and ``neuron_fraction`` of the MLP neurons are removed in every block; or ``speedup``
S sets both to 1 − 1/S (block-FLOPs model in :mod:`osscar.lm.measure`). A fraction r of n groups
removes round(r·n) groups, ties rounded down, at least one group kept; the fractions actually
applied are reported (``applied``).

**Runtime-aware allocation** (``allocation="runtime"``, ZipLM's idea, any registered method): the
target ``speedup`` is then a *measured-latency* speedup of the decoder blocks at one prefill shape
(``allocation_point``, default (1, seqlen)) — the same quantity uniform allocation targets by block
FLOPs; embeddings and the LM head are neither pruned nor counted — and every block gets its own
widths. Two passes:

1. *Loss curves on the dense model.* :func:`osscar.lm.calibration.collect_loss_curves` runs one
   calibration forward through the dense model (nothing pruned) and, for every block and
   consumer, one Stage-A gradual-removal pass (:func:`osscar.allocation.removal_path`) giving the
   least-squares loss at every candidate level, normalised by the dense output energy
   ½ tr(ŴᵀHŴ) so that layers are comparable.
2. *Allocate.* :func:`osscar.lm.latency.latency_table` (measured once, cached) gives the latency
   of each candidate level: attention at every group count, the MLP at ``allocation_mlp_levels``
   widths. With T_dense the table's predicted dense latency and T_fixed its unprunable part
   (embeddings, norms, LM head, per-block rest, blocks not pruned) and T_model the embeddings/LM
   head alone, the multiple-choice knapsack :func:`osscar.allocation.allocate` picks one level per
   consumer minimising the summed loss subject to
   Σ latency ≤ T_model + (T_dense − T_model) / speedup − T_fixed.
3. *Prune.* :func:`osscar.lm.calibration.prune_model_sequential` prunes sequentially (pruned-model
   inputs, as in the uniform case) with the chosen per-block counts and the requested method.

The loss curves come from dense inputs while pass 3 sees pruned inputs: the allocation is an
estimate, the pruning itself is the usual sequential one. The chosen levels, the predicted
latency (and that of the uniform allocation for the same target) and the target are reported
under ``allocation`` in the metrics. ``allocation="uniform"`` (default) is the behaviour above.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import platform
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from osscar.devices import (check_device_name, check_model_dtype, device_label, peak_accelerator_mb, resolve_device,
                            torch_threads)
from osscar.io import atomic_write_json
from osscar.lm import data as lm_data
from osscar.lm.calibration import CALIBRATION_INPUTS
from osscar.lm.evaluate import ZERO_SHOT_TASKS
from osscar.lm.models import EMBEDDED_MODELS, check_gguf_model, is_known_model, load_config
from osscar.lm.targets import heads_removed, removed_count  # noqa: F401  (re-exported)
from osscar.options import ALLOCATIONS, ATTENTION_UNITS, OFFLOAD_MODES




def _check_fraction(name: str, v: Any) -> None:
    if v is None:
        return
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0 <= v < 1):
        raise ValueError(f"{name} must be a number in [0, 1), got {v!r}")


def _check_pos_int(name: str, v: Any, allow_none: bool = False) -> None:
    if v is None and allow_none:
        return
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{name} must be a positive integer, got {v!r}")


@dataclass(frozen=True)
class LMRunConfig:
    """Everything one run needs. Validation happens here, before any model load.

    Attributes:
        model: ``smollm2-135m`` (embedded), a local folder, or a hub id such as ``facebook/opt-1.3b``.
        method: registered pruning method (``osscar``, ``ziplm``, ``mp``, ``mp+``, ...).
        method_params: parameters for both consumers (e.g. ``{"t_hat": 20, "p_hat": 10}``).
        attn_params / mlp_params: per-consumer overrides of ``method_params``.
        head_fraction / neuron_fraction: fraction of attention groups / neurons removed per block.
        speedup: target decoder-block speedup (> 1) instead of the fractions (block FLOPs for uniform
            allocation, measured block latency for runtime allocation).
        calib_corpus, n_samples, seqlen: calibration windows (seeded with ``seed``).
        damping: λ in H + λ·mean(diag H)·I.
        heldout_samples, heldout_seqlen (default: seqlen): windows of the calibration text disjoint from
            the calibration and evaluation windows (:mod:`osscar.lm.heldout`), never given to the solver;
            each layer record gets its reconstruction error on them beside the calibration one. 0: none.
        eval_corpora, eval_seqlen (default: seqlen), eval_windows (None: all windows, the full test text;
            C4: its 256 segments). Windows follow GPTQ's loaders (:mod:`osscar.lm.data`).
        zero_shot_tasks, zero_shot_limit: lm-eval tasks on offline data, examples per task.
        latency_points: (batch, seqlen) prefill points timed dense vs sliced; () skips. Latency depends
            only on the architecture: runs slicing to the same widths on the same device and thread
            count share one cached measurement (:func:`osscar.lm.latency.prefill_comparison`).
        evaluate_dense: also evaluate the dense model (ppl and zero-shot).
        layers: only prune these block indices (None: all) — for quick tests.
        allocation: ``uniform`` (default: same widths in every block) or ``runtime`` (per-block widths
            for a measured-latency ``speedup``; see the module docstring; needs ``speedup``).
        allocation_point: (batch, seqlen) of the latency table for ``runtime`` (None: (1, seqlen)).
        allocation_mlp_levels: MLP widths timed and offered to the allocator (evenly spaced).
        allocation_min_keep: with ``runtime``, no consumer keeps fewer than this fraction of its
            groups (at least one group): a guard against the normalised loss under-rating layers.
        seed, threads: recorded; ``torch.set_num_threads(threads)``.
        device: where the model, the calibration forwards, H and the solvers run (``cpu``, ``cuda``,
            ``cuda:N``; checked here, before any load); latency is measured there too.
        calibration_inputs: ``pruned`` (default, the sequential protocol: each block's H from the
            inputs of the already-pruned model) or ``dense`` (ablation: every H from the dense model,
            so all methods solve identical layer problems; see ``prune_model_sequential``).
        attention_unit: for grouped-query models, ``head`` (prune query heads, the same number in
            every KV group) or ``kv-group`` (whole KV groups, K/V heads included); None: ``head``, or
            ``kv-group`` with ``allocation='runtime'`` (its latency tables are per KV group). See
            :mod:`osscar.lm.adapters`. Head counts per KV group are rounded by :func:`heads_removed`.
        dtype: the model's weights and activations (``float32``, ``float16``, ``bfloat16``; the
            authors' OPT runs use float16 on a GPU). H is accumulated from float32 products into
            float64 and the solvers work in float64 whatever this is.
        offload: where blocks wait while not computed: only ``none`` (today's behaviour: the whole model
            on ``device``) is implemented; the memory plan (:mod:`osscar.lm.plan`) takes it as a parameter.
        max_device_memory: a cap on the device memory the run may plan for (GiB, or a size with a unit:
            ``24GiB``, ``500MiB``); None: the device's free memory. A plan over it stops the run before
            any weights load.
        output_dir: where the CLI writes metrics (and the model with ``save_model``).
    """

    model: str = "smollm2-135m"
    method: str = "osscar"
    method_params: dict[str, Any] = field(default_factory=dict)
    attn_params: dict[str, Any] = field(default_factory=dict)
    mlp_params: dict[str, Any] = field(default_factory=dict)
    head_fraction: float | None = None
    neuron_fraction: float | None = None
    speedup: float | None = None
    allocation: str = "uniform"
    allocation_point: tuple[int, int] | None = None
    allocation_mlp_levels: int = 16
    allocation_min_keep: float = 0.0
    calib_corpus: str = "wiki-gensim"
    n_samples: int = 32
    seqlen: int = 256
    damping: float = 0.01
    heldout_samples: int = 4
    heldout_seqlen: int | None = None
    eval_corpora: tuple[str, ...] = ("wiki-gensim",)
    eval_seqlen: int | None = None
    eval_windows: int | None = None
    zero_shot_tasks: tuple[str, ...] = ()
    zero_shot_limit: int | None = 200
    latency_points: tuple[tuple[int, int], ...] = ()
    latency_repeats: int = 5
    evaluate_dense: bool = False
    layers: tuple[int, ...] | None = None
    seed: int = 0
    threads: int = 1
    device: str = "cpu"
    dtype: str = "float32"
    calibration_inputs: str = "pruned"
    attention_unit: str | None = None
    offload: str = "none"
    max_device_memory: str | float | None = None
    output_dir: str | None = None
    save_model: bool = False
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        from osscar.methods import available_methods, make_method

        if self.allocation not in ALLOCATIONS:
            raise ValueError(f"allocation={self.allocation!r} is unknown; allowed: {', '.join(ALLOCATIONS)}")
        if self.allocation == "runtime":
            if self.speedup is None:
                raise ValueError("allocation='runtime' needs a target speedup (speedup=..., --speedup); "
                                 "head_fraction/neuron_fraction apply to the uniform allocation only")
            pt = self.allocation_point
            if pt is not None and (not isinstance(pt, tuple) or len(pt) != 2
                                   or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in pt)):
                raise ValueError(f"allocation_point must be a (batch, seqlen) pair of positive ints, got {pt!r}")
        _check_pos_int("allocation_mlp_levels", self.allocation_mlp_levels)
        _check_fraction("allocation_min_keep", self.allocation_min_keep)
        if isinstance(self.model, str):
            check_gguf_model(self.model)  # a .gguf that is missing, not GGUF, or of an unsupported architecture
        if not isinstance(self.model, str) or not is_known_model(self.model):
            raise ValueError(
                f"model={self.model!r} is not known; allowed: {', '.join(EMBEDDED_MODELS)} (embedded), "
                "a GGUF file (or a folder with one), an existing local folder, or a hub id 'org/repo' "
                "(e.g. facebook/opt-1.3b)")
        methods = available_methods()
        if self.method not in methods:
            raise ValueError(f"method={self.method!r} is unknown; allowed: {', '.join(methods)}")
        for name in ("method_params", "attn_params", "mlp_params"):
            if not isinstance(getattr(self, name), dict):
                raise ValueError(f"{name} must be a dict, got {type(getattr(self, name)).__name__}")
        for part in ("attn", "mlp"):
            make_method(self.method, **self.params_for(part))  # unknown / invalid params -> ValueError
        _check_fraction("head_fraction", self.head_fraction)
        _check_fraction("neuron_fraction", self.neuron_fraction)
        if self.head_fraction == 0 and self.neuron_fraction == 0:
            raise ValueError("head_fraction and neuron_fraction are both 0: nothing would be pruned "
                             "(evaluate the dense model without pruning instead)")
        if self.speedup is not None:
            if isinstance(self.speedup, bool) or not isinstance(self.speedup, (int, float)) or not self.speedup > 1 \
                    or not math.isfinite(self.speedup):
                raise ValueError(f"speedup must be a finite number > 1, got {self.speedup!r}")
            if self.head_fraction is not None or self.neuron_fraction is not None:
                raise ValueError("give either speedup or head_fraction/neuron_fraction, not both")
        for key, c in (("calib_corpus", self.calib_corpus), *(("eval_corpora", e) for e in self.eval_corpora)):
            if not isinstance(c, str):
                raise ValueError(f"{key}: corpus names must be strings, got {c!r}")
            if c not in lm_data.CORPORA:
                if not lm_data.is_user_corpus(c):
                    raise ValueError(f"{key}: corpus {c!r} is unknown; allowed: "
                                     f"{', '.join(lm_data.CORPORA)}, or {lm_data.USER_TEXT_HELP}")
                try:
                    lm_data.user_corpus_files(c)  # exists and has a known format
                except ValueError as e:
                    raise ValueError(f"{key}: {e}") from None
        if not isinstance(self.eval_corpora, tuple) or not isinstance(self.zero_shot_tasks, tuple):
            raise ValueError("eval_corpora and zero_shot_tasks must be tuples of names")
        for t in self.zero_shot_tasks:
            if t not in ZERO_SHOT_TASKS:
                raise ValueError(f"zero_shot_tasks: {t!r} is unknown; allowed: {', '.join(ZERO_SHOT_TASKS)}")
        _check_pos_int("n_samples", self.n_samples)
        _check_pos_int("seqlen", self.seqlen)
        _check_pos_int("eval_seqlen", self.eval_seqlen, allow_none=True)
        if isinstance(self.heldout_samples, bool) or not isinstance(self.heldout_samples, int) or self.heldout_samples < 0:
            raise ValueError(f"heldout_samples must be an integer ≥ 0 (0: no held-out error), got {self.heldout_samples!r}")
        _check_pos_int("heldout_seqlen", self.heldout_seqlen, allow_none=True)
        _check_pos_int("eval_windows", self.eval_windows, allow_none=True)
        _check_pos_int("zero_shot_limit", self.zero_shot_limit, allow_none=True)
        _check_pos_int("threads", self.threads)
        check_device_name(self.device, "device")  # availability: where the run executes
        check_model_dtype(self.dtype, "dtype")
        if self.attention_unit is None:
            object.__setattr__(self, "attention_unit", "kv-group" if self.allocation == "runtime" else "head")
        if self.attention_unit not in ATTENTION_UNITS:
            raise ValueError(f"attention_unit={self.attention_unit!r} is unknown; allowed: {', '.join(ATTENTION_UNITS)}")
        if self.allocation == "runtime" and self.attention_unit == "head":
            raise ValueError("allocation='runtime' measures latency per KV group: use attention_unit='kv-group'")
        if self.calibration_inputs not in CALIBRATION_INPUTS:
            raise ValueError(f"calibration_inputs must be 'pruned' or 'dense', got {self.calibration_inputs!r}")
        _check_pos_int("latency_repeats", self.latency_repeats)
        if self.offload not in OFFLOAD_MODES:
            raise ValueError(f"offload={self.offload!r} is not implemented; allowed: {', '.join(OFFLOAD_MODES)}")
        if self.max_device_memory is not None:
            from osscar.lm.plan import parse_bytes

            parse_bytes(self.max_device_memory)  # ValueError naming max_device_memory
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an integer ≥ 0, got {self.seed!r}")
        if not (isinstance(self.damping, (int, float)) and math.isfinite(self.damping) and self.damping >= 0):
            raise ValueError(f"damping must be a finite number ≥ 0, got {self.damping!r}")
        for pt in self.latency_points:
            if len(pt) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in pt):
                raise ValueError(f"latency_points must be (batch, seqlen) pairs of positive ints, got {pt!r}")
        try:
            config = load_config(self.model, self.cache_dir)
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"model={self.model!r}: cannot read its config ({type(e).__name__}: {str(e)[:200]})") from e
        from osscar.lm.adapters import get_adapter

        config.osscar_attention_unit = self.attention_unit
        adapter = get_adapter(config)  # unsupported architecture -> ValueError
        if (self.attention_unit == "kv-group" and adapter.n_kv_heads == 1 and adapter.n_heads > 1
                and (self.head_fraction or 0) > 0):
            raise ValueError("attention_unit='kv-group' on a model with one KV head (multi-query attention) "
                             "cannot prune attention; use attention_unit='head' (prunes query heads)")
        if adapter.attention_fixed_reason and self.fractions()[0] > 0:
            asked = f"speedup={self.speedup:g}" if self.speedup is not None else f"head_fraction={self.fractions()[0]:g}"
            raise ValueError(f"{asked}: {config.model_type} {adapter.attention_fixed_reason}")
        maxpos = adapter.max_positions()
        for name in ("seqlen", "eval_seqlen", "heldout_seqlen"):
            v = getattr(self, name)
            if v is not None and v > maxpos:
                raise ValueError(f"{name}={v} exceeds the model's max_position_embeddings={maxpos}")
        points = list(self.latency_points)
        if self.allocation == "runtime" and self.allocation_point is not None:
            points.append(self.allocation_point)
        for _b, s in points:
            if s > maxpos:
                raise ValueError(f"latency_points seqlen {s} exceeds the model's max_position_embeddings={maxpos}")
        if self.layers is not None:
            n = int(config.num_hidden_layers)
            if not isinstance(self.layers, tuple) or any(not isinstance(i, int) or not 0 <= i < n for i in self.layers):
                raise ValueError(f"layers must be a tuple of block indices in [0, {n}), got {self.layers!r}")

    # -- derived --------------------------------------------------------------------------------
    def params_for(self, part: str) -> dict[str, Any]:
        p = dict(self.method_params)
        p.update(self.attn_params if part == "attn" else self.mlp_params)
        return p

    def fractions(self) -> tuple[float, float]:
        """(head_fraction, neuron_fraction) requested; defaults 0.5 / 0.5."""
        if self.speedup is not None:
            from osscar.lm.measure import fractions_for_speedup

            f = fractions_for_speedup(self.speedup)
            return f, f
        hf = 0.5 if self.head_fraction is None else float(self.head_fraction)
        nf = 0.5 if self.neuron_fraction is None else float(self.neuron_fraction)
        return hf, nf

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


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
    from osscar.memory import MemoryMonitor

    if plan is None:
        from osscar.lm.plan import check_memory

        plan, _, err = check_memory(config)
        if err is not None:
            raise ValueError(err)
    with torch_threads(config.threads), MemoryMonitor(device=config.device) as mem:
        result = _run_lm(config, progress, save_to, mem)
    result["memory"].update(mem.summary())
    result["memory_plan"] = plan.to_dict()
    return result


def _run_lm(config: LMRunConfig, progress: bool, save_to: str | None, mem: Any) -> dict[str, Any]:
    import torch
    from tqdm.auto import tqdm

    from osscar.lm.adapters import get_adapter
    from osscar.lm.calibration import prune_model_sequential
    from osscar.lm.evaluate import perplexity, zero_shot
    from osscar.lm.heldout import heldout_segments
    from osscar.lm.latency import prefill_comparison
    from osscar.lm.measure import flops_per_token, param_count, peak_rss_mb
    from osscar.lm.models import load_model, load_tokenizer
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
    loaded = load_model(config.model, config.cache_dir, dtype=config.dtype)
    model, tok = loaded.model.to(device), loaded.tokenizer
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
            out[c] = perplexity(model, w, progress=bar.update)
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
                                     progress=lambda msg: (bar.update(1), bar.set_postfix_str(msg)))
    timings["prune_total_s"] = time.perf_counter() - t
    timings["prune_solver_s"] = outcome.seconds_solver
    rss_after = peak_rss_mb()
    mem.phase("prune")
    bar.close()

    # 4. slice (check it keeps the pruned model's function on one window)
    probe = next(iter(windows.values()))[:1] if windows else segments[:1]
    with torch.no_grad():
        before = model(probe, use_cache=False).logits
    sliced = config.layers is None or len(set(config.layers)) == len(adapter.layers(model))
    if sliced:  # uniform widths give a plain config; per-block widths a manifest (see slicing)
        manifest = slice_model(model, outcome.kept)
        with torch.no_grad():
            after = model(probe, use_cache=False).logits
        slice_diff: float | None = float((before - after).abs().max())
    else:  # a subset of blocks gives non-uniform widths: evaluate the pruned, unsliced model
        manifest = {"kept_attn_groups": keep_attn, "kept_neurons": keep_mlp,
                    "note": "only some blocks pruned; model not sliced (non-uniform widths)"}
        slice_diff = None

    # 5. evaluate the sliced model
    t = time.perf_counter()
    result["pruned"] = eval_all("pruned")
    timings["eval_pruned_s"] = time.perf_counter() - t

    if config.allocation == "runtime":
        pruned_flops = flops_per_token(_orig_config(adapter), widths_attn, widths_mlp)
    else:
        pruned_flops = flops_per_token(_orig_config(adapter), keep_attn, keep_mlp)  # if every block is pruned
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
        save_pruned(model, tok, save_to)
        result["saved_to"] = str(save_to)
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


def runtime_allocation(model: Any, segments: Any, config: LMRunConfig, todo: list[int],
                       uniform: tuple[int, int] | None = None, progress: Any = None,
                       ) -> tuple[dict[int, int], dict[int, int], dict[str, Any]]:
    """Passes 1–2 of runtime-aware allocation (module docstring) on the dense ``model``.

    Returns ({block: attention groups kept}, {block: neurons kept}, report) for the blocks in
    ``todo``. ``uniform``: the uniform (attn, mlp) counts, whose predicted latency is reported
    for comparison. ValueError if the target latency is out of reach.
    """
    from osscar.allocation import allocate
    from osscar.lm.adapters import get_adapter
    from osscar.lm.calibration import collect_loss_curves
    from osscar.lm.latency import latency_table

    adapter = get_adapter(model)
    n_all = len(adapter.layers(model))
    n_attn, n_mlp = adapter.n_attn_groups, adapter.ffn_dim
    batch, seqlen = config.allocation_point or (1, config.seqlen)
    table = latency_table(model.config, batch=batch, seqlen=seqlen, threads=config.threads,
                          repeats=config.latency_repeats, mlp_levels=config.allocation_mlp_levels,
                          device=config.device, dtype=config.dtype, cache_dir=config.cache_dir)
    floor = {"attn": max(1, math.ceil(config.allocation_min_keep * n_attn - 1e-9)),
             "mlp": max(1, math.ceil(config.allocation_min_keep * n_mlp - 1e-9))}
    levels = {"attn": [k for k in sorted(table.attn) if k >= floor["attn"]],
              "mlp": [k for k in sorted(table.mlp) if k >= floor["mlp"]]}
    curves = collect_loss_curves(model, segments, levels, damping=config.damping, layers=todo, progress=progress)
    losses, lats = [], []
    for i in todo:
        losses += [curves[i]["attn"], curves[i]["mlp"]]
        lats += [{k: table.attn_latency(k) for k in levels["attn"]}, {k: table.mlp_latency(k) for k in levels["mlp"]}]
    dense = table.dense_s()
    # ``speedup`` is the decoder blocks' speedup, as for uniform allocation (there by block FLOPs):
    # embeddings and the LM head are neither pruned nor counted.
    target = table.fixed_model_s + (dense - table.fixed_model_s) / float(config.speedup)
    fixed = table.fixed_s() + (n_all - len(todo)) * (table.attn_latency(n_attn) + table.mlp_latency(n_mlp))
    budget = target - fixed
    fastest = fixed + sum(min(la.values()) for la in lats)
    if budget <= 0 or fastest > target:
        raise ValueError(
            f"runtime allocation: target latency {target * 1e3:.3g} ms (dense {dense * 1e3:.3g} ms / speedup "
            f"{config.speedup}) is below the fastest reachable {fastest * 1e3:.3g} ms (unprunable part "
            f"{fixed * 1e3:.3g} ms); lower the speedup")
    chosen = allocate(losses, lats, budget)
    keep_attn = {i: int(chosen[2 * j]) for j, i in enumerate(todo)}
    keep_mlp = {i: int(chosen[2 * j + 1]) for j, i in enumerate(todo)}
    predicted = fixed + sum(la[c] for la, c in zip(lats, chosen))
    report: dict[str, Any] = {
        "scheme": "two-pass: loss curves on the dense model (Stage-A removal path), knapsack, sequential pruning",
        "target_speedup": float(config.speedup), "point": [batch, seqlen], "min_keep": config.allocation_min_keep,
        "levels": levels,
        "dense_latency_pred_s": dense, "target_latency_s": target, "fixed_latency_s": fixed, "budget_s": budget,
        "predicted_latency_s": predicted, "predicted_speedup": dense / predicted,
        "predicted_block_speedup": (dense - table.fixed_model_s) / (predicted - table.fixed_model_s),
        "kept_attn_groups": [keep_attn.get(i, n_attn) for i in range(n_all)],
        "kept_neurons": [keep_mlp.get(i, n_mlp) for i in range(n_all)],
        "loss_pred": sum(lo[c] for lo, c in zip(losses, chosen)),
        "latency_table": {"path": table.info.get("path"), "cached": table.info.get("cached"), "key": table.key,
                          "attn_s": {str(k): v for k, v in table.attn.items()},
                          "mlp_s": {str(k): v for k, v in table.mlp.items()},
                          "fixed_model_s": table.fixed_model_s, "block_rest_s": table.block_rest_s},
        "loss_curves": {str(i): {p: {str(k): v for k, v in c.items()} for p, c in parts.items()}
                        for i, parts in curves.items()},
    }
    if uniform is not None:
        from osscar.allocation import loss_at

        ua, um = uniform
        u_widths = ([ua if i in todo else n_attn for i in range(n_all)], [um if i in todo else n_mlp for i in range(n_all)])
        report["uniform_predicted_latency_s"] = table.predict(*u_widths)
        report["uniform_predicted_speedup"] = dense / report["uniform_predicted_latency_s"]
        report["uniform_kept"] = [ua, um]
        try:
            report["uniform_loss_pred"] = sum(loss_at(curves[i]["attn"], ua) + loss_at(curves[i]["mlp"], um)
                                              for i in todo)
        except ValueError:  # uniform widths below the smallest candidate level
            report["uniform_loss_pred"] = None
    return keep_attn, keep_mlp, report


def _orig_config(adapter: Any) -> Any:
    """A copy of the adapter's config as it was before slicing (for the FLOPs model)."""
    cfg = copy.deepcopy(adapter.config)
    man = getattr(cfg, "osscar_pruned", None)
    if man:
        orig = man["original"]
        if cfg.model_type == "opt":
            cfg.ffn_dim = orig["ffn_dim"]
        else:
            cfg.intermediate_size = orig["ffn_dim"]
            cfg.num_attention_heads = orig["num_attention_heads"]
            cfg.num_key_value_heads = orig.get("num_key_value_heads", orig["attn_groups"])
    return cfg


def write_json_atomic(obj: Any, path: str) -> None:
    atomic_write_json(path, obj)
