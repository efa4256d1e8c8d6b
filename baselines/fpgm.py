"""FPGM (He et al., 2019): prune the groups closest to the geometric median of all groups,
i.e. those with the smallest summed Euclidean distance to the others; weights unchanged.

The vectors are the producer's filters when the problem carries them (``producer_weight``,
as in the original, which prunes a conv's output filters) and the consumer's group rows of Ŵ
otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from osscar.groups import group_view, top_groups
from osscar.method import PruningMethod, register_method
from osscar.problem import LayerProblem


def median_distance_scores(V: Tensor) -> Tensor:
    """Σ_j ‖v_g − v_j‖ for each row g of V: (n, d) -> (n,)."""
    V = V.double()
    return torch.cdist(V, V).sum(dim=1)


@register_method("fpgm")
@dataclass(frozen=True)
class FPGM(PruningMethod):
    """Keep the groups farthest (in summed distance) from all the others."""

    def solve(self, problem: LayerProblem) -> tuple[Tensor, Tensor, dict[str, Any]]:
        if problem.producer_weight is not None:
            V, source = problem.producer_weight, "producer_weight"
        else:
            V, source = group_view(problem.W_dense, problem.group_size), "consumer_rows"
        kept = top_groups(median_distance_scores(V), problem.k, problem.blocks)
        return kept, problem.W_dense, {"vectors": source}
