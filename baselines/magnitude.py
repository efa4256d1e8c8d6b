"""Magnitude pruning: MP (keep the largest-L1 groups, weights unchanged) and MP+ (same mask, refit)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from osscar.groups import group_norms, top_groups
from osscar.method import PruningMethod, register_method
from osscar.obs import REFIT_NOTE, refit, refit_floats
from osscar.problem import LayerProblem


def magnitude_support(problem: LayerProblem) -> Tensor:
    """The k groups of Ŵ with the largest L1 norm. -> (k,) long, sorted."""
    return top_groups(group_norms(problem.W_dense, problem.group_size, ord=1), problem.k, problem.blocks)


@register_method("mp")
@dataclass(frozen=True)
class MagnitudePruning(PruningMethod):
    """MP: keep the k largest-L1 groups of the dense weights; kept rows unchanged."""

    @classmethod
    def working_set(cls, p: int, m: int, kept_rows: int) -> tuple[int, str]:
        """Counted as the refit (an upper bound: MP keeps Ŵ's rows and holds only the group norms)."""
        return refit_floats(p, m, kept_rows), REFIT_NOTE

    def solve(self, problem: LayerProblem) -> tuple[Tensor, Tensor, dict[str, Any]]:
        return magnitude_support(problem), problem.W_dense, {}


@register_method("mp+")
@dataclass(frozen=True)
class MagnitudePruningRefit(PruningMethod):
    """MP+: MP's support, then the least-squares refit W_S = H_SS⁻¹ G_S."""

    @classmethod
    def working_set(cls, p: int, m: int, kept_rows: int) -> tuple[int, str]:
        """The refit's (:func:`osscar.obs.refit_floats`)."""
        return refit_floats(p, m, kept_rows), REFIT_NOTE

    def solve(self, problem: LayerProblem) -> tuple[Tensor, Tensor, dict[str, Any]]:
        kept = magnitude_support(problem)
        return kept, refit(problem, kept), {}
