"""The SPDY and evolutionary searches on small synthetic problems whose optimum brute force finds:
how often they reach it (printed, with an asserted floor), and that nothing over budget is ever scored
or returned."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from conftest import allocation_instance
from osscar.allocation import (AllocationError, EvolutionConfig, SpdyConfig, search_evolutionary,
                               search_spdy, solve_dp, total_cost)
from osscar.allocation.evolutionary import CachedFitness, select

N_SEEDS = 20


def _feasible(layers, limit):
    return [a for a in itertools.product(*(range(c.n_options) for c in layers)) if total_cost(layers, a) <= limit]


def _rugged_fitness(layers, seed: int):
    """Non-additive and rugged: layer errors plus random pairwise tables J_lm[x_l, x_m] ~ N(0, 0.6²)."""
    rng = np.random.default_rng(1000 + seed)
    n = len(layers)
    inter = {(l, m): rng.normal(scale=0.6, size=(layers[l].n_options, layers[m].n_options))
             for l in range(n) for m in range(l + 1, n)}

    def f(alloc):
        return float(sum(c.error[j] for c, j in zip(layers, alloc))
                     + sum(J[alloc[l], alloc[m]] for (l, m), J in inter.items()))

    return f


def _compounding_fitness(layers, seed: int):
    """Non-additive and smooth: errors compound pairwise, Σ e_l + Σ_{l<m} w_lm·e_l·e_m with w_lm ~ U(0, 1)."""
    rng = np.random.default_rng(2000 + seed)
    n = len(layers)
    w = {(l, m): rng.uniform(0, 1.0) for l in range(n) for m in range(l + 1, n)}

    def f(alloc):
        e = [c.error[j] for c, j in zip(layers, alloc)]
        return float(sum(e) + sum(wlm * e[l] * e[m] for (l, m), wlm in w.items()))

    return f


_interacting_fitness = _rugged_fitness


def _spy(fitness, layers, limit, log):
    """``fitness`` that records every call and fails on an over-budget allocation."""
    def wrapped(alloc, *rest):
        assert total_cost(layers, alloc) <= limit * (1 + 1e-9), f"over budget: {alloc}"
        log.append((tuple(alloc), *rest))
        return fitness(alloc)

    return wrapped


# -- evolutionary --------------------------------------------------------------------------------
EVO = EvolutionConfig(generations=40, offspring=8, survivors=(3, 1), tokens=(64, 256))


@pytest.mark.parametrize("family, make, floor", [("compounding", _compounding_fitness, 14),
                                                   ("rugged", _rugged_fitness, 11)])
def test_evolutionary_reaches_the_brute_force_optimum_of_a_non_additive_fitness(family, make, floor):
    """Share of 20 instances (5 layers × 4 options, ~400 allocations within budget) where 40 generations
    of 8 offspring reach the brute-force optimum. Measured: compounding 16/20, rugged 13/20; the floors
    leave a little room for a change of random stream."""
    hits, dp_hits = 0, 0
    for seed in range(N_SEEDS):
        layers, limit = allocation_instance(seed)
        f = make(layers, seed)
        best = min(f(a) for a in _feasible(layers, limit))
        log: list = []
        res = search_evolutionary(layers, limit, _spy(lambda a, f=f: f(a), layers, limit, log),
                                  config=EvolutionConfig(**{**EVO.__dict__, "seed": seed}))
        assert total_cost(layers, res.allocation) <= limit
        assert res.fitness == pytest.approx(f(res.allocation))
        hits += res.fitness <= best + 1e-12
        dp_hits += f(solve_dp(layers, limit)) <= best + 1e-12
    print(f"\nevolutionary ({family} fitness) reached the brute-force optimum on {hits}/{N_SEEDS} instances "
          f"(the DP seed alone: {dp_hits}/{N_SEEDS})")
    assert hits >= floor
    assert dp_hits < hits  # the interactions matter: the search does more than return its seed


def test_evolutionary_never_scores_or_returns_an_over_budget_allocation():
    """Tight and loose budgets, including the cheapest total; the spy fails on any over-budget call."""
    for seed in range(10):
        layers, _ = allocation_instance(seed, n_layers=6)
        cheapest, dearest = sum(c.cost.min() for c in layers), sum(c.cost.max() for c in layers)
        for limit in (cheapest, cheapest + 3.0, 0.3 * dearest, 0.8 * dearest):
            log: list = []
            f = _interacting_fitness(layers, seed)
            res = search_evolutionary(layers, limit, _spy(lambda a, f=f: f(a), layers, limit, log),
                                      config=EvolutionConfig(generations=5, offspring=6, survivors=(2, 1),
                                                             tokens=(8, 8), seed=seed))
            assert total_cost(layers, res.allocation) <= limit * (1 + 1e-9)
            assert len(log) == res.evaluations


def _noisy(base):
    """A fitness whose ranking on few tokens differs from the one on many (deterministic)."""
    return lambda alloc, n_tokens: base(alloc) + 3 * math.sin(1e3 * sum((i + 1) * j for i, j in enumerate(alloc))) / n_tokens


def test_selection_stages_use_growing_token_counts():
    """Offspring scored on tokens[0]; only the best survivors[0] of them by that score, with the parent, are
    scored on tokens[1]; the winner is the best of those on tokens[1]."""
    layers, limit = allocation_instance(3)
    f = _noisy(_rugged_fitness(layers, 3))
    pool = sorted(set(_feasible(layers, limit)))[::37][:7]
    parent = pool.pop()
    calls: list = []
    score = CachedFitness(lambda a, n: calls.append((a, n)) or f(a, n))
    cfg = EvolutionConfig(offspring=6, survivors=(3, 1), tokens=(1, 50))
    winner, value = select(pool, parent, cfg, score)
    assert [a for a, n in calls if n == 1] == pool  # every offspring, the parent not
    top = sorted(pool, key=lambda a: f(a, 1))[:3]
    assert sorted(a for a, n in calls if n == 50) == sorted([*top, parent])
    assert top != sorted(pool, key=lambda a: f(a, 50))[:3]  # the stages disagree: the test can see which was used
    assert winner == min([*top, parent], key=lambda a: f(a, 50)) and value == pytest.approx(f(winner, 50))
    assert score(winner, 50) == value and score.calls == len(calls)  # repeats come from the cache
    three = EvolutionConfig(offspring=6, survivors=(4, 2, 1), tokens=(1, 10, 50))
    calls.clear()
    winner3, _ = select(pool, parent, three, CachedFitness(lambda a, n: calls.append((a, n)) or f(a, n)))
    assert [n for _, n in calls] == [1] * 6 + [10] * 4 + [50] * 3


def test_evolutionary_trace_is_the_parent_fitness_and_never_rises():
    layers, limit = allocation_instance(3)
    f = _noisy(_rugged_fitness(layers, 3))
    calls: list = []
    cfg = EvolutionConfig(generations=8, offspring=6, survivors=(2, 1), tokens=(1, 50), seed=5)
    res = search_evolutionary(layers, limit, lambda a, n: calls.append((a, n)) or f(a, n), config=cfg)
    assert res.config["seed"] == 5 and res.config["generations"] == 8 and len(res.trace) == 9
    assert calls[0] == (solve_dp(layers, limit), 50) and res.evaluations == len(calls) == len(set(calls))
    assert {n for _, n in calls} == {1, 50}
    bests = [t["best_fitness"] for t in res.trace]
    assert all(b <= a for a, b in zip(bests, bests[1:])) and bests[-1] == pytest.approx(f(res.allocation, 50))
    assert all(0 < t["offspring"] <= 6 for t in res.trace[1:])


def test_evolutionary_is_seeded_and_checks_its_start():
    layers, limit = allocation_instance(7)
    f = _interacting_fitness(layers, 7)
    a = search_evolutionary(layers, limit, lambda x, n: f(x), config=EvolutionConfig(generations=6, seed=11))
    b = search_evolutionary(layers, limit, lambda x, n: f(x), config=EvolutionConfig(generations=6, seed=11))
    assert a.allocation == b.allocation and a.trace == b.trace
    dearest = tuple(c.n_options - 1 for c in layers)
    with pytest.raises(AllocationError, match="seed allocation costs .* over the limit"):
        search_evolutionary(layers, limit, lambda x, n: f(x), seed_allocation=dearest)


@pytest.mark.parametrize("kw, match", [
    (dict(survivors=(4, 2), tokens=(8, 16)), "down to 1"),
    (dict(survivors=(1, 2), tokens=(8, 16)), "non-increasing"),
    (dict(survivors=(2, 1), tokens=(16, 8)), "non-decreasing"),
    (dict(survivors=(2, 1), tokens=(8,)), "one entry per stage"),
    (dict(offspring=0), "offspring must be an integer ≥ 1"),
    (dict(generations=-1), "generations must be an integer ≥ 0"),
    (dict(fill_probability=1.5), "fill_probability"),
])
def test_bad_evolution_config(kw, match):
    with pytest.raises(ValueError, match=match):
        EvolutionConfig(**kw)


# -- SPDY ----------------------------------------------------------------------------------------
def test_spdy_finds_the_optimum_when_the_layer_errors_are_mis_scaled():
    """The whole-model fitness weighs each layer's error by a hidden factor a_l: the DP on the raw errors
    (the search's first step) misses the optimum, reweighting by the coefficients can reach it."""
    hits, dp_hits = 0, 0
    for seed in range(N_SEEDS):
        layers, limit = allocation_instance(seed)
        a = np.random.default_rng(50 + seed).uniform(0.05, 1.0, size=len(layers))

        def f(alloc, layers=layers, a=a):
            return float(sum(al * c.error[j] for al, c, j in zip(a, layers, alloc)))

        best = min(f(x) for x in _feasible(layers, limit))
        log: list = []
        res = search_spdy(layers, limit, _spy(f, layers, limit, log),
                          SpdyConfig(seed=seed, resample_fraction=0.4, patience=15, max_evaluations=120))
        assert res.fitness == pytest.approx(f(res.allocation)) and total_cost(layers, res.allocation) <= limit
        assert res.evaluations == len(log) == len(set(log)) <= 120
        hits += res.fitness <= best + 1e-12
        dp_hits += res.trace[0]["fitness"] <= best + 1e-12
    print(f"\nspdy reached the brute-force optimum on {hits}/{N_SEEDS} instances (its first, plain-DP step: {dp_hits})")
    assert hits >= 0.8 * N_SEEDS and dp_hits < hits


def test_spdy_trace_and_seeding():
    layers, limit = allocation_instance(7)
    rugged = _rugged_fitness(layers, 7)
    scale = np.random.default_rng(9).uniform(0.05, 1.0, size=len(layers))

    def f(alloc):  # mis-scaled errors plus interactions: improvements after the first step exist
        return rugged(alloc) + float(sum((s - 1) * c.error[j] for s, c, j in zip(scale, layers, alloc)))

    cfg = SpdyConfig(seed=3, random_inits=4, patience=10, max_evaluations=40)
    res = search_spdy(layers, limit, f, cfg)
    assert res.trace[0]["phase"] == "init" and res.trace[0]["fitness"] == pytest.approx(f(solve_dp(layers, limit)))
    assert [t["phase"] for t in res.trace[1:5]] == ["random"] * 4
    running = math.inf
    for t in res.trace:  # "best" is the running minimum of the fitness per step
        running = min(running, t["fitness"])
        assert t["best"] == pytest.approx(running)
    assert res.fitness == pytest.approx(running) == pytest.approx(f(res.allocation))
    centre = None  # local steps resample `resampled` coefficients of the best so far, the others are kept
    for t in res.trace:
        if t["phase"] == "local":
            changed = sum(a != b for a, b in zip(t["coefficients"], centre))
            assert changed == t["resampled"] and all(0 <= c <= 1 for c in t["coefficients"])
        if t["accepted"]:
            centre = t["coefficients"]
    assert [t["resampled"] for t in res.trace if t["phase"] == "local"][-1] == 1
    assert [t["phase"] for t in res.trace if t["accepted"]] == ["init", "random", "local"]  # both phases improve
    assert res.trace[0]["coefficients"] == [1.0] * len(layers)
    assert res.config["seed"] == 3 and len(res.config["coefficients"]) == len(layers)
    assert solve_dp(layers, limit, weights=res.config["coefficients"]) == res.allocation
    again = search_spdy(layers, limit, f, cfg)
    assert again.trace == res.trace and again.allocation == res.allocation


@pytest.mark.parametrize("kw, match", [
    (dict(resample_fraction=0.0), "resample_fraction"),
    (dict(patience=0), "patience must be an integer ≥ 1"),
    (dict(max_evaluations=1.5), "max_evaluations"),
])
def test_bad_spdy_config(kw, match):
    with pytest.raises(ValueError, match=match):
        SpdyConfig(**kw)


@pytest.mark.parametrize("name, fitness, config", [
    ("spdy", lambda f: f, SpdyConfig(max_evaluations=10, patience=3)),
    ("evolutionary", lambda f: (lambda a, n: f(a)), EvolutionConfig(generations=3, offspring=4, survivors=(2, 1))),
])
def test_searches_through_the_registry_give_json_records(name, fitness, config):
    import json

    from osscar.allocation import run_allocator

    layers, limit = allocation_instance(2)
    f = _rugged_fitness(layers, 2)
    res = run_allocator(name, layers, limit, fitness=fitness(f), config=config)
    assert res.allocator == name and res.cost == total_cost(layers, res.allocation) <= limit
    assert res.levels == [c.levels[j] for c, j in zip(layers, res.allocation)]
    back = json.loads(json.dumps(res.to_dict()))
    assert back["allocation"] == list(res.allocation) and back["config"]["seed"] == 0 and back["trace"]
    with pytest.raises(ValueError, match=f"allocation='{name}' takes"):
        run_allocator(name, layers, limit, fitness=fitness(f), config=object())
