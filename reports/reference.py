"""Published numbers placed *beside* ours in the report. None of these were measured here.

Copied from docs/paper_protocol.md (the project's protocol), which cites:

* Dense OPT perplexities: the GPTQ (Frantar et al., ICLR 2023) and SparseGPT (Frantar & Alistarh,
  ICML 2023) papers — WikiText-2 raw test, PTB validation, C4 (256 × 2048-token validation
  segments), 2048-token non-overlapping windows, fp16 weights.
* Headline claims: the abstract of OSSCAR (Meng, Behdin, Wang, Mazumder, "OSSCAR: One-Shot
  Structured Pruning in Vision and Language Models with Combinatorial Optimization", ICML 2024).
  The paper's per-model tables were not available to the protocol's authors; only these claims are.
* Dense vision accuracies: as reported by the same lab's earlier papers (docs/paper_protocol.md marks them
  unverified).
"""

from __future__ import annotations

SOURCE_PPL = "GPTQ / SparseGPT papers (dense fp16 OPT, GPTQ perplexity protocol), via docs/paper_protocol.md"
SOURCE_CLAIMS = "OSSCAR paper abstract (Meng et al., ICML 2024), via docs/paper_protocol.md"
SOURCE_VISION = "earlier papers of the OSSCAR authors' lab, via docs/paper_protocol.md (unverified)"

# model id -> corpus (our corpus names, osscar.lm.text.data.CORPORA) -> published dense perplexity
DENSE_PPL: dict[str, dict[str, float]] = {
    "facebook/opt-1.3b": {"wikitext2": 14.62, "ptb": 20.29, "c4": 16.07},
    "facebook/opt-2.7b": {"wikitext2": 12.47, "ptb": 17.97, "c4": 14.34},
    "facebook/opt-6.7b": {"wikitext2": 10.86, "ptb": 15.77, "c4": 12.71},
    "facebook/opt-13b": {"wikitext2": 10.13, "ptb": 14.52, "c4": 12.06},
    "facebook/opt-30b": {"wikitext2": 9.56, "ptb": 14.04, "c4": 11.44},
}
CORPUS_NAMES = {"wikitext2": "WikiText-2", "ptb": "PTB", "c4": "C4", "wiki-gensim": "Wikipedia (gensim, offline)"}

# (arch, dataset) -> published dense top-1 accuracy (%), unverified
DENSE_TOP1: dict[tuple[str, str], float] = {
    ("resnet20", "cifar10"): 91.4,
    ("mobilenetv1", "imagenet"): 72.0,
    ("resnet50", "imagenet"): 77.0,
}

# The paper's headline claims, each with what in our records would correspond to it.
CLAIMS: list[dict[str, str]] = [
    {"id": "ppl_vs_ziplm", "claim": "OPT-2.7B at 2× speedup: OSSCAR's WikiText perplexity is 125× lower than ZipLM's",
     "ours": "ZipLM ppl / OSSCAR ppl at the same model, target and corpus (lm_perplexity)"},
    {"id": "time_vs_ziplm", "claim": "OSSCAR prunes 6–8× faster than ZipLM",
     "ours": "ZipLM prune time / OSSCAR prune time (pruning_runtime shapes; lm_perplexity runs)"},
    {"id": "memory", "claim": "OPT-30B pruned on one 32 GB V100",
     "ours": "largest model pruned and the peak memory recorded (lm_perplexity)"},
]
