"""Size, FLOPs, measured latency and memory.

**FLOPs model** (per token, forward pass, 2 FLOPs per multiply-add): for each decoder block the
prunable projections only —

* attention projections: OPT ``2·d·(h·hd)·4`` (q, k, v, out_proj with h kept heads);
  Llama ``2·d·(2·h_q·hd + 2·h_kv·hd)`` (q, o_proj; k, v);
* MLP: OPT ``2·d·f·2`` (fc1, fc2); Llama ``2·d·f·3`` (gate, up, down) with f kept neurons.

Attention scores/softmax (which grow with the context length), norms, embeddings and the LM head
are excluded from ``block_flops``; ``lm_head_flops`` (2·d·vocab) is reported separately so a
whole-model ratio can be formed. Every block term is linear in the kept widths, so removing a
fraction ``r`` of both heads and neurons divides the block FLOPs by ``1/(1−r)``: a target speedup
``S`` maps to ``r = 1 − 1/S`` before rounding to whole groups (:func:`fractions_for_speedup`).
"""

from __future__ import annotations

import platform
import resource
import statistics
import time
from typing import Any

import torch
from torch import nn

from osscar.lm.adapters import get_adapter


def param_count(model: nn.Module) -> int:
    """Unique parameters (tied embeddings counted once)."""
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def flops_per_token(model_or_config: Any, kept_attn_groups: int | None = None,
                    kept_neurons: int | None = None) -> dict[str, int]:
    """FLOPs model above for the model's *original* config and the given kept widths (None: dense)."""
    adapter = get_adapter(model_or_config)
    cfg = adapter.config
    per = adapter.layer_flops(kept_attn_groups, kept_neurons)
    n = int(cfg.num_hidden_layers)
    block = n * (per["attn"] + per["mlp"])
    lm_head = 2 * int(cfg.hidden_size) * int(cfg.vocab_size)
    return {"attn": n * per["attn"], "mlp": n * per["mlp"], "block_flops": block, "lm_head_flops": lm_head,
            "total_flops": block + lm_head}


def fractions_for_speedup(speedup: float) -> float:
    """Fraction of heads and of neurons to remove per block for a target block-FLOPs speedup."""
    if not speedup > 1:
        raise ValueError(f"speedup must be > 1, got {speedup!r}")
    return 1.0 - 1.0 / speedup


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (MiB; Linux reports KiB)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024 if platform.system() == "Linux" else r / (1024 * 1024)


@torch.no_grad()
def prefill_latency(model: nn.Module, batch: int, seqlen: int, repeats: int = 5, warmup: int = 2,
                    vocab: int | None = None, seed: int = 0) -> dict[str, float]:
    """Median wall time of a full forward pass (prefill) on random tokens (batch, seqlen)."""
    vocab = vocab or int(model.config.vocab_size)
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, seqlen), generator=g)
    for _ in range(warmup):
        model(ids, use_cache=False)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        model(ids, use_cache=False)
        times.append(time.perf_counter() - t)
    med = statistics.median(times)
    return {"batch": batch, "seqlen": seqlen, "median_s": med, "min_s": min(times),
            "tokens_per_s": batch * seqlen / med, "repeats": repeats, "warmup": warmup}


def compare_latency(dense: nn.Module, sliced: nn.Module, points: list[tuple[int, int]], repeats: int = 5,
                    warmup: int = 2) -> list[dict[str, Any]]:
    """Dense vs sliced prefill latency in the same process, interleaved per point.

    The thread count is whatever ``torch.get_num_threads()`` is (recorded in each row)."""
    rows = []
    for b, s in points:
        d = prefill_latency(dense, b, s, repeats, warmup)
        p = prefill_latency(sliced, b, s, repeats, warmup)
        rows.append({"batch": b, "seqlen": s, "threads": torch.get_num_threads(),
                     "dense_s": d["median_s"], "sliced_s": p["median_s"],
                     "dense_tok_s": d["tokens_per_s"], "sliced_tok_s": p["tokens_per_s"],
                     "speedup": d["median_s"] / p["median_s"], "repeats": repeats, "warmup": warmup})
    return rows
