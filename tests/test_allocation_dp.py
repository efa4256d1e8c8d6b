"""Allocation building blocks against independent ground truth: the DP against brute force over every
allocation, budgets against hand arithmetic, the option/registry validation messages."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from osscar import options
from osscar.allocation import (ALLOCATORS, AllocationError, Budget, LayerChoices, get_allocator, run_allocator, solve_dp,
                               total_cost, uniform_allocation)


def _random_choices(rng: np.random.Generator, n_layers: int, grid: float | None) -> list[LayerChoices]:
    """Random layers with 1–4 options; level 0 (module removed) sometimes present at cost 0. Costs are
    multiples of ``grid`` when given, else arbitrary floats."""
    out = []
    for i in range(n_layers):
        n = int(rng.integers(1, 5))
        levels = tuple(sorted(rng.choice(np.arange(0, 9), size=n, replace=False).tolist()))
        raw = rng.integers(0, 8, size=n) if grid is not None else rng.uniform(0, 8, size=n)
        cost = np.where(np.array(levels) == 0, 0.0, raw * (grid if grid is not None else 1.0))
        out.append(LayerChoices(f"layer{i}", levels, cost, rng.normal(size=n)))
    return out


def _brute_force(choices, weights, max_cost):
    """min Σ w·error over every allocation whose summed cost is at most ``max_cost``, by enumeration."""
    best = math.inf
    for alloc in itertools.product(*(range(c.n_options) for c in choices)):
        if sum(c.cost[j] for c, j in zip(choices, alloc)) <= max_cost:
            best = min(best, sum(w * c.error[j] for w, c, j in zip(weights, choices, alloc)))
    return best


def _objective(choices, alloc, weights):
    return sum(w * c.error[j] for w, c, j in zip(weights, choices, alloc))


def test_dp_is_exact_when_costs_lie_on_the_grid():
    """Costs are multiples of limit/resolution (including float ones like 0.1·k): DP = brute force."""
    rng = np.random.default_rng(0)
    for t in range(150):
        grid = [1.0, 0.5, 0.1][t % 3]
        choices = _random_choices(rng, int(rng.integers(1, 5)), grid)
        lo = sum(c.cost.min() for c in choices)
        hi = sum(c.cost.max() for c in choices)
        steps = int(rng.integers(round(lo / grid), round(hi / grid) + 2))
        limit = steps * grid
        weights = rng.uniform(0, 2, size=len(choices)) if t % 2 else np.ones(len(choices))
        if limit <= 0:
            continue
        got = solve_dp(choices, limit, weights=weights, resolution=steps)
        assert total_cost(choices, got) <= limit * (1 + 1e-9)
        best = _brute_force(choices, weights, limit + 1e-9)
        assert _objective(choices, got, weights) == pytest.approx(best, abs=1e-12), t


def test_dp_is_exact_on_integer_costs_at_any_limit():
    """Integer costs (parameter or FLOP counts, here with a common factor) and a limit the default
    resolution does not divide: the DP uses the integer grid and equals brute force, tight fits included."""
    rng = np.random.default_rng(2)
    tight = 0
    for t in range(100):
        choices = _random_choices(rng, int(rng.integers(2, 6)), 1.0)
        scale = float(rng.choice([1, 3, 1000]))
        choices = [LayerChoices(c.name, c.levels, c.cost * scale, c.error) for c in choices]
        some = [int(rng.integers(c.n_options)) for c in choices]  # the limit is the cost of some allocation
        limit = total_cost(choices, some) + float(rng.choice([0.0, 0.5]))
        if limit <= 0:
            continue
        got = solve_dp(choices, limit)
        ones = np.ones(len(choices))
        best = _brute_force(choices, ones, limit)
        assert total_cost(choices, got) <= limit
        assert _objective(choices, got, ones) == pytest.approx(best, abs=1e-12), t
        tight += total_cost(choices, got) == math.floor(limit)
    assert tight > 10  # many optima use the budget exactly: the case a rounded-up grid would miss


def test_dp_off_grid_is_never_over_budget_and_beats_every_allocation_with_a_bucket_per_layer_to_spare():
    """Arbitrary costs: the answer meets the limit, and no allocation that fits even after losing up to one
    bucket per layer to rounding (true cost ≤ limit − n_layers·bucket) is better."""
    rng = np.random.default_rng(1)
    for t in range(150):
        choices = _random_choices(rng, int(rng.integers(1, 5)), None)
        lo = sum(c.cost.min() for c in choices)
        hi = sum(c.cost.max() for c in choices)
        limit = float(rng.uniform(lo, hi)) + 0.05
        res = int(rng.choice([5, 50, 1000]))
        weights = np.ones(len(choices))
        try:
            got = solve_dp(choices, limit, resolution=res)
        except AllocationError as e:
            assert "raise the resolution" in str(e)
            continue
        cost = total_cost(choices, got)
        assert cost <= limit, (t, cost, limit)
        slack = limit - len(choices) * limit / res
        best = _brute_force(choices, weights, slack)
        assert _objective(choices, got, weights) <= best + 1e-12, t
        feasible = _brute_force(choices, weights, limit)
        assert _objective(choices, got, weights) >= feasible - 1e-12  # and it is a feasible allocation


def test_dp_limit_zero_takes_the_best_free_option_and_refuses_below_the_cheapest():
    a = LayerChoices("a", (0, 2, 4), [0.0, 1.0, 2.0], [5.0, 1.0, 0.0])
    b = LayerChoices("b", (0, 1), [0.0, 3.0], [2.0, 0.0])
    assert solve_dp([a, b], 0.0) == (0, 0)
    assert solve_dp([a, b], 3.0) == (2, 0)  # errors 0 + 2 (cost 2) beat 5 + 0 (cost 3) and 1 + 2 (cost 1)
    assert solve_dp([a, b], 4.0) == (1, 1)  # 1 + 0 (cost 4)
    c = LayerChoices("c", (1, 2), [1.0, 2.0], [1.0, 0.0])
    with pytest.raises(AllocationError, match=r"cost limit 0\.5 is below the least total cost 1"):
        solve_dp([a, c], 0.5)


@pytest.mark.parametrize("kw, match", [
    (dict(levels=(1, 1), cost=[1, 2], error=[0, 0]), "strictly increasing"),
    (dict(levels=(2, 1), cost=[1, 2], error=[0, 0]), "strictly increasing"),
    (dict(levels=(-1, 1), cost=[1, 2], error=[0, 0]), "integers ≥ 0"),
    (dict(levels=(True, 2), cost=[1, 2], error=[0, 0]), "integers ≥ 0"),
    (dict(levels=(), cost=[], error=[]), "at least one level"),
    (dict(levels=(1, 2), cost=[1], error=[0, 0]), "cost must have one value per level"),
    (dict(levels=(1, 2), cost=[1, 2], error=[0, np.nan]), "error must be finite"),
    (dict(levels=(1, 2), cost=[-1, 2], error=[0, 0]), "cost must be ≥ 0"),
    (dict(levels=(1, 2), cost=[1, np.inf], error=[0, 0]), "cost must be finite"),
])
def test_layer_choices_validation(kw, match):
    with pytest.raises(ValueError, match=match):
        LayerChoices("blk.0.mlp", **kw)


def test_layer_choices_are_read_only_copies():
    cost = np.array([1.0, 2.0])
    c = LayerChoices("x", (0, 1), cost, [1.0, 0.0])
    cost[0] = 9.0
    assert c.cost[0] == 1.0
    with pytest.raises(ValueError):
        c.error[0] = 3.0


def test_budget_limits_by_hand():
    assert Budget("latency", 2.0).limit(10.0) == pytest.approx(5.0)
    assert Budget("latency", 2.0).limit(10.0, fixed=1.0) == pytest.approx(4.0)
    assert Budget("params", 0.25, as_speedup=False).limit(10.0, fixed=1.0) == pytest.approx(6.5)
    assert Budget("flops", 1.0).limit(3.0) == pytest.approx(3.0)


def test_unreachable_budget_names_the_fastest_reachable_speedup():
    layers = [LayerChoices("a", (0, 4), [1.0, 4.0], [1, 0]), LayerChoices("b", (2, 4), [1.0, 3.0], [1, 0])]
    # dense 10 (fixed 3 + 4 + 3), cheapest total 3 + 1 + 1 = 5: at most 2× (0.5 removed)
    assert Budget("latency", 2.0).check(layers, 10.0, fixed=3.0) == pytest.approx(2.0)
    with pytest.raises(AllocationError, match=r"^2\.5× latency speedup is out of reach: the fastest reachable is a 2× "
                                              r"speedup \(0\.5 removed\)") as e:
        Budget("latency", 2.5).check(layers, 10.0, fixed=3.0)
    assert "\n" not in str(e.value)
    with pytest.raises(AllocationError, match=r"^0\.6 of the params removed is out of reach: .* a 2× speedup"):
        Budget("params", 0.6, as_speedup=False).check(layers, 10.0, fixed=3.0)


@pytest.mark.parametrize("args, match", [
    (("energy", 2.0), "kind 'energy' is unknown; allowed: latency, flops, params"),
    (("latency", 0.5), "speedup: it must be ≥ 1"),
    (("latency", 1.0, False), r"fraction of the latency removed: it must be in \[0, 1\)"),
    (("latency", math.nan), "finite number"),
])
def test_bad_budget(args, match):
    with pytest.raises(ValueError, match=match):
        Budget(*args)


def test_uniform_takes_the_largest_common_fraction_that_fits():
    a = LayerChoices("a", (0, 1, 2, 3, 4), [0, 1, 2, 3, 4], [4, 3, 2, 1, 0])
    b = LayerChoices("b", (0, 4, 8), [0, 4, 8], [2, 1, 0])
    # fractions 1, 3/4, 1/2, 1/4, 0: at 3/4 a keeps 3 and b keeps 4 (largest ≤ 6), cost 7
    assert uniform_allocation([a, b], 7.0) == (3, 1)
    assert uniform_allocation([a, b], 12.0) == (4, 2)
    assert uniform_allocation([a, b], 6.9) == (2, 1)


def test_registry_names_and_errors():
    # every registered allocator is a run's allocation; the run's "uniform-latency" is the registry's "uniform" on
    # the measured latency table (osscar.lm.allocation.run_step), its "uniform" the FLOPs fractions (no registry)
    assert [a for a in options.ALLOCATIONS if a != "uniform-latency"] == list(ALLOCATORS)
    with pytest.raises(ValueError, match=r"^allocation='foo' is unknown; allowed: uniform, runtime, spdy, evolutionary$"):
        get_allocator("foo")
    layers = [LayerChoices("a", (0, 1), [0.0, 1.0], [1.0, 0.0])]
    with pytest.raises(ValueError, match="allocation='spdy' needs a fitness callable"):
        run_allocator("spdy", layers, 1.0)
    with pytest.raises(ValueError, match="allocation='runtime' takes no config"):
        run_allocator("runtime", layers, 1.0, config=object())
    assert run_allocator("runtime", layers, 1.0).allocation == (1,)
    assert run_allocator("uniform", layers, 0.5).levels == [0]
