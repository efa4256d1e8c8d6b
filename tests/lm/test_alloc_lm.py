"""allocate_lm wiring on a tiny random Llama (GQA, per-head levels), with the model-free search
package (``osscar.allocation``, written in parallel) replaced by a brute-force stand-in that has
its names: ``LayerChoices``, ``Budget.check``, ``get_allocator``, ``run_allocator``, ``levels_of``.
Ground truths: costs counted by hand (test_alloc_levels), the brute-force optimum of the stand-in,
and a solver-call counter."""

from __future__ import annotations

import itertools
import sys
import types
from dataclasses import dataclass

import pytest

from osscar.lm.allocation.allocate import allocate_lm
from osscar.methods import make_method

from .test_alloc_database import OTHER, SEGS, _head, _model


@dataclass
class _Choices:
    name: str
    levels: tuple
    cost: list
    error: list


@dataclass
class _Budget:
    kind: str
    target: float
    as_speedup: bool = True

    def check(self, choices, dense_cost, fixed=0.0):
        limit = dense_cost / self.target - fixed
        cheapest = sum(min(c.cost) for c in choices)
        if cheapest > limit:
            raise ValueError(f"out of reach: the fastest reachable is a {dense_cost / (fixed + cheapest):.4g}× speedup")
        return limit


class _Result:
    def __init__(self, name, choices, alloc):
        self.allocation, self.levels = alloc, [c.levels[j] for c, j in zip(choices, alloc)]

    def to_dict(self):
        return {"allocation": list(self.allocation), "levels": self.levels, "trace": [{"step": 0}]}


def _stand_in(scored):
    """A brute-force osscar.allocation: runtime = least Σ error under the limit; spdy / evolutionary =
    the best fitness among the 4 least-error feasible allocations (each scored and logged in ``scored``)."""
    mod = types.ModuleType("osscar.allocation")
    mod.LayerChoices, mod.Budget = _Choices, _Budget
    mod.levels_of = lambda choices, alloc: [c.levels[j] for c, j in zip(choices, alloc)]

    def get_allocator(name):
        if name not in ("runtime", "spdy", "evolutionary"):
            raise ValueError(f"allocation={name!r} is unknown; allowed: runtime, spdy, evolutionary")
        return types.SimpleNamespace(fitness=None if name == "runtime" else name)

    def run_allocator(name, choices, limit, fitness=None, config=None):
        ok = [a for a in itertools.product(*(range(len(c.levels)) for c in choices))
              if sum(c.cost[j] for c, j in zip(choices, a)) <= limit]
        ok.sort(key=lambda a: sum(c.error[j] for c, j in zip(choices, a)))
        if name == "runtime":
            return _Result(name, choices, ok[0])
        score = (lambda a: fitness(a)) if name == "spdy" else (lambda a: fitness(a, 9))
        best = min(ok[:4], key=lambda a: scored.append((a, score(a))) or scored[-1][1])
        return _Result(name, choices, best)

    mod.get_allocator, mod.run_allocator = get_allocator, run_allocator
    return mod


@pytest.fixture
def stand_in(monkeypatch):
    scored = []
    monkeypatch.setitem(sys.modules, "osscar.allocation", _stand_in(scored))
    return scored


@pytest.mark.parametrize("allocator", ["runtime", "spdy", "evolutionary"])
def test_allocate_lm_meets_the_budget_and_a_second_budget_calls_no_solver(allocator, tmp_path, stand_in, solver_calls):
    model = _model()
    d, hd, kv = 48, 8, 3
    attn = {0: 0, 3: 2 * d * 3 * hd + 2 * d * kv * hd, 6: 2 * d * 6 * hd + 2 * d * kv * hd}
    attn = {k: v + d + (2 * kv * hd + hd * k if k else 0) for k, v in attn.items()}  # biases; o_proj's stays at 0
    mlp = {0: 0, 32: 3 * d * 32 + 2 * 32, 64: 3 * d * 64 + 2 * 64}
    mlp = {k: v + d for k, v in mlp.items()}  # down_proj's bias stays with level 0
    out = allocate_lm(model, SEGS, OTHER, make_method("mp"), allocator, _Budget("params", 1.5), tmp_path,
                      mlp_steps=2, batch_size=2, adapter=_head(model))
    built = len(solver_calls)
    assert out.database["build"]["solver_calls"] == built > 0
    cost = sum(attn[a] + mlp[m] for a, m in out.widths)
    dense = 3 * (attn[6] + mlp[64])
    assert out.budget["dense_cost"] == dense and out.budget["predicted_cost"] == cost <= dense / 1.5
    assert out.budget["predicted_speedup"] == pytest.approx(dense / cost)
    if allocator != "runtime":
        best = min(stand_in, key=lambda t: t[1])
        assert [lv for w in out.widths for lv in w] == [((0, 3, 6), (0, 32, 64))[j % 2][i] for j, i in enumerate(best[0])]
        assert out.search["stitched_evaluations"] == len(stand_in) == 4
    again = allocate_lm(model, SEGS, OTHER, make_method("mp"), allocator, _Budget("params", 3.0), tmp_path,
                        mlp_steps=2, batch_size=2, adapter=_head(model))
    assert len(solver_calls) == built and again.database["key"] == out.database["key"]
    assert again.database["build"]["solver_calls"] == 0 and again.budget["predicted_cost"] <= dense / 3.0


def test_bad_allocator_or_unreachable_budget_fails_before_any_work(tmp_path, stand_in, solver_calls):
    model = _model()
    with pytest.raises(ValueError, match="allocation='greedy' is unknown; allowed: runtime, spdy, evolutionary"):
        allocate_lm(model, SEGS, OTHER, make_method("mp"), "greedy", _Budget("params", 2.0), tmp_path, adapter=_head(model))
    costs = {"attn": {0: 1.0, 3: 2.0, 6: 3.0}, "mlp": {0: 1.0, 16: 2.0, 32: 2.5, 48: 3.0, 64: 3.5}}
    with pytest.raises(ValueError, match="fastest reachable is a 2.8× speedup"):  # (3·6.5 + 1.5) / (3·2 + 1.5)
        allocate_lm(model, SEGS, OTHER, make_method("mp"), "runtime", _Budget("latency", 3.0), tmp_path,
                    mlp_steps=4, costs=costs, fixed=1.5, adapter=_head(model))
    with pytest.raises(ValueError, match="latency budget needs measured per-level costs"):
        allocate_lm(model, SEGS, OTHER, make_method("mp"), "runtime", _Budget("latency", 2.0), tmp_path, adapter=_head(model))
    with pytest.raises(ValueError, match="evolutionary' scores KL on held-out tokens"):
        allocate_lm(model, SEGS, None, make_method("mp"), "evolutionary", _Budget("params", 2.0), tmp_path, adapter=_head(model))
    assert not list(tmp_path.iterdir()) and solver_calls == []


@pytest.mark.parametrize("allocator", ["runtime", "spdy", "evolutionary"])
def test_allocate_lm_with_the_real_search_package(allocator, tmp_path, solver_calls):
    """The real osscar.allocation searches: within budget (hand-counted params), no solver call on reuse,
    and a search trace in the result."""
    from osscar.allocation import Budget, EvolutionConfig, SpdyConfig

    model = _model()
    cfg = {"spdy": SpdyConfig(max_evaluations=12, patience=4),
           "evolutionary": EvolutionConfig(generations=3, offspring=4, survivors=(2, 1), tokens=(8, 32))}.get(allocator)
    out = allocate_lm(model, SEGS, OTHER, make_method("mp"), allocator, Budget("params", 1.5, True), tmp_path,
                      mlp_steps=2, batch_size=2, config=cfg, adapter=_head(model))
    built = len(solver_calls)
    assert built > 0 and out.budget["predicted_cost"] <= out.budget["limit"] + 1e-9
    assert out.budget["predicted_speedup"] >= 1.5 - 1e-9
    assert len(out.widths) == 3 and "trace" in out.search
    again = allocate_lm(model, SEGS, OTHER, make_method("mp"), allocator, Budget("params", 2.5, True), tmp_path,
                        mlp_steps=2, batch_size=2, config=cfg, adapter=_head(model))
    assert len(solver_calls) == built and again.budget["predicted_speedup"] >= 2.5 - 1e-9
