"""ZipLM's layer-wise core (Kurtic et al., 2023): structured OBS, one group at a time.

Every removal picks the group with the smallest OBS cost, updates the remaining weights and
downdates the inverse; the support is then refit. This is OSSCAR's Stage A with p̂ = 1 and no
local search. ZipLM's runtime-aware per-layer allocation lives in the model-level targets,
available to every method.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from osscar.devices import synchronize
from osscar.method import PruneResult, PruningMethod, register_method
from osscar.obs import SupportState, refit, refit_floats, support_state_floats
from osscar.problem import LayerProblem
from osscar.solver import gradual_removal


@register_method("ziplm")
@dataclass(frozen=True)
class ZipLM(PruningMethod):
    """One-at-a-time structured OBS removal, then refit.

    Args:
        deferred: False (default): every removal downdates the whole inverse, as ZipLM's published
            code does. True: the same selections on OSSCAR's deferred low-rank engine
            (:class:`osscar.obs.SupportState`), an ablation that separates the engine from p̂.
    """

    @classmethod
    def working_set(cls, p: int, m: int, kept_rows: int) -> tuple[int, str]:
        """The larger of Stage A (:func:`osscar.obs.support_state_floats`) and the refit, run after the state is freed."""
        return max(support_state_floats(p, m, kept_rows), refit_floats(p, m, kept_rows)), (
            "E=H_SS⁻¹ (compacted in place), pending-downdate buffer U (p×max(64,p/8)), W (p×m), E's compact copy "
            "when the storage is given back; then the refit")

    deferred: bool = False

    def solve(self, problem: LayerProblem) -> tuple[Tensor, Tensor, dict[str, Any]]:
        state = SupportState(problem, deferred=self.deferred)
        stages = gradual_removal(state, problem.k, p_hat=1)
        kept = torch.nonzero(state.kept).flatten()
        del state  # E and W_S go before the refit allocates its own
        return kept, refit(problem, kept), {"stages": stages}

    def prune_ladder(self, problem_at: Callable[[int], LayerProblem], levels: Sequence[int]) -> dict[int, PruneResult]:
        """Every level from one removal pass (no partition constraint): one-at-a-time greedy removal does not
        depend on where it stops, so the kept groups at each level are those of a solve to that level, and each
        level's weights are the same refit. The state is held through the refits (more memory than
        :meth:`solve`). Under a partition constraint (per-KV-group head counts) the per-block budgets depend on
        the level: one solve per level, as the base class."""
        if not levels or problem_at(max(levels)).blocks > 1:
            return super().prune_ladder(problem_at, levels)
        state: SupportState | None = None
        out: dict[int, PruneResult] = {}
        for k in sorted(levels, reverse=True):
            problem = problem_at(k)
            self.check(problem)
            start = time.perf_counter()
            state = state or SupportState(problem, deferred=self.deferred)
            stages = gradual_removal(state, k, p_hat=1)
            kept_here = torch.nonzero(state.kept).flatten()  # on the problem's device, as in solve()
            W = refit(problem, kept_here)
            kept = self._checked_kept(problem, kept_here)
            W = self._pruned_weights(problem, kept, W)
            synchronize(problem.device)
            out[k] = PruneResult(kept=kept, W=W, objective=problem.objective(W), seconds=time.perf_counter() - start,
                                 method=self.name, info={"stages": stages, "one_pass": True})
        return out
