"""The configuration of one language-model pruning run, validated in two steps before any weights load.

``LMRunConfig.__post_init__`` checks what needs no file of the model (names, fractions, method
parameters, counts, choices); :func:`check_model` then reads the model's config (from disk or the
hub; no weights) and checks what depends on it (architecture, attention unit, sequence lengths vs
the model's maximum positions, block indices; with ``offload='disk'``, that the weights are
safetensors). :func:`osscar.lm.plan.check_memory` runs :func:`check_model` first, so the CLI and
:func:`osscar.lm.run.run_lm` stop before any work; a sweep runs it while validating.

Each field carries its command-line option (:func:`osscar.config_cli.option`): ``osscar lm``'s parser
is generated from them.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from osscar import validate
from osscar.config_cli import option, parse_ints, parse_key_value, parse_names, parse_point
from osscar.lm.allocation.run_step import search_settings
from osscar.options import (ALLOCATION_APPLY, ALLOCATIONS, ATTENTION_UNITS, CALIBRATION_INPUTS, CORPUS_NAMES, DEFAULT_DAMPING,
                            EMBEDDED_LM_NAMES, MODEL_DTYPES, OFFLOAD_MODES, ZERO_SHOT_TASKS)

DEFAULT_EVAL_CORPORA = ("wiki-gensim",)


_HUB_CHECKS_DEFERRED: ContextVar[set[str] | None] = ContextVar("hub_checks_deferred", default=None)


def is_hub_id(model: str) -> bool:
    """A model named by its hub id: not embedded and not a local path."""
    return model not in EMBEDDED_LM_NAMES and not os.path.exists(model)


@contextmanager
def hub_checks_deferred() -> Iterator[set[str]]:
    """Within: a config of a hub model whose config cannot be read (offline, not cached) skips the checks
    that need that config (architecture, max positions, layers) instead of failing; the yielded set
    collects those models, for the caller to say so. For listing a plan only (``benchmarks.run --dry-run``):
    a run starts from a config built outside it."""
    skipped: set[str] = set()
    token = _HUB_CHECKS_DEFERRED.set(skipped)
    try:
        yield skipped
    finally:
        _HUB_CHECKS_DEFERRED.reset(token)


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
            the calibration and evaluation windows (:mod:`osscar.lm.text.heldout`), never given to the solver;
            each layer record gets its reconstruction error on them beside the calibration one. 0: none.
        eval_corpora, eval_seqlen (default: seqlen), eval_windows (None: all windows, the full test text;
            C4: its 256 segments). Windows follow GPTQ's loaders (:mod:`osscar.lm.text.data`).
        zero_shot_tasks, zero_shot_limit: lm-eval tasks on offline data, examples per task.
        latency_points: (batch, seqlen) prefill points timed dense vs sliced; () skips. Latency depends
            only on the architecture: runs slicing to the same widths on the same device and thread
            count share one cached measurement (:func:`osscar.lm.evaluation.latency.prefill_comparison`).
        evaluate_dense: also evaluate the dense model (ppl and zero-shot).
        layers: only prune these block indices (None: all) — for quick tests.
        allocation: ``uniform`` (default: same widths in every block), ``runtime`` (per-block widths
            for a measured-latency ``speedup``; see the module docstring; needs ``speedup``), or ``spdy`` /
            ``evolutionary`` (a global search over the method's candidate database, module removal included:
            :mod:`osscar.lm.allocation.run_step`).
        allocation_point: (batch, seqlen) of the latency table for ``runtime`` (None: (1, seqlen)).
        allocation_mlp_levels: MLP widths timed and offered to the allocator (evenly spaced).
        allocation_apply: ``spdy``/``evolutionary`` widths re-solved sequentially (``sequential``) or taken with
            their weights from the candidate database (``database``; :mod:`osscar.lm.allocation.apply`).
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
        offload: where blocks wait while not computed (:mod:`osscar.lm.offloading.offload`): ``none`` (the whole
            model on ``device``), ``cpu`` (weights in host memory, one block on ``device`` at a time) or
            ``disk`` (weights read from the model's safetensors shards one block at a time; each pruned
            block is sliced and written to the output folder as it finishes). ``cpu``/``disk`` give the
            same kept groups, weights and perplexities as ``none`` on one device; they need uniform
            allocation and no latency points or zero-shot tasks (those need the whole model on the
            device), and ``disk`` prunes every block (``layers`` unset).
        max_device_memory: a cap on the device memory the run may plan for (GiB, or a size with a unit:
            ``24GiB``, ``500MiB``); None: the device's free memory. A plan over it stops the run before
            any weights load.
        output_dir: where the CLI writes metrics (and the model with ``save_model``).
    """

    model: str = option(
        "smollm2-135m", section="model",
        help=f"embedded model ({', '.join(EMBEDDED_LM_NAMES)}: SmolLM2-135M-Instruct, Q4_1 GGUF); "
             "a GGUF file, or a folder holding one .gguf "
             "(Gemma2/Gemma3/Llama/Mistral/Phi3/Qwen2/Qwen3; converted to fp32 once, cached); a transformers folder; or a "
             "hub id (facebook/opt-1.3b)")
    method: str = option("osscar", section="target",
                         help="registered pruning method (osscar, osscar-opt, osscar-authors-ls, ziplm, mp, mp+, "
                              "thinet, lasso, ...)")
    method_params: dict[str, Any] = option(
        section="target", default_factory=dict, flag="--method-param", parse=parse_key_value, repeat=True,
        cli_default=[], to_field=dict, metavar="KEY=VALUE",
        help="extra method parameter for both consumers (JSON value), repeatable")
    attn_params: dict[str, Any] = option(
        section="target", default_factory=dict, flag="--attn-param", parse=parse_key_value, repeat=True,
        cli_default=[], to_field=dict, metavar="KEY=VALUE",
        help="method parameter for the attention consumer only, repeatable")
    mlp_params: dict[str, Any] = option(
        section="target", default_factory=dict, flag="--mlp-param", parse=parse_key_value, repeat=True,
        cli_default=[], to_field=dict, metavar="KEY=VALUE",
        help="method parameter for the MLP consumer only, repeatable")
    head_fraction: float | None = option(
        None, section="target",
        help="fraction of attention heads removed per block (grouped-query models: query heads, the same number per "
             "KV group; with --attention-unit kv-group: whole KV groups); None with no --speedup: 0.5")
    neuron_fraction: float | None = option(
        None, section="target", help="fraction of MLP neurons removed per block; None with no --speedup: 0.5")
    speedup: float | None = option(
        None, section="target",
        help="target speedup (>1) of the decoder blocks instead of the fractions: by block FLOPs with "
             "--allocation uniform, by predicted (measured-table) block latency with --allocation runtime; "
             "embeddings and the LM head are not pruned and not counted")
    allocation: str = option(
        "uniform", section="target", choices=ALLOCATIONS,
        help="per-block widths: 'uniform' removes the same fractions in every block (by block FLOPs with "
             "--speedup); 'uniform-latency' keeps the largest fraction, the same in every block, whose predicted "
             "block latency (measured table) meets --speedup; 'runtime' "
             "(ZipLM-style, any method, needs --speedup) measures a per-layer latency table on this "
             "device, gets every consumer's loss curve from one gradual-removal pass on the dense "
             "model, and picks per-block widths by knapsack so the predicted decoder-block latency is "
             "dense/SPEEDUP; the model is then pruned sequentially with those widths; 'spdy' (ZipLM's search) "
             "and 'evolutionary' (EvoPress-style) search per-block widths, whole modules removed included, "
             "over the method's own candidate database scored on the stitched model, then prune "
             "sequentially at them (the database is cached under --cache-dir)")
    allocation_point: tuple[int, int] | None = option(
        None, section="target", parse=parse_point, metavar="BxS",
        help="prefill shape BATCHxSEQLEN of the latency table for --allocation runtime (default: 1x--seqlen)")
    allocation_mlp_levels: int = option(
        16, section="target", help="MLP widths timed and offered to the runtime allocator (evenly spaced)")
    allocation_params: dict[str, Any] = option(
        section="target", default_factory=dict, flag="--allocation-param", parse=parse_key_value, repeat=True,
        cli_default=[], to_field=dict, metavar="KEY=VALUE",
        help="search setting of --allocation spdy/evolutionary (e.g. max_evaluations=40, generations=12; spdy also "
             "fitness_samples: calibration rows its fitness scores), repeatable")
    allocation_apply: str = option(
        "sequential", section="target", choices=ALLOCATION_APPLY,
        help="--allocation spdy/evolutionary: 'sequential' re-solves every block at the searched widths on the pruned "
             "model's inputs; 'database' takes each consumer's weights from the candidate database (dense-model "
             "inputs: the stitched model the search scored; no solver call after the search)")
    allocation_min_keep: float = option(
        0.0, section="target", help="--allocation runtime: no layer keeps fewer than this fraction of its groups/neurons")
    calib_corpus: str = option(
        "wiki-gensim", section="calibration", metavar="NAME|PATH",
        help=f"calibration corpus ({', '.join(CORPUS_NAMES)}): wiki-gensim (offline Wikipedia); "
             "wikitext2, ptb, c4 (C4 validation shard 0, as the OSSCAR authors; at --seed 0 and --eval-seqlen = "
             "--seqlen its segments are the first C4 perplexity segments), c4-train (C4 train shard 0, as GPTQ) - these "
             "four through `datasets` - or your own text: a .txt file (documents separated by blank lines), a folder "
             "of .txt files or a .jsonl file with a 'text' field (every 4th document is held out for evaluation). "
             "Segments are cut as GPTQ's loaders do (README: LM evaluation protocol)")
    n_samples: int = option(32, section="calibration", help="calibration segments")
    seqlen: int = option(256, section="calibration", help="tokens per calibration segment")
    damping: float = option(DEFAULT_DAMPING, section="calibration", help="λ: H + λ·mean(diag H)·I")
    heldout_samples: int = option(
        4, section="calibration",
        help="held-out windows of the calibration text (never solved on) for each layer's held-out error; 0: none")
    heldout_seqlen: int | None = option(None, section="calibration",
                                        help="tokens per held-out window (None: --seqlen)")
    eval_corpora: tuple[str, ...] = option(
        DEFAULT_EVAL_CORPORA, section="evaluation", flag="--eval-corpus", parse=str, repeat=True, cli_default=None,
        to_field=lambda v: tuple(v or DEFAULT_EVAL_CORPORA), metavar="NAME|PATH",
        help="perplexity corpus, repeatable, as --calib-corpus (wikitext2: test set, ptb: validation set, c4 and "
             "c4-train: 256 segments of C4 validation drawn with seed 0; default: wiki-gensim held-out articles)")
    eval_seqlen: int | None = option(None, section="evaluation", help="perplexity window length (None: --seqlen)")
    eval_windows: int | None = option(
        None, section="evaluation", to_field=lambda v: v or None,
        help="cap on perplexity windows per corpus, the first ones (default: all: the whole test text "
             "in non-overlapping --eval-seqlen windows, C4's 256 segments; 0: all)")
    zero_shot_tasks: tuple[str, ...] = option(
        (), section="evaluation", flag="--tasks", parse=parse_names, cli_default="", to_field=tuple,
        help=f"comma-separated zero-shot tasks ({','.join(ZERO_SHOT_TASKS)}); empty: none")
    zero_shot_limit: int | None = option(200, section="evaluation", flag="--limit", to_field=lambda v: v or None,
                                         help="examples per zero-shot task (0: all)")
    latency_points: tuple[tuple[int, int], ...] = option(
        (), section="evaluation", flag="--latency", parse=parse_point, repeat=True, cli_default=None,
        to_field=lambda v: tuple(v or ()), metavar="BxS",
        help="prefill latency point BATCHxSEQLEN timed dense vs sliced, repeatable (default: none)")
    latency_repeats: int = option(5, section="evaluation", help="timed repeats per latency point (after 2 warm-ups)")
    evaluate_dense: bool = option(False, section="evaluation", flag="--dense", switch=True,
                                  help="also evaluate the dense model")
    drift: bool = option(False, section="evaluation", switch=True,
                         help="per-block output error and final KL of the pruned vs the dense model on the held-out "
                              "windows (osscar.lm.evaluation.drift; needs --heldout-samples > 0, no offload)")
    layers: tuple[int, ...] | None = option(
        None, section="target", parse=parse_ints, cli_default="", to_field=lambda v: tuple(v) or None,
        help="comma-separated block indices to prune (empty: all)")
    seed: int = option(0, section="calibration",
                       help="seed for calibration windows (default: 0; C4 perplexity segments always use seed 0, as GPTQ's)")
    threads: int = option(1, section="execution", help="torch threads (recorded)")
    device: str = option("cpu", section="execution",
                         help="cpu, cuda or cuda:N: model, calibration, H and solvers run there")
    dtype: str = option("float32", section="model", choices=MODEL_DTYPES,
                        help="model weights/activations (H and the solvers are float64 regardless)")
    calibration_inputs: str = option(
        "pruned", section="calibration", choices=CALIBRATION_INPUTS,
        help="each block's H from the already-pruned model's inputs (the paper's sequential protocol) "
             "or from the dense model's (ablation: every method solves identical layer problems)")
    attention_unit: str | None = option(
        None, section="target", choices=ATTENTION_UNITS,
        help="grouped-query models: 'head' prunes query heads, the same number in every KV group "
             "(per-group counts: nearest, ties toward removing more, at least one kept); 'kv-group' "
             "prunes whole KV groups with their K/V heads. Unset: 'head' with --allocation uniform, "
             "'kv-group' with --allocation runtime")
    offload: str = option(
        "none", section="execution", choices=OFFLOAD_MODES,
        help="where blocks wait while another is computed: 'none' keeps the whole model on --device; "
             "'cpu' keeps the weights in host memory and moves one block at a time to --device "
             "(activations wait on the host, one batch at a time on the device); 'disk' reads each block "
             "from the model's safetensors shards when needed and writes each pruned block, sliced, to the "
             "output folder as it finishes (the model is never whole in memory; the folder reloads with "
             "from_pretrained, or osscar's loader for OPT). Same results as 'none'; not with --tasks, "
             "--latency or --allocation runtime")
    max_device_memory: str | float | None = option(
        None, section="execution", metavar="SIZE",
        help="stop before loading if the memory plan needs more than SIZE on --device (GiB, or with a "
             "unit: 24GiB, 500MiB; default: the device's free memory, CPU: available host memory)")
    output_dir: str | None = option(None, section="output", cli_default="results/lm",
                                    help="folder for the metrics JSON (and --save-model)")
    save_model: bool = option(False, section="output", switch=True,
                              help="save the sliced model under OUTPUT_DIR/NAME.model")
    cache_dir: str | None = option(None, section="model",
                                   help="model/data cache (default: $OSSCAR_CACHE or ~/.cache/osscar)")

    def __post_init__(self) -> None:
        """Every check that reads no model file and no hub (those are :func:`check_model`'s)."""
        if self.attention_unit is None:
            object.__setattr__(self, "attention_unit", "kv-group" if self.allocation == "runtime" else "head")
        self._check_target()
        self._check_method()
        self._check_data()
        self._check_execution()
        if self.offload != "none":
            self._check_offload()

    def _check_target(self) -> None:
        """What is removed: fractions or a speedup, the allocation, the attention unit."""
        validate.one_of("allocation", self.allocation, ALLOCATIONS)
        if self.allocation != "uniform":
            if self.speedup is None:
                raise ValueError(f"allocation={self.allocation!r} needs a target speedup (speedup=..., --speedup); "
                                 "head_fraction/neuron_fraction apply to the uniform allocation only")
            if self.allocation_point is not None:
                validate.int_pair("allocation_point", self.allocation_point)
        if self.allocation in ("uniform-latency", "spdy", "evolutionary") and self.layers is not None:
            raise ValueError(f"allocation={self.allocation!r} allocates every block: leave layers unset")
        search_settings(self.allocation, self.allocation_params, self.seed)
        validate.one_of("allocation_apply", self.allocation_apply, ALLOCATION_APPLY)
        if self.allocation_apply == "database" and self.allocation not in ("spdy", "evolutionary"):
            raise ValueError(f"allocation_apply='database' takes the weights from a global search's candidate database:"
                             f" use allocation 'spdy' or 'evolutionary' (got {self.allocation!r})")
        if self.allocation == "evolutionary" and self.heldout_samples == 0:
            raise ValueError("allocation='evolutionary' scores KL on the held-out windows: heldout_samples must be > 0")
        validate.positive_int("allocation_mlp_levels", self.allocation_mlp_levels)
        validate.fraction("allocation_min_keep", self.allocation_min_keep)
        validate.fraction("head_fraction", self.head_fraction)
        validate.fraction("neuron_fraction", self.neuron_fraction)
        if self.head_fraction == 0 and self.neuron_fraction == 0:
            raise ValueError("head_fraction and neuron_fraction are both 0: nothing would be pruned "
                             "(evaluate the dense model without pruning instead)")
        if self.speedup is not None:
            validate.finite_above("speedup", self.speedup, 1)
            if self.head_fraction is not None or self.neuron_fraction is not None:
                raise ValueError("give either speedup or head_fraction/neuron_fraction, not both")
        validate.one_of("attention_unit", self.attention_unit, ATTENTION_UNITS)
        if self.allocation == "runtime" and self.attention_unit == "head":
            raise ValueError("allocation='runtime' measures latency per KV group: use attention_unit='kv-group'")
        if self.layers is not None and (not isinstance(self.layers, tuple)
                                        or any(isinstance(i, bool) or not isinstance(i, int) for i in self.layers)):
            raise ValueError(f"layers must be a tuple of block indices, got {self.layers!r}")

    def _check_method(self) -> None:
        """The method exists and accepts its parameters (both consumers)."""
        from osscar.methods import available_methods, make_method

        if not isinstance(self.model, str):
            raise ValueError(f"model must be a name, a path or a hub id, got {self.model!r}")
        validate.one_of("method", self.method, available_methods())
        for name in ("method_params", "attn_params", "mlp_params"):
            if not isinstance(getattr(self, name), dict):
                raise ValueError(f"{name} must be a dict, got {type(getattr(self, name)).__name__}")
        for part in ("attn", "mlp"):
            make_method(self.method, **self.params_for(part))  # unknown / invalid params -> ValueError

    def _check_data(self) -> None:
        """Corpora (a user's text files must exist and have a known format), tasks, window counts and lengths."""
        from osscar.lm.text import data as lm_data

        if not isinstance(self.eval_corpora, tuple) or not isinstance(self.zero_shot_tasks, tuple):
            raise ValueError("eval_corpora and zero_shot_tasks must be tuples of names")
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
        for t in self.zero_shot_tasks:
            validate.one_of("zero_shot_tasks", t, ZERO_SHOT_TASKS)
        for name in ("n_samples", "seqlen"):
            validate.positive_int(name, getattr(self, name))
        for name in ("eval_seqlen", "heldout_seqlen", "eval_windows", "zero_shot_limit"):
            validate.positive_int(name, getattr(self, name), allow_none=True)
        validate.nonneg_int("heldout_samples", self.heldout_samples, "0: no held-out error")
        validate.nonneg_int("seed", self.seed)
        validate.finite_nonneg("damping", self.damping)
        validate.one_of("calibration_inputs", self.calibration_inputs, CALIBRATION_INPUTS)
        validate.positive_int("latency_repeats", self.latency_repeats)
        for pt in self.latency_points:
            validate.int_pair("latency_points", tuple(pt) if isinstance(pt, list) else pt,
                              "(batch, seqlen) pairs of positive ints")

    def _check_execution(self) -> None:
        """Threads, device name (availability is checked where the run executes), dtype, offload, memory cap."""
        from osscar.devices import check_device_name, check_model_dtype

        validate.positive_int("threads", self.threads)
        check_device_name(self.device, "device")
        check_model_dtype(self.dtype, "dtype")
        validate.one_of("offload", self.offload, OFFLOAD_MODES)
        if self.drift and (self.heldout_samples == 0 or self.offload != "none"):
            raise ValueError("drift compares the pruned and the dense model on the held-out windows: it needs "
                             "heldout_samples > 0 and offload='none'")
        if self.max_device_memory is not None:
            validate.parse_bytes(self.max_device_memory)  # ValueError naming max_device_memory

    def _check_offload(self) -> None:
        """What block offloading cannot do yet, refused before any work (module docstring)."""
        whole = "needs the whole model on the device"
        if self.zero_shot_tasks:
            raise ValueError(f"offload={self.offload!r}: zero_shot_tasks (lm-eval) {whole}; use offload='none', or "
                             "evaluate the saved model (save_model) separately")
        if self.latency_points:
            raise ValueError(f"offload={self.offload!r}: latency_points time the whole model and {whole}; "
                             "use offload='none'")
        if self.allocation != "uniform":
            raise ValueError(f"offload={self.offload!r}: allocation={self.allocation!r} is not implemented with "
                             "offloading; use allocation='uniform' or offload='none'")
        if self.offload == "disk" and self.layers is not None:
            raise ValueError("offload='disk' writes a sliced model and prunes every block: leave layers unset")

    # -- derived --------------------------------------------------------------------------------
    def params_for(self, part: str) -> dict[str, Any]:
        p = dict(self.method_params)
        p.update(self.attn_params if part == "attn" else self.mlp_params)
        return p

    def fractions(self) -> tuple[float, float]:
        """(head_fraction, neuron_fraction) requested; defaults 0.5 / 0.5."""
        if self.speedup is not None:
            from osscar.lm.evaluation.measure import fractions_for_speedup

            f = fractions_for_speedup(self.speedup)
            return f, f
        hf = 0.5 if self.head_fraction is None else float(self.head_fraction)
        nf = 0.5 if self.neuron_fraction is None else float(self.neuron_fraction)
        return hf, nf

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def check_model(config: LMRunConfig) -> None:
    """The checks of ``config`` that read the model's files or the hub (its config only, no weights): the model
    exists (an embedded name, a GGUF file and its header, a folder, a hub id), the architecture (an adapter),
    what its attention allows, sequence lengths against its maximum positions, block indices, and with
    ``offload='disk'`` that the weights are safetensors shards. ValueError
    naming the field. :func:`osscar.lm.plan.check_memory` runs it first (the CLI, :func:`osscar.lm.run.run_lm`),
    and a sweep runs it on every config before the first run.
    """
    from osscar.lm.adapters import get_adapter
    from osscar.lm.sources.models import EMBEDDED_MODELS, check_gguf_model, is_known_model, load_config

    check_gguf_model(config.model)  # a .gguf that is missing, not GGUF, or of an unsupported architecture
    if not is_known_model(config.model):
        raise ValueError(
            f"model={config.model!r} is not known; allowed: {', '.join(EMBEDDED_MODELS)} (embedded), "
            "a GGUF file (or a folder with one), an existing local folder, or a hub id 'org/repo' "
            "(e.g. facebook/opt-1.3b)")
    if config.offload == "disk":
        from osscar.lm.offloading.offload import check_disk_source

        check_disk_source(config.model, config.cache_dir)
    try:
        mconf = load_config(config.model, config.cache_dir)
    except Exception as e:  # noqa: BLE001
        deferred = _HUB_CHECKS_DEFERRED.get()
        if deferred is not None and is_hub_id(config.model):
            deferred.add(config.model)  # listing a plan offline: the checks below run when the run starts
            return
        raise ValueError(f"model={config.model!r}: cannot read its config ({type(e).__name__}: {str(e)[:200]})") from e
    adapter = get_adapter(mconf, config.attention_unit)  # unsupported architecture -> ValueError
    hf = config.fractions()[0]
    if config.attention_unit == "kv-group" and adapter.n_kv_heads == 1 and adapter.n_heads > 1 and hf > 0:
        raise ValueError("attention_unit='kv-group' on a model with one KV head (multi-query attention) "
                         "cannot prune attention; use attention_unit='head' (prunes query heads)")
    if adapter.attention_fixed_reason and hf > 0:
        asked = f"speedup={config.speedup:g}" if config.speedup is not None else f"head_fraction={hf:g}"
        raise ValueError(f"{asked}: {mconf.model_type} {adapter.attention_fixed_reason}")
    maxpos = adapter.max_positions()
    for name in ("seqlen", "eval_seqlen", "heldout_seqlen"):
        v = getattr(config, name)
        if v is not None and v > maxpos:
            raise ValueError(f"{name}={v} exceeds the model's max_position_embeddings={maxpos}")
    points = list(config.latency_points)
    if config.allocation == "runtime" and config.allocation_point is not None:
        points.append(config.allocation_point)
    for _b, s in points:
        if s > maxpos:
            raise ValueError(f"latency_points seqlen {s} exceeds the model's max_position_embeddings={maxpos}")
    n = int(mconf.num_hidden_layers)
    if config.layers is not None and any(not 0 <= i < n for i in config.layers):
        raise ValueError(f"layers must be a tuple of block indices in [0, {n}), got {config.layers!r}")
