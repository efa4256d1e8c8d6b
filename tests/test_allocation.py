"""Runtime-aware allocation: the DP is exact against brute force; removal paths are exact."""

import itertools
import math
import random

import pytest

from conftest import brute_force, random_problem
from osscar.allocation import allocate, loss_at, removal_path


def test_allocation_matches_brute_force():
    rng = random.Random(0)
    for _ in range(30):
        n_layers, levels = rng.randint(1, 4), [1, 2, 3, 4]
        losses = [{lv: rng.random() * (5 - lv) for lv in levels} for _ in range(n_layers)]
        lats = [{lv: lv * (0.5 + rng.random()) for lv in levels} for _ in range(n_layers)]
        budget = rng.uniform(sum(min(l.values()) for l in lats), sum(max(l.values()) for l in lats))
        res = 400
        got = allocate(losses, lats, budget, resolution=res)
        assert sum(lats[i][lv] for i, lv in enumerate(got)) <= budget + 1e-9
        unit = budget / res  # the DP's exact semantics: latencies rounded up to buckets

        def fits(c, lats=lats, unit=unit, res=res):
            return sum(math.ceil(lats[i][lv] / unit - 1e-9) for i, lv in enumerate(c)) <= res

        feasible = [c for c in itertools.product(levels, repeat=n_layers) if fits(c)]
        best = min(sum(losses[i][lv] for i, lv in enumerate(c)) for c in feasible)
        assert sum(losses[i][lv] for i, lv in enumerate(got)) == pytest.approx(best, abs=1e-12)


def test_allocation_rejects_an_impossible_budget():
    with pytest.raises(ValueError, match="below the fastest possible total latency"):
        allocate([{1: 0.0, 2: 0.0}], [{1: 1.0, 2: 2.0}], budget=0.5)
    with pytest.raises(ValueError, match="same non-empty set of levels"):
        allocate([{1: 0.0}], [{2: 1.0}], budget=5)


def test_removal_path_objectives_are_exact_on_visited_supports():
    P = random_problem(4, 10, 2, 5)
    path = removal_path(P, p_hat=1)
    assert sorted(path) == list(range(11)) and path[0] == 0.0
    assert path[10] == pytest.approx(P.dense_objective(), rel=1e-9)
    # monotone: removing groups never lowers the optimum
    assert all(path[k] <= path[k - 1] + 1e-9 for k in range(1, 11))
    # at k = 5 the path's value is the objective of ZipLM's support, at least the exact optimum
    opt, _ = brute_force(P)
    assert path[5] >= opt - 1e-9 * abs(opt)
    assert loss_at(path, 5) == path[5]
    coarse = removal_path(P, p_hat=3)
    assert sorted(coarse) == [0, 1, 4, 7, 10]
    assert loss_at(coarse, 5) == pytest.approx(coarse[4] * 2 / 3 + coarse[7] / 3)
