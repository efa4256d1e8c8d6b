"""FPGM (He et al., 2019): prune the groups closest to the geometric median, i.e. those with the
smallest summed Euclidean distance to the other candidates; weights unchanged.

``vectors="consumer-rows"`` (default, the OSSCAR authors' code): one vector per group, the
consumer's input-channel rows Ŵ_g flattened; the ``exclude_fraction`` (default 0.2) of groups with
the smallest norm ‖Ŵ_g‖_F are not prune candidates (they are kept, and take no part in the
distances, as in FPGM's code where the norm criterion runs first).

``vectors="producer-filters"`` with ``exclude_fraction=0`` is the paper's FPGM: the producer's output
filters (``problem.producer_weight``), every filter a candidate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from osscar.groups import group_view, top_groups
from osscar.method import PruningMethod, register_method
from osscar.obs import REFIT_NOTE, refit_floats
from osscar.problem import LayerProblem

VECTORS = ("consumer-rows", "producer-filters")


def median_distance_scores(V: Tensor) -> Tensor:
    """Σ_j ‖v_g − v_j‖ for each row g of V: (n, d) -> (n,)."""
    V = V.double()
    return torch.cdist(V, V).sum(dim=1)


def fpgm_scores(V: Tensor, exclude_fraction: float) -> Tensor:
    """Keep-scores (higher = kept first) of the n rows of V: (n, d) -> (n,) float64.

    The floor(exclude_fraction·n) smallest-norm rows are excluded from pruning: they score above
    every candidate (ordered by norm among themselves). Candidates score their summed distance to
    the other candidates."""
    V = V.double()
    n = V.shape[0]
    n_excl = math.floor(exclude_fraction * n + 1e-9)
    norms = V.norm(dim=1)
    order = torch.argsort(norms, stable=True)
    excluded, candidates = order[:n_excl], order[n_excl:]
    scores = torch.empty(n, dtype=torch.float64, device=V.device)
    dist = median_distance_scores(V[candidates])
    scores[candidates] = dist
    top = float(dist.max()) if len(candidates) else 0.0
    scores[excluded] = top + 1 + norms[excluded]  # never pruned before a candidate
    return scores


@register_method("fpgm")
@dataclass(frozen=True)
class FPGM(PruningMethod):
    """Keep the groups farthest (in summed distance) from the other candidates.

    Args:
        vectors: ``"consumer-rows"`` (default; the consumer's group rows of Ŵ) or
            ``"producer-filters"`` (the producer's output filters, as in He et al.).
        exclude_fraction: in [0, 1); the share of smallest-norm groups that are never pruned
            (default 0.2, the authors' code; 0 in He et al.).
    """

    @classmethod
    def working_set(cls, p: int, m: int, kept_rows: int) -> tuple[int, str]:
        """Counted as the refit's (:func:`osscar.obs.refit_floats`), the bound the memory plan has always used."""
        return refit_floats(p, m, kept_rows), REFIT_NOTE

    vectors: str = "consumer-rows"
    exclude_fraction: float = 0.2

    def __post_init__(self) -> None:
        if self.vectors not in VECTORS:
            raise ValueError(f"vectors: unknown FPGM vectors {self.vectors!r}; allowed: {', '.join(VECTORS)}")
        f = self.exclude_fraction
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 <= f < 1:
            raise ValueError(f"exclude_fraction must be a number in [0, 1), got {f!r}")

    def check(self, problem: LayerProblem) -> None:
        super().check(problem)
        if self.vectors == "producer-filters" and problem.producer_weight is None:
            raise ValueError("fpgm with vectors='producer-filters' needs problem.producer_weight (n_groups, d); this "
                             "layer problem has none (language-model consumers have no single producer conv)")

    def solve(self, problem: LayerProblem) -> tuple[Tensor, Tensor, dict[str, Any]]:
        if self.vectors == "producer-filters":
            V = problem.producer_weight
        else:
            V = group_view(problem.W_dense, problem.group_size)
        kept = top_groups(fpgm_scores(V, self.exclude_fraction), problem.k, problem.blocks)
        return kept, problem.W_dense, {"vectors": self.vectors, "exclude_fraction": float(self.exclude_fraction)}
