"""Compare methods on identical layer problems (dense-model calibration inputs).

In a sequential run each method sees inputs produced by its *own* pruned predecessors, so layer
objectives are only comparable in block 0. Here every selected block's H comes from the dense
model (nothing is pruned while collecting), and every method solves exactly the same problems.
Reported per problem: Q(W) − Q* with Q* the dense optimum (the reconstruction error increase,
lower is better) and the solver time.

    python -m osscar.lm.evaluation.diagnose --blocks 0,10,20,29 --fraction 0.5 --methods mp,mp+,ziplm,osscar
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from osscar.devices import add_device_arguments, device_from_arguments, torch_threads
from osscar.io import atomic_write_json
from osscar.lm.adapters import get_adapter
from osscar.lm.calibrate.calibration import prune_model_sequential
from osscar.lm.text.data import calibration_segments
from osscar.lm.sources.models import load_model
from osscar.lm.targets import removed_count
from osscar.methods import make_method
from osscar.problem import LayerProblem
from osscar.options import DEFAULT_DAMPING


def _make(spec: str):
    """``name`` or ``name:key=value,key=value`` (values parsed as JSON)."""
    name, _, rest = spec.partition(":")
    params = {}
    for kv in filter(None, rest.split(",")):
        k, v = kv.split("=", 1)
        params[k] = json.loads(v)
    return make_method(name, **params)


def layer_objectives(model, segments, methods: list[str], blocks: list[int], head_fraction: float,
                     neuron_fraction: float, damping: float = DEFAULT_DAMPING) -> list[dict]:
    a = get_adapter(model)
    hs: dict[tuple[int, str], torch.Tensor] = {}
    weights = {}
    for i in blocks:
        layer = a.layers(model)[i]
        for part in ("attn", "mlp"):
            weights[(i, part)] = a.consumer(layer, part).weight.data.T.clone()
    prune_model_sequential(model, segments, make_method("mp"), a.n_attn_groups, a.ffn_dim, damping=damping,
                           layers=blocks, hessian_hook=lambda i, part, H: hs.__setitem__((i, part), H.clone()))
    rows = []
    for (i, part), H in sorted(hs.items()):
        n = a.n_groups(part)
        frac = head_fraction if part == "attn" else neuron_fraction
        k = n - removed_count(frac, n)
        prob = LayerProblem.from_calibration(H, weights[(i, part)], a.group_size(part), k, damping=damping)
        q_star = prob.dense_objective()
        base = 0.5 * float((prob.W_dense * (prob.H @ prob.W_dense)).sum())  # ½‖XŴ‖² (damped), scale
        for m in methods:
            t = time.perf_counter()
            res = _make(m).prune(prob)
            rows.append({"block": i, "part": part, "n_groups": n, "k": k, "method": m,
                         "excess": res.objective - q_star, "rel_excess": (res.objective - q_star) / base,
                         "seconds": time.perf_counter() - t, "info": {kk: v for kk, v in res.info.items()
                                                                     if isinstance(v, (int, float))}})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m osscar.lm.evaluation.diagnose", description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="smollm2-135m", help="model name, folder or GGUF file")
    p.add_argument("--blocks", default="0,10,20,29", help="comma-separated block indices")
    p.add_argument("--fraction", type=float, default=0.5, help="fraction of heads and neurons removed")
    p.add_argument("--methods", default="mp,mp+,ziplm,osscar", help="comma-separated methods")
    p.add_argument("--method", action="append", default=[], metavar="NAME:K=V,K=V",
                   help="an extra method with parameters, e.g. osscar:min_swap=1,max_iter=60 (repeatable)")
    p.add_argument("--calib-corpus", default="wiki-gensim", help="calibration corpus")
    p.add_argument("--n-samples", type=int, default=32, help="calibration segments")
    p.add_argument("--seqlen", type=int, default=256, help="tokens per segment")
    p.add_argument("--seed", type=int, default=0, help="seed")
    add_device_arguments(p, device_help="cpu, cuda or cuda:N: model, H and the solvers run there")
    p.add_argument("--output", default=None, help="JSON file for the rows")
    args = p.parse_args(argv)
    device = device_from_arguments(p, args)
    with torch_threads(args.threads):
        lm = load_model(args.model)
        lm.model.to(device)
        segs = calibration_segments(args.calib_corpus, lm.tokenizer, args.n_samples, args.seqlen, args.seed)
        rows = layer_objectives(lm.model, segs, args.methods.split(",") + args.method,
                                [int(b) for b in args.blocks.split(",")], args.fraction, args.fraction)
    for r in rows:
        print(f"block {r['block']:2d} {r['part']:4s} k={r['k']:4d}/{r['n_groups']:4d} {r['method']:7s} "
              f"excess={r['excess']:.6g} rel={r['rel_excess']:.4%} t={r['seconds']:.2f}s {r['info']}")
    if args.output:
        atomic_write_json(args.output, {"args": vars(args), "rows": rows}, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
