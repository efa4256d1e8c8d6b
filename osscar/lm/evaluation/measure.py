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
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from osscar.lm.adapters import ModelAdapter, get_adapter


def param_count(model: nn.Module) -> int:
    """Unique parameters (tied embeddings counted once)."""
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def flops_per_token(model_or_config: Any, kept_attn_groups: int | Sequence[int] | None = None,
                    kept_neurons: int | Sequence[int] | None = None) -> dict[str, int]:
    """FLOPs model above for the model's *original* config and the given kept widths (None: dense).

    ``model_or_config``: a model, a config or a :class:`~osscar.lm.adapters.ModelAdapter` (which holds the attention
    unit the widths count in; a model or config: ``kv-group``). Widths may be one count for every block or a
    sequence with one count per block (non-uniform allocation); 0 is a module removed whole (:mod:`osscar.lm.removed`)."""
    adapter = model_or_config if isinstance(model_or_config, ModelAdapter) else get_adapter(model_or_config)
    cfg = adapter.config
    n = int(cfg.num_hidden_layers)

    def per_block(v: Any) -> list[Any]:
        if v is None or isinstance(v, int):
            return [v] * n
        v = list(v)
        if len(v) != n:
            raise ValueError(f"need one width per block ({n}), got {len(v)}")
        return v

    attn = mlp = 0
    for a, m in zip(per_block(kept_attn_groups), per_block(kept_neurons)):
        per = adapter.layer_flops(a, m)
        attn += per["attn"] if a != 0 else 0  # level 0: the attention removed whole, k/v included
        mlp += per["mlp"]
    block = attn + mlp
    lm_head = 2 * int(cfg.hidden_size) * int(cfg.vocab_size)
    return {"attn": attn, "mlp": mlp, "block_flops": block, "lm_head_flops": lm_head,
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


def compare_latency(dense: nn.Module, sliced: nn.Module, points: list[tuple[int, int]], repeats: int = 5,
                    warmup: int = 2, blocks_only: bool = False) -> list[dict[str, Any]]:
    """Dense vs sliced prefill latency in the same process: the whole model and its decoder blocks alone.

    Per point: ``warmup`` untimed passes of each, then ``repeats`` rounds that time one dense and
    one sliced pass back to back (interleaved, so drift from other load hits both alike); medians
    are reported. ``speedup``: the whole model (LM head included); ``blocks_speedup``: the backbone
    (``model.base_model``: embeddings, decoder blocks, final norm; no LM head), the quantity a
    block-latency target (``--allocation uniform-latency|runtime|spdy|evolutionary``) aims at. The
    thread count is ``torch.get_num_threads()`` (recorded in each row). Both models must be on one
    device; on a GPU every timed pass is synchronised. ``blocks_only``: time the backbones alone (rows without the
    whole-model fields)."""
    from osscar.devices import model_device, synchronize

    device = model_device(dense)
    if model_device(sliced) != device:
        raise ValueError(f"dense and sliced models must be on one device, got {device} and {model_device(sliced)}")

    def timed(model: nn.Module, ids: torch.Tensor) -> float:
        synchronize(device)
        t = time.perf_counter()
        model(ids, use_cache=False)
        synchronize(device)
        return time.perf_counter() - t

    rows = []
    for b, s in points:
        vocab = min(int(dense.config.vocab_size), int(sliced.config.vocab_size))
        ids = torch.randint(0, vocab, (b, s), generator=torch.Generator().manual_seed(0)).to(device)
        runs = {"dense_blocks": dense.base_model, "sliced_blocks": sliced.base_model}
        if not blocks_only:
            runs = {"dense": dense, "sliced": sliced, **runs}
        times: dict[str, list[float]] = {name: [] for name in runs}
        with torch.no_grad():
            for _ in range(warmup):
                for model in runs.values():
                    model(ids, use_cache=False)
            for _ in range(repeats):
                for name, model in runs.items():
                    times[name].append(timed(model, ids))
        med = {name: statistics.median(t) for name, t in times.items()}
        row: dict[str, Any] = {"batch": b, "seqlen": s, "threads": torch.get_num_threads()}
        if not blocks_only:
            d, p = med["dense"], med["sliced"]
            row.update({"dense_s": d, "sliced_s": p, "dense_min_s": min(times["dense"]),
                        "sliced_min_s": min(times["sliced"]), "dense_tok_s": b * s / d, "sliced_tok_s": b * s / p,
                        "speedup": d / p, "speedup_of_min": min(times["dense"]) / min(times["sliced"])})
        rows.append({**row, "dense_blocks_s": med["dense_blocks"], "sliced_blocks_s": med["sliced_blocks"],
                     "blocks_speedup": med["dense_blocks"] / med["sliced_blocks"],
                     "blocks_speedup_of_min": min(times["dense_blocks"]) / min(times["sliced_blocks"]),
                     "repeats": repeats, "warmup": warmup})
    return rows


def main(argv: list[str] | None = None) -> int:
    """Latency of a sliced architecture vs dense (weights do not matter for latency: the kept groups
    are chosen by weight magnitude, no calibration)."""
    import argparse
    import json

    from osscar.devices import MODEL_DTYPES, add_device_arguments, device_from_arguments, device_label, torch_threads
    from osscar.io import atomic_write_json
    from osscar.lm.sources.models import load_model

    ap = argparse.ArgumentParser(prog="python -m osscar.lm.evaluation.measure", description=main.__doc__,
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m", help="model name, folder or GGUF file")
    ap.add_argument("--head-fraction", type=float, default=0.5, help="fraction of attention groups removed")
    ap.add_argument("--neuron-fraction", type=float, default=0.5, help="fraction of neurons removed")
    ap.add_argument("--points", default="1x128,1x512,8x256", help="comma-separated BATCHxSEQLEN points")
    ap.add_argument("--repeats", type=int, default=10, help="timed rounds per point")
    add_device_arguments(ap)
    ap.add_argument("--dtype", default="float32", choices=list(MODEL_DTYPES), help="model weights/activations")
    ap.add_argument("--output", default=None, help="JSON output file")
    args = ap.parse_args(argv)
    device = device_from_arguments(ap, args)
    points = [tuple(int(v) for v in p.split("x")) for p in args.points.split(",")]
    with torch_threads(args.threads):
        dense = load_model(args.model, dtype=args.dtype).model.to(device)
        sliced = load_model(args.model, dtype=args.dtype).model.to(device)
        ka, km = _slice_by_magnitude(sliced, args.head_fraction, args.neuron_fraction)
        rows = compare_latency(dense, sliced, points, args.repeats)
    flops_d, flops_p = flops_per_token(dense), flops_per_token(dense, ka, km)
    out = {"model": args.model, "kept_attn_groups": ka, "kept_neurons": km,
           "params_dense": param_count(dense), "params_sliced": param_count(sliced),
           "block_flops_ratio": flops_d["block_flops"] / flops_p["block_flops"],
           "total_flops_ratio": flops_d["total_flops"] / flops_p["total_flops"],
           "torch": torch.__version__, "device": device_label(device), "dtype": args.dtype, "latency": rows}
    print(json.dumps(out, indent=1))
    if args.output:
        atomic_write_json(args.output, out, indent=1)
    return 0


def _slice_by_magnitude(model: nn.Module, head_fraction: float, neuron_fraction: float) -> tuple[int, int]:
    """Slice every block of ``model`` to the groups with the largest consumer-weight L1 norms (latency does not
    depend on which); returns (attention groups, neurons) kept."""
    from osscar.lm.slicing import slice_model
    from osscar.lm.targets import removed_count

    a = get_adapter(model)
    ka = a.n_attn_groups - removed_count(head_fraction, a.n_attn_groups)
    km = a.ffn_dim - removed_count(neuron_fraction, a.ffn_dim)
    kept = {}
    for i, layer in enumerate(a.layers(model)):
        kept[i] = {}
        for part, k in (("attn", ka), ("mlp", km)):
            W = a.consumer(layer, part).weight.data
            norms = W.abs().sum(0).reshape(-1, a.group_size(part)).sum(1)
            kept[i][part] = torch.topk(norms, k).indices.sort().values
    slice_model(model, kept, a)
    return ka, km


if __name__ == "__main__":
    raise SystemExit(main())
