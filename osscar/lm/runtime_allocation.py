"""Runtime-aware allocation for an LM run: per-block widths for a measured-latency speedup.

See :mod:`osscar.lm.run` (module docstring) for the scheme; :func:`runtime_allocation` is its
passes 1–2, on the dense model.
"""

from __future__ import annotations

import math
from typing import Any

from osscar.lm.run_config import LMRunConfig


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
    from osscar.lm.calibrate.calibration import collect_loss_curves
    from osscar.lm.evaluation.latency import latency_table

    adapter = get_adapter(model, config.attention_unit)
    n_all = len(adapter.layers(model))
    n_attn, n_mlp = adapter.n_attn_groups, adapter.ffn_dim
    batch, seqlen = config.allocation_point or (1, config.seqlen)
    table = latency_table(model.config, batch=batch, seqlen=seqlen, threads=config.threads,
                          repeats=config.latency_repeats, mlp_levels=config.allocation_mlp_levels,
                          device=config.device, dtype=config.dtype, cache_dir=config.cache_dir,
                          attention_unit=config.attention_unit)
    floor = {"attn": max(1, math.ceil(config.allocation_min_keep * n_attn - 1e-9)),
             "mlp": max(1, math.ceil(config.allocation_min_keep * n_mlp - 1e-9))}
    levels = {"attn": [k for k in sorted(table.attn) if k >= floor["attn"]],
              "mlp": [k for k in sorted(table.mlp) if k >= floor["mlp"]]}
    curves = collect_loss_curves(model, segments, levels, damping=config.damping, layers=todo, progress=progress,
                                 adapter=adapter)
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

