"""OSSCAR: gradual block removal (Stage A), local search with swaps (Stage B), final refit.

The two hyperparameters of the paper, in the reading this harness implements
(``shared/spec/ALGORITHM.md`` §4):

* ``p_hat`` (p̂) — how much the support shrinks per iteration: Stage A removes the p̂ cheapest
  groups together, with one block weight update and one block inverse downdate.
* ``t_hat`` (t̂) — the bound on how many groups change per iteration, |S_{t+1} Δ S_t| ≤ t̂.
  An iteration removes (t̂+p̂)/2 groups and adds back (t̂−p̂)/2. Stage A is t̂ = p̂; Stage B is
  p̂ = 0 with swaps of s = t̂/2 groups out and s groups in.

With ``p_hat=1`` and ``t_hat=0`` (no local search) OSSCAR is ZipLM's layer-wise core.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from osscar.methods import PruningMethod, register_method
from osscar.obs import SupportState, refit
from osscar.problem import LayerProblem


def _check_nonneg_int(name: str, value: Any, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} must be an integer ≥ 0{' or None (auto)' if allow_none else ''}, got {value!r}")


def gradual_removal(state: SupportState, k: int, p_hat: int) -> int:
    """Stage A: remove groups p̂ at a time, cheapest OBS cost first, until k remain.

    Returns the number of stages (block updates) used.
    """
    stages = 0
    while int(state.kept.sum()) > k:
        n_remove = min(p_hat, int(state.kept.sum()) - k)
        costs = state.costs()
        state.remove(torch.topk(costs, n_remove, largest=False).indices)
        stages += 1
    return stages


def local_search(state: SupportState, swap: int, max_iter: int, min_swap: int) -> tuple[SupportState, dict[str, Any]]:
    """Stage B: swap the ``swap`` cheapest kept groups for the ``swap`` best pruned ones.

    Each trial is applied to a copy; it is accepted only when the exact least-squares objective
    strictly decreases. On a rejected trial the swap size is halved while it stays ≥ ``min_swap``
    (``min_swap == swap`` gives the OPT code's rule: stop at the first failure).
    """
    n_groups = state.problem.n_groups
    k = int(state.kept.sum())
    swap = min(swap, k, n_groups - k)
    q = state.objective()
    history = [q]
    accepted = tried = 0
    while swap >= max(min_swap, 1) and tried < max_iter:
        tried += 1
        trial = state.copy()
        out = torch.topk(trial.costs(), swap, largest=False).indices
        trial.remove(out)
        inn = torch.topk(trial.gains(), swap, largest=True).indices
        trial.add(inn)
        q_new = trial.objective()
        if q_new < q - 1e-12 * max(1.0, abs(q)):
            state, q = trial, q_new
            accepted += 1
            history.append(q)
        elif swap // 2 >= max(min_swap, 1) and min_swap < swap:
            swap //= 2
        else:
            break
    return state, {"swaps_tried": tried, "swaps_accepted": accepted, "local_search_objective": history}


def default_p_hat(group_size: int) -> int:
    """The OPT code's default: 10 neurons or 2 heads removed per stage."""
    return 10 if group_size == 1 else 2


def default_t_hat(group_size: int) -> int:
    """The OPT code's swap sizes, 10 neurons or 5 heads, as t̂ = 2·swap."""
    return 20 if group_size == 1 else 10


@register_method("osscar")
@dataclass(frozen=True)
class OSSCAR(PruningMethod):
    """OSSCAR (Meng et al., ICML 2024) on one layer.

    Args:
        p_hat: groups removed per Stage-A iteration (None: 10 neurons / 2 heads).
        t_hat: groups changed per Stage-B iteration, swap size t̂/2 (None: 20 neurons / 10 heads;
            0 disables local search).
        max_iter: maximum number of Stage-B swap trials.
        min_swap: on a rejected swap, halve the swap size down to this floor (None: no halving,
            stop at the first failure, as the OPT code; the vision code halves to 1).
    """

    p_hat: int | None = None
    t_hat: int | None = None
    max_iter: int = 30
    min_swap: int | None = None

    def __post_init__(self) -> None:
        _check_nonneg_int("p_hat", self.p_hat)
        if self.p_hat == 0:
            raise ValueError("p_hat must be ≥ 1 (groups removed per stage) or None (auto), got 0")
        _check_nonneg_int("t_hat", self.t_hat)
        _check_nonneg_int("max_iter", self.max_iter, allow_none=False)
        _check_nonneg_int("min_swap", self.min_swap)

    def solve(self, problem: LayerProblem) -> tuple[Tensor, Tensor, dict[str, Any]]:
        s = problem.group_size
        p_hat = self.p_hat if self.p_hat is not None else default_p_hat(s)
        t_hat = self.t_hat if self.t_hat is not None else default_t_hat(s)
        swap = t_hat // 2
        state = SupportState(problem)
        stages = gradual_removal(state, problem.k, p_hat)
        info: dict[str, Any] = {"p_hat": p_hat, "t_hat": t_hat, "stages": stages,
                                "stage_a_objective": state.objective()}
        if swap > 0 and 0 < problem.k < problem.n_groups and self.max_iter > 0:
            min_swap = swap if self.min_swap is None else self.min_swap
            state, ls_info = local_search(state, swap, self.max_iter, min_swap)
            info.update(ls_info)
        kept = torch.nonzero(state.kept).flatten()
        return kept, refit(problem, kept), info
