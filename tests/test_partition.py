"""The partition constraint of a layer problem (groups in blocks, each keeping k / blocks groups,
e.g. the query heads of each KV group): every method honours it; OSSCAR against the exact
constrained optimum (brute force, float64)."""

from __future__ import annotations

import dataclasses
import functools
import itertools

import pytest
import torch

from conftest import random_problem
from osscar.groups import cheapest_within_budget, top_groups
from osscar.methods import available_methods, make_method
from osscar.problem import LayerProblem


def partitioned(seed: int, blocks: int, per_block: int, keep: int, group_size: int = 2, m: int = 4) -> LayerProblem:
    P = random_problem(seed, blocks * per_block, group_size, blocks * keep, m=m)
    g = torch.Generator().manual_seed(seed)
    acts = torch.randn(6, P.n_groups, 5, generator=g, dtype=torch.float64)
    return dataclasses.replace(P, blocks=blocks, activations=acts)


@functools.cache
def optimum_of(seed: int, blocks: int, per: int, keep: int) -> float:
    return constrained_optimum(partitioned(seed, blocks, per, keep))[0]


def constrained_optimum(P: LayerProblem) -> tuple[float, tuple[int, ...]]:
    """min over supports with k / blocks groups in every block of −½ tr(G_Sᵀ H_SS⁻¹ G_S)."""
    per = [itertools.combinations(range(b * P.block_size, (b + 1) * P.block_size), P.block_keep)
           for b in range(P.blocks)]
    best, best_s = float("inf"), ()
    for parts in itertools.product(*[list(x) for x in per]):
        S = tuple(g for part in parts for g in part)
        rows = P.rows_of(torch.tensor(S, dtype=torch.long))
        Hs, Gs = P.H[rows][:, rows], P.G[rows]
        v = float(-0.5 * (Gs * torch.cholesky_solve(Gs, torch.linalg.cholesky(Hs))).sum())
        if v < best:
            best, best_s = v, S
    return best, best_s


INSTANCES = [(seed, blocks, per, keep) for seed in range(6) for blocks, per, keep in ((2, 5, 2), (3, 4, 2), (4, 3, 1))]


@pytest.mark.parametrize("name", sorted(available_methods()))
def test_every_method_keeps_the_same_count_in_every_block(name):
    for seed, blocks, per, keep in INSTANCES[:6]:
        P = partitioned(seed, blocks, per, keep)
        r = make_method(name).prune(P)  # prune() itself rejects a result that breaks the counts
        counts = torch.bincount(P.block_of(r.kept), minlength=blocks)
        assert counts.tolist() == [keep] * blocks, (name, counts)
        opt = optimum_of(seed, blocks, per, keep)
        assert r.objective >= opt - 1e-9 * abs(opt), f"{name} beat the constrained optimum: bug"


def test_osscar_reaches_the_constrained_optimum_on_most_instances_and_beats_the_baselines():
    exact = zipl = 0
    for seed, blocks, per, keep in INSTANCES:
        P = partitioned(seed, blocks, per, keep)
        opt = optimum_of(seed, blocks, per, keep)
        o = make_method("osscar").prune(P).objective
        z = make_method("ziplm").prune(P).objective
        mpp = make_method("mp+").prune(P).objective
        scale = abs(opt)
        assert o <= z + 1e-9 * scale and o <= mpp + 1e-9 * scale
        exact += o <= opt + 1e-9 * scale
        zipl += z <= opt + 1e-9 * scale
    print(f"\npartitioned problems: OSSCAR exact on {exact}/{len(INSTANCES)}, ZipLM on {zipl}/{len(INSTANCES)}")
    assert exact >= 0.7 * len(INSTANCES)


def test_the_constraint_changes_the_answer():
    """Without the constraint the optimum puts more groups in some block on these instances, so
    the constraint is doing something (and methods that ignored it would fail above)."""
    differs = 0
    for seed, blocks, per, keep in INSTANCES:
        P = partitioned(seed, blocks, per, keep)
        free = make_method("osscar").prune(dataclasses.replace(P, blocks=1))
        counts = torch.bincount(P.block_of(free.kept), minlength=blocks)
        differs += bool((counts != keep).any())
    assert differs >= len(INSTANCES) // 3


def test_top_groups_per_block_and_budgeted_cheapest():
    scores = torch.tensor([5.0, 1.0, 3.0, 0.5, 9.0, 2.0])
    assert top_groups(scores, 2).tolist() == [0, 4]
    assert top_groups(scores, 2, blocks=2).tolist() == [0, 4]
    assert top_groups(scores, 4, blocks=2).tolist() == [0, 2, 4, 5]
    costs = torch.tensor([0.1, 0.2, 0.3, 5.0, float("inf"), 6.0])
    assert sorted(cheapest_within_budget(costs, 2, None, 3).tolist()) == [0, 1]
    assert sorted(cheapest_within_budget(costs, 2, torch.tensor([1, 2]), 3).tolist()) == [0, 3]
    assert sorted(cheapest_within_budget(costs, 3, torch.tensor([1, 2]), 3).tolist()) == [0, 3, 5]


@pytest.mark.parametrize("blocks, k, match", [(4, 6, "must divide the number of groups"),
                                              (2, 5, "multiple of blocks=2"), (0, 6, "positive integer")])
def test_bad_partitions_are_rejected(blocks, k, match):
    P = random_problem(0, 6, 2, 2)
    with pytest.raises(ValueError, match=match):
        LayerProblem.from_calibration(P.H, P.W_dense, 2, k, blocks=blocks)
