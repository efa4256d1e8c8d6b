"""CHIP (Sui et al., 2021): channel independence of the producer's output feature maps.

For one sample's maps A: (C, L), CI_c = ‖A‖_* − ‖A with row c zeroed‖_*; scores are averaged
over samples and the least independent channels are pruned; weights unchanged (the original
fine-tunes afterwards, which one-shot comparisons omit). L is whatever the problem carries: the
vision pipeline passes every position of each map by default (``chip_positions=None``), as the
paper and the OSSCAR authors do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from osscar.groups import top_groups
from osscar.method import PruningMethod, register_method
from osscar.obs import REFIT_NOTE, refit_floats
from osscar.problem import LayerProblem


def channel_independence(A: Tensor, max_bytes: int = 1 << 28) -> Tensor:
    """Mean over samples of CI_c. A: (N, C, L) -> (C,) float64.

    Channels are masked in chunks so that the masked copies, (N, chunk, C, L) float64, stay
    under ``max_bytes`` (at least one channel per chunk)."""
    A = A.double()
    N, C, L = A.shape
    chunk = max(1, min(C, max_bytes // max(1, 8 * N * C * L)))
    total = torch.linalg.matrix_norm(A, ord="nuc")  # (N,)
    ci = torch.zeros(C, dtype=torch.float64, device=A.device)
    for start in range(0, C, chunk):
        cs = torch.arange(start, min(start + chunk, C), device=A.device)
        masked = A[:, None].repeat(1, len(cs), 1, 1)  # (N, c, C, L)
        masked[:, torch.arange(len(cs), device=A.device), cs] = 0
        ci[cs] = (total[:, None] - torch.linalg.matrix_norm(masked, ord="nuc")).mean(dim=0)
    return ci


@register_method("chip")
@dataclass(frozen=True)
class CHIP(PruningMethod):
    """Keep the k channels with the highest channel independence; weights unchanged."""

    @classmethod
    def working_set(cls, p: int, m: int, kept_rows: int) -> tuple[int, str]:
        """Counted as the refit's (:func:`osscar.obs.refit_floats`), the bound the memory plan has always used."""
        return refit_floats(p, m, kept_rows), REFIT_NOTE

    needs_activations = True

    def solve(self, problem: LayerProblem) -> tuple[Tensor, Tensor, dict[str, Any]]:
        kept = top_groups(channel_independence(problem.activations), problem.k, problem.blocks)
        return kept, problem.W_dense, {}
