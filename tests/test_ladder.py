"""``PruningMethod.prune_ladder``: the method's solutions at several kept counts of one layer. ZipLM fills them
from one removal pass; each level must equal a solve to that level from scratch (kept groups, weights,
objective), with and without a partition constraint (where it falls back to one solve per level)."""

from __future__ import annotations

import pytest
import torch

from osscar.method import PruningMethod
from osscar.methods import make_method
from osscar.problem import LayerProblem

from conftest import random_problem


def _problem_at(base: LayerProblem, blocks: int = 1):
    H, W = base.H.clone(), base.W_dense.clone()
    return lambda k: LayerProblem.from_calibration(H, W, base.group_size, k, damping=0.0, blocks=blocks)


@pytest.mark.parametrize("deferred", [False, True])
@pytest.mark.parametrize("n_groups, group_size, levels", [(40, 1, [1, 5, 13, 20, 33, 39]), (18, 3, [2, 7, 11, 17])])
def test_ziplm_one_pass_ladder_equals_a_solve_per_level(deferred, n_groups, group_size, levels, monkeypatch):
    method = make_method("ziplm", deferred=deferred)
    problem_at = _problem_at(random_problem(5, n_groups, group_size, 1))
    expected = {k: method.prune(problem_at(k)) for k in levels}
    calls = []
    original = PruningMethod.prune
    monkeypatch.setattr(PruningMethod, "prune", lambda self, p: (calls.append(p.k), original(self, p))[1])
    ladder = method.prune_ladder(problem_at, levels)
    assert calls == [] and sorted(ladder) == levels  # one pass, no per-level solve
    for k in levels:
        assert torch.equal(ladder[k].kept, expected[k].kept), k
        torch.testing.assert_close(ladder[k].W, expected[k].W, rtol=1e-9, atol=1e-10)
        assert ladder[k].objective == pytest.approx(expected[k].objective, rel=1e-9)


def test_ziplm_ladder_under_a_partition_constraint_solves_each_level():
    method = make_method("ziplm")
    problem_at = _problem_at(random_problem(6, 12, 2, 3), blocks=3)
    ladder = method.prune_ladder(problem_at, [3, 6, 9])
    for k in (3, 6, 9):
        ref = method.prune(problem_at(k))
        assert torch.equal(ladder[k].kept, ref.kept) and "one_pass" not in ladder[k].info
        counts = torch.bincount(problem_at(k).block_of(ladder[k].kept), minlength=3)
        assert counts.tolist() == [k // 3] * 3


def test_the_base_ladder_is_one_prune_per_level():
    method = make_method("osscar")
    problem_at = _problem_at(random_problem(7, 16, 1, 1))
    ladder = method.prune_ladder(problem_at, [4, 8])
    for k in (4, 8):
        assert torch.equal(ladder[k].kept, method.prune(problem_at(k)).kept)
