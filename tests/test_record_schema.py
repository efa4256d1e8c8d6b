"""The one reader of the record schema (benchmarks.record_schema), on hand-written metrics: what it reads, and that a
record lacking a field (an older record, a layer taken from a candidate database) reads as missing, not as a number."""

from __future__ import annotations

import math

from benchmarks import record_schema as schema

LM = {
    "dense": {"wiki": {"ppl": 20.5, "window_nll": [3.0, 3.1]}, "zero_shot": {"tasks": {"piqa": {"acc": 0.7}}}},
    "pruned": {"wiki": {"ppl": 31.0}, "ptb": {"ppl": math.nan}, "zero_shot": {"tasks": {"piqa": {"acc": 0.6,
                                                                                                   "acc_norm": 0.65}}}},
    "size": {"params_dense": 100, "params_pruned": 60, "block_flops_ratio": 2.0},
    "layers": [{"name": "l.0.o", "kept": [0, 2], "objective": -1.5}, {"name": "l.0.down", "kept": [1], "objective": None},
               "not a layer"],
    "timings": {"prune_solver_s": 4.0},
}


def test_lm_fields():
    assert schema.perplexities(LM, "pruned") == {"wiki": 31.0}  # NaN is not a number here
    assert schema.perplexities(LM, "dense") == {"wiki": 20.5}
    assert schema.window_nll(LM, "dense", "wiki") == [3.0, 3.1] and schema.window_nll(LM, "pruned", "wiki") is None
    assert schema.zero_shot_scores(LM, "pruned") == {"piqa": {"acc": 0.6, "acc_norm": 0.65}}
    assert schema.zero_shot_scores(LM, "dense") == {"piqa": {"acc": 0.7, "acc_norm": None}}
    assert schema.lm_sizes(LM) == {"params_dense": 100.0, "params_pruned": 60.0, "block_flops_ratio": 2.0,
                                   "total_flops_ratio": None}
    assert schema.layer_objectives(LM) == {"l.0.o": -1.5}  # the database layer has no objective
    assert schema.kept_groups("lm", LM) == {"l.0.o": [0, 2], "l.0.down": [1]}
    assert schema.solver_seconds("lm", LM) == 4.0


def test_other_pipelines_and_missing_fields():
    vision = {"dense": {"top1": 0.9, "macs": 1e6}, "pruned": {"top1": 0.8, "params": 10}, "kept": {"conv1": [1]},
              "timings": {"prune": 2.5}}
    assert schema.vision_scores(vision, "pruned") == {"top1": 0.8, "macs": None, "params": 10.0}
    assert schema.kept_groups("vision", vision) == {"conv1": [1]} and schema.solver_seconds("vision", vision) == 2.5
    solver = {"kept": [3, 1], "objective": -2.0, "prune_seconds": 0.1}
    assert schema.kept_groups("solver", solver) == {"kept": [3, 1]} and schema.solver_seconds("solver", solver) == 0.1
    assert schema.perplexities({}, "pruned") == {} and schema.zero_shot_scores({}, "dense") == {}
    assert schema.layer_objectives({}) == {} and schema.lm_sizes({})["params_pruned"] is None
    assert schema.dig({"a": [{"b": 1}]}, "a", 0, "b") == 1 and schema.dig({"a": [1]}, "a", 5) is None
    assert schema.num(True) is None and schema.num(math.inf) is None and schema.num(3) == 3.0
