"""The allocation package's registry and budgets, against hand-worked answers on tiny instances.

``run_allocator`` must hand each name to its own allocator (``uniform`` ≠ the DP on an instance where they
differ; ``spdy``/``evolutionary`` receive the caller's config, fitness and start), a :class:`Budget`'s limit and
its edge cases are arithmetic written out here, and a :class:`SearchResult`'s dict is what records store.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from conftest import allocation_instance
import osscar.allocation as allocation
from osscar.allocation import (AllocationError, Budget, EvolutionConfig, LayerChoices, SearchResult, SpdyConfig,
                               allocate, run_allocator)


def _two_layers() -> list[LayerChoices]:
    """Two layers, levels (0, 1, 2) at cost (0, 1, 2): layer a is cheap to prune (error 0, 0.1, 0), layer b dear."""
    return [LayerChoices("a", (0, 1, 2), [0.0, 1.0, 2.0], [0.1, 0.05, 0.0]),
            LayerChoices("b", (0, 1, 2), [0.0, 1.0, 2.0], [9.0, 1.0, 0.0])]


def test_uniform_and_runtime_are_different_allocators_with_their_own_result():
    """Limit 2 of a dense 4: uniform keeps half of each layer (1, 1); the DP spends it all on layer b (0, 2)."""
    uni = run_allocator("uniform", _two_layers(), 2.0)
    dp = run_allocator("runtime", _two_layers(), 2.0)
    assert (uni.allocator, uni.allocation, uni.levels, uni.cost, uni.limit) == ("uniform", (1, 1), [1, 1], 2.0, 2.0)
    assert (dp.allocator, tuple(dp.allocation), dp.levels, dp.cost, dp.limit) == ("runtime", (0, 2), [0, 2], 2.0, 2.0)


def test_the_searches_receive_the_callers_config_fitness_and_start(monkeypatch):
    seen = {}

    def spy(name):
        def run(*args):
            seen[name] = args
            return name
        return run

    monkeypatch.setattr(allocation, "search_spdy", spy("spdy"))
    monkeypatch.setattr(allocation, "search_evolutionary", spy("evolutionary"))
    choices, fitness, spdy_cfg, evo_cfg = _two_layers(), (lambda *a: 0.0), SpdyConfig(), EvolutionConfig()
    assert run_allocator("spdy", choices, 2.0, fitness, spdy_cfg) == "spdy"
    assert seen["spdy"] == (choices, 2.0, fitness, spdy_cfg)
    assert run_allocator("evolutionary", choices, 2.0, fitness, evo_cfg, seed_allocation=(0, 2)) == "evolutionary"
    assert seen["evolutionary"] == (choices, 2.0, fitness, (0, 2), evo_cfg)


def test_a_config_for_another_allocator_is_named_in_one_line():
    with pytest.raises(ValueError, match=r"^allocation='uniform' takes no config, got SpdyConfig$"):
        run_allocator("uniform", _two_layers(), 2.0, config=SpdyConfig())
    with pytest.raises(ValueError, match=r"^allocation='spdy' takes SpdyConfig, got EvolutionConfig$"):
        run_allocator("spdy", _two_layers(), 2.0, lambda a: 0.0, EvolutionConfig())


def test_a_search_result_is_stored_under_these_keys():
    r = SearchResult("spdy", (0, 2), [0, 2], 2.0, 2.5, fitness=0.3, evaluations=7, trace=[{"step": 1}],
                     config={"seed": 0})
    assert r.to_dict() == {"allocator": "spdy", "allocation": [0, 2], "levels": [0, 2], "cost": 2.0, "limit": 2.5,
                           "fitness": 0.3, "evaluations": 7, "trace": [{"step": 1}], "config": {"seed": 0}}


def test_stage_a_helpers_load_on_first_use_and_other_names_fail_clearly():
    from osscar.allocation import loss_curves

    assert allocation.removal_path is loss_curves.removal_path and allocation.loss_at is loss_curves.loss_at
    with pytest.raises(AttributeError, match=r"module 'osscar.allocation' has no attribute 'nope'"):
        allocation.nope  # noqa: B018


# -- budgets ----------------------------------------------------------------------------------------------------
def test_budget_limits_at_their_edges():
    assert Budget("flops", 0.0, as_speedup=False).limit(10.0) == 10.0     # nothing removed is a valid target
    assert Budget("flops", 0.25, as_speedup=False).limit(8.0, fixed=2.0) == 4.0  # 8·0.75 − 2
    assert Budget("latency", 2.0).limit(10.0, fixed=10.0) == -5.0        # everything fixed: a limit below zero
    assert Budget("latency", 2.0).limit(0.5) == 0.25                     # a dense cost below one is a cost
    for target in (True, math.nan, "2"):
        with pytest.raises(ValueError, match="budget target must be a finite number"):
            Budget("latency", target)
    with pytest.raises(ValueError, match=r"must be in \[0, 1\)"):
        Budget("flops", 1.0, as_speedup=False)
    for dense in (0.0, math.inf):
        with pytest.raises(ValueError, match="dense cost must be a positive finite number"):
            Budget("latency", 2.0).limit(dense)
    for fixed in (math.nan, -1.0, 11.0):
        with pytest.raises(ValueError, match=r"fixed cost must be in \[0, dense cost 10\]"):
            Budget("latency", 2.0).limit(10.0, fixed=fixed)


def test_an_out_of_reach_budget_names_the_fastest_speedup():
    """reach = fixed + the cheapest total; the message gives dense / reach (here 0.4 / 0.2 = 2×, 0.5 removed)."""
    choices = [LayerChoices("a", (1, 2), [0.1, 0.2], [1.0, 0.0])]  # cheapest 0.1
    assert Budget("latency", 2.0).check(choices, 0.4) == pytest.approx(0.2)
    with pytest.raises(AllocationError, match=r"fastest reachable is a 2× speedup \(0.5 removed\)"):
        Budget("latency", 5.0).check(choices, 0.4, fixed=0.1)


def test_runtime_tables_accept_a_budget_equal_to_the_fastest_total():
    losses, latencies = [{1: 1.0, 2: 0.0}, {1: 1.0, 2: 0.0}], [{1: 0.3, 2: 0.6}, {1: 0.3, 2: 0.6}]
    assert allocate(losses, latencies, 0.6) == [1, 1]
    with pytest.raises(ValueError, match="is below the fastest possible total latency"):
        allocate(losses, latencies, 0.6 * (1 - 1e-9))


# -- the evolutionary search's moves ----------------------------------------------------------------------------
def _ladder(n_layers: int = 4) -> list[LayerChoices]:
    """Layers with options 0..3 at costs 0, 1, 3, 4 (uneven steps), errors falling with the level."""
    return [LayerChoices(f"l{i}", (0, 1, 2, 3), [0.0, 1.0, 3.0, 4.0], [3.0, 2.0, 1.0, 0.0]) for i in range(n_layers)]


def _maximal(choices, limit, alloc) -> bool:
    """No single layer can be raised by one option within ``limit``."""
    from osscar.allocation import total_cost

    cost = total_cost(choices, alloc)
    return not any(j < c.n_options - 1 and cost + c.cost[j + 1] - c.cost[j] <= limit + 1e-12
                   for c, j in zip(choices, alloc))


def test_fill_raises_until_no_single_raise_fits():
    from osscar.allocation.evolutionary import _fill

    choices = _ladder()
    for seed in range(20):
        for limit in (2.0, 7.0, 10.0, 15.0, 16.0):
            child = [0, 0, 0, 0]
            _fill(choices, limit, child, np.random.default_rng(seed))
            assert allocation.total_cost(choices, child) <= limit and _maximal(choices, limit, child)
            assert limit < 16.0 or child == [3, 3, 3, 3]  # room for everything: every layer at its top


def test_a_mutation_raises_one_layer_when_max_raises_is_one_and_does_not_fill_by_default():
    from osscar.allocation.evolutionary import mutate

    choices, parent = _ladder(), (1, 1, 1, 1)
    for seed in range(50):
        child = mutate(choices, 16.0, parent, 1, np.random.default_rng(seed))  # room for every raise, no fill
        assert sorted(c - p for c, p in zip(child, parent)) == [0, 0, 0, 1]


def test_a_mutation_from_the_top_lowers_into_the_budget():
    from osscar.allocation.evolutionary import mutate

    choices, top = _ladder(), (3, 3, 3, 3)  # nothing to raise: the child is lowered until it fits
    for seed in range(20):
        child = mutate(choices, 10.0, top, 2, np.random.default_rng(seed))
        assert child is not None and allocation.total_cost(choices, child) <= 10.0


def test_offspring_are_distinct_differ_from_the_parent_and_fill_when_asked():
    from osscar.allocation.evolutionary import _offspring

    small = _ladder(2)
    for seed in range(10):
        cfg = EvolutionConfig(offspring=8, survivors=(2, 1), tokens=(8, 8), max_tries=20, fill_probability=0.0)
        kids = _offspring(small, 4.0, (1, 1), cfg, np.random.default_rng(seed))
        assert None not in kids and (1, 1) not in kids and len(set(kids)) == len(kids) and kids
        cfg = EvolutionConfig(offspring=4, survivors=(2, 1), tokens=(8, 8), fill_probability=1.0)
        for kid in _offspring(_ladder(), 9.0, (0, 0, 0, 0), cfg, np.random.default_rng(seed)):
            assert _maximal(_ladder(), 9.0, kid)


def test_an_evolutionary_trace_records_each_generation_and_scores_the_start_on_the_most_tokens():
    calls = []

    def fitness(alloc, n_tokens):
        calls.append(n_tokens)
        return float(sum((3 - j) ** 2 for j in alloc))

    choices = _ladder(3)
    cfg = EvolutionConfig(generations=1, offspring=2, survivors=(2, 2, 1), tokens=(4, 8, 16), seed=1)
    res = allocation.search_evolutionary(choices, 6.0, fitness, seed_allocation=(1, 1, 1), config=cfg)
    assert calls[0] == 16 and res.limit == 6.0
    assert res.trace[0] == {"generation": 0, "best_fitness": 12.0, "offspring": 0, "evaluations": 1, "cost": 3.0}
    last = res.trace[1]
    assert set(last) == {"generation", "best_fitness", "offspring", "evaluations", "cost"} and last["generation"] == 1
    assert last["best_fitness"] == res.fitness and last["evaluations"] == res.evaluations
    assert last["cost"] == allocation.total_cost(choices, res.allocation)


# -- SPDY's steps ------------------------------------------------------------------------------------------------
def _hashed(alloc) -> float:
    return float(hash(tuple(alloc)) % 1000) / 1000.0  # a fitness without structure: every new allocation scores anew


def test_spdy_steps_patience_cache_and_evaluation_cap(monkeypatch):
    """A constant fitness accepts only the first step, so every resampling size runs exactly ``patience``
    local steps; each step says whether its allocation was scored before; the evaluation cap is a cap; the
    configured DP resolution is the one used; the first local size is round(fraction · n)."""
    import osscar.allocation.spdy as spdy

    layers, limit = allocation_instance(5, n_layers=6)
    used = []
    real = spdy.solve_dp
    monkeypatch.setattr(spdy, "solve_dp", lambda *a, **kw: used.append(kw.get("resolution")) or real(*a, **kw))
    cfg = SpdyConfig(seed=1, random_inits=2, resample_fraction=0.5, patience=3, max_evaluations=10_000, resolution=300)
    res = allocation.search_spdy(layers, limit, lambda a: 1.0, cfg)
    assert set(used) == {300} and res.limit == limit
    local = [t["resampled"] for t in res.trace if t["phase"] == "local"]
    assert local == [3, 3, 3, 2, 2, 2, 1, 1, 1]  # round(0.5 · 6) = 3 down to 1, patience 3 each
    assert [t["step"] for t in res.trace] == list(range(len(res.trace)))
    assert res.trace[0]["resampled"] == 0 and [t["resampled"] for t in res.trace if t["phase"] == "random"] == [6, 6]
    seen = set()
    for t in res.trace:
        alloc = real(layers, limit, weights=t["coefficients"], resolution=300)
        assert t["cached"] == (alloc in seen)
        seen.add(alloc)
        if t["phase"] == "local" and t["resampled"] > 1:  # fresh draws: the resampled coefficients all differ
            fresh = [c for c, b in zip(t["coefficients"], res.trace[0]["coefficients"]) if c != b]
            assert len(set(fresh)) == len(fresh) == t["resampled"]
    capped = allocation.search_spdy(layers, limit, _hashed, SpdyConfig(seed=2, random_inits=20, max_evaluations=5))
    assert capped.evaluations == 5
    assert SpdyConfig(resample_fraction=1.0).resample_fraction == 1.0
    with pytest.raises(ValueError, match=r"resample_fraction must be in \(0, 1\]"):
        SpdyConfig(resample_fraction=1.5)


# -- Stage-A removal paths ---------------------------------------------------------------------------------------
def test_removal_path_against_brute_force_and_its_bounds():
    from conftest import brute_force, random_problem

    from osscar.allocation import loss_at, removal_path

    path = removal_path(random_problem(4, 8, 2, 7))  # p_hat 1 by default: every size from 8 down to 0
    assert sorted(path) == list(range(9)) and path[0] == 0.0
    assert path[7] == pytest.approx(brute_force(random_problem(4, 8, 2, 7))[0], rel=1e-9)  # one removal is exact
    for k in range(1, 9):  # a visited support: no better than the optimum of its size, and below zero
        assert brute_force(random_problem(4, 8, 2, k))[0] - 1e-9 <= path[k] < 0
    part = removal_path(random_problem(4, 8, 2, 7), p_hat=3, down_to=3)
    assert sorted(part) == [3, 5, 8]  # 8 − 3, then the last step stops at down_to
    assert removal_path(random_problem(4, 8, 2, 7), down_to=8) == {8: path[8]}
    for kw in ({"p_hat": 0}, {"p_hat": 1.5}, {"down_to": -1}, {"down_to": 9}, {"down_to": 2.0}):
        with pytest.raises(ValueError, match="p_hat must be|down_to must be"):
            removal_path(random_problem(4, 8, 2, 7), **kw)
    coarse = {0: 0.0, 3: -3.0, 6: -4.5, 9: -6.0}
    assert loss_at(coarse, 1) == pytest.approx(-1.0) and loss_at(coarse, 8) == pytest.approx(-5.5)
    with pytest.raises(ValueError, match=r"k=10 is outside the path's range \[0, 9\]"):
        loss_at(coarse, 10)


def test_uniform_fractions_skip_layers_without_units_and_a_too_small_fraction_takes_the_first_option():
    from osscar.allocation.uniform import at_fraction

    assert at_fraction([LayerChoices("a", (2, 4), [1.0, 2.0], [1.0, 0.0])], 0.25) == (0,)  # no level ≤ 1: option 0
    empty = LayerChoices("z", (0,), [0.0], [0.0])  # a layer with nothing to keep offers no fraction
    pair = LayerChoices("a", (0, 1), [0.0, 1.0], [1.0, 0.0])
    assert allocation.uniform_allocation([empty, pair], 1.0) == (0, 1)
    assert allocation.uniform_allocation([empty, pair], 0.5) == (0, 0)


# -- the options of a layer and the DP's edges ----------------------------------------------------------------------
def test_layer_choices_normalise_their_fields_and_name_the_layer_in_errors():
    from osscar.allocation import check_allocation

    c = LayerChoices("lay", [np.int64(1), 2], [1, 2], [1, 0])  # a list of numpy ints, integer costs and errors
    assert c.levels == (1, 2) and type(c.levels[0]) is int and c.cost.dtype == c.error.dtype == np.float64
    with pytest.raises(ValueError, match="name must be a non-empty string, got 5"):
        LayerChoices(5, (1, 2), [1.0, 2.0], [1.0, 0.0])
    with pytest.raises(ValueError, match=r"LayerChoices 'lay': cost must have one value per level \(2\)"):
        LayerChoices("lay", (1, 2), [1.0], [1.0, 0.0])
    with pytest.raises(ValueError, match=r"LayerChoices 'lay': error must be finite"):
        LayerChoices("lay", (1, 2), [1.0, 2.0], [1.0, math.nan])
    with pytest.raises(ValueError, match=r"layer 'lay': option 2 is out of range \[0, 1\]"):
        check_allocation([c], [2])


def test_dp_edges_ties_free_options_weights_and_the_unit_grid():
    from osscar.allocation import solve_dp

    tie = [LayerChoices("t", (1, 2), [1.0, 1.0], [0.5, 0.5])]
    assert solve_dp(tie, 1.0) == (0,)  # equal cost and error: the first option stays
    free = [LayerChoices("f", (0, 1), [0.0, 0.0], [1.0, 0.0])]
    assert solve_dp(free, 0.0) == (1,)  # a zero limit: the best of the free options
    unit = [LayerChoices(f"u{i}", (0, 1), [0.0, 1.0], [1.0, 0.0]) for i in range(3)]
    assert solve_dp(unit, 3.0) == (1, 1, 1)  # costs of 0 and 1 lie on the unit grid: exactly three fit
    assert solve_dp(unit, 3.0, weights=[0.0, 1.0, 1.0]) == (0, 1, 1)  # a zero weight is allowed (a tie: option 0)
    with pytest.raises(ValueError, match="weights must be finite and ≥ 0"):
        solve_dp(unit, 3.0, weights=[math.inf, 1.0, 1.0])
    with pytest.raises(ValueError, match="resolution must be an integer ≥ 1, got 1.5"):
        solve_dp(unit, 3.0, resolution=1.5)


def test_evolution_config_checks_its_stages():
    cfg = EvolutionConfig(offspring=8, survivors=[9, 1], tokens=[8, 16])  # lists become tuples; 9 = offspring + 1
    assert cfg.survivors == (9, 1) and cfg.tokens == (8, 16)
    for survivors, tokens in (((10, 1), (8, 16)), ((1, 2, 1), (4, 8, 16)), ((2, 1, 2, 1), (4, 8, 16, 32)),
                              ((2, 1), (0, 8)), ((2, 1), (1.5, 8))):
        with pytest.raises(ValueError, match="survivors") as err:
            EvolutionConfig(offspring=8, survivors=survivors, tokens=tokens)
        if survivors[0] == 10:
            assert "from at most offspring + 1 (9) down to 1" in str(err.value)


def test_spdy_patience_counts_misses_since_the_last_accepted_step():
    """The second new allocation scores best (once); every resampling size then ends with exactly ``patience``
    misses after its last accepted step. A fraction rounding to one resamples one coefficient at a time."""
    layers, limit = allocation_instance(5, n_layers=6)
    calls = []

    def fitness(alloc):
        calls.append(alloc)
        return 0.0 if len(calls) == 2 else 1.0

    cfg = SpdyConfig(seed=1, resample_fraction=0.5, patience=3, max_evaluations=10_000)
    res = allocation.search_spdy(layers, limit, fitness, cfg)
    local = [t for t in res.trace if t["phase"] == "local"]
    assert any(t["accepted"] for t in local)
    for k in (3, 2, 1):
        steps = [t["accepted"] for t in local if t["resampled"] == k]
        after = steps[::-1].index(True) if True in steps else len(steps)
        assert after == 3, (k, steps)
    one = allocation.search_spdy(layers, limit, lambda a: 1.0, SpdyConfig(resample_fraction=0.1, patience=2))
    assert [t["resampled"] for t in one.trace if t["phase"] == "local"] == [1, 1]  # round(0.1 · 6) = 1
