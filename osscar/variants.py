"""OSSCAR's named variants, each a registered method so that a run's key and report name it.

* ``osscar`` (:class:`osscar.solver.OSSCAR`): the method as this harness runs it — Stage A, then
  the exact-s local search (``s`` groups out, ``s`` *other* groups back) with one retry and halving
  of the swap size on failure.
* ``osscar-opt`` (:class:`OSSCAROpt`): the authors' OPT default — Stage A only; their OPT script
  leaves ``--local_fc`` / ``--local_out`` off.
* ``osscar-authors-ls`` (:class:`OSSCARAuthorsLS`): Stage A, then the authors' local search
  (:func:`authors_local_search`, ``OSSCAR_local_search`` of their ``prune_algo.py``): a trial takes
  the s cheapest kept groups out and puts back the s best pruned groups *including those just taken
  out*, so it exchanges up to s groups; the search stops at the first trial that does not lower Q
  by a relative 1e-9 (``shared/spec/ALGORITHM.md`` §4).

Stage A (and p̂, t̂'s defaults) is the same in all three: :func:`osscar.solver.gradual_removal`, which
removes p̂ groups per stage and fewer in the last; the authors' ``OSSCAR_fastprune`` splits the removals
into ⌊n/p̂⌋ stages of near-equal size instead (25 removals at p̂ = 10: 13 + 12 there, 10 + 10 + 5
here). The variants differ from ``osscar`` in Stage B only.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from osscar.blockmath import diag_blocks, quad_over_blocks
from osscar.method import PruningMethod, register_method
from osscar.methods import get_method
from osscar.obs import SupportState, refit
from osscar.problem import LayerProblem
from osscar.pruned_set import SwapTrial
from osscar.solver import OSSCAR, best_back, default_p_hat, default_t_hat, gradual_removal

OSSCAR_VARIANTS = ("osscar", "osscar-opt", "osscar-authors-ls")
AUTHORS_RTOL = 1e-9  # prune_algo.py: accept when obj_new < obj_cur * (1 + 1e-9)


def osscar_parameters(method: str) -> frozenset[str]:
    """The OSSCAR parameters (``p_hat``, ``t_hat``, ``min_swap``, ...) that ``method`` takes;
    empty for a method outside :data:`OSSCAR_VARIANTS`."""
    if method not in OSSCAR_VARIANTS:
        return frozenset()
    return frozenset(f.name for f in dataclasses.fields(get_method(method)))


def authors_trial(state: SupportState, swap: int) -> tuple[Tensor, Tensor | None, SwapTrial]:
    """One trial of the authors' rule on the support of ``state`` (unchanged).

    Takes out ``out``: the ``swap`` kept groups of smallest OBS removal cost (each scored alone on the
    current support); scores every group pruned after that — ``out`` included — by its gain of
    coming back alone; ``back``: the ``swap`` best (under a partition, as many per block as ``out``
    took from it, :func:`~osscar.solver.best_back`). ``back`` may share groups with ``out``.

    The gains of ``out`` come off the trial's bordering (K's new diagonal blocks are those of C⁻¹,
    the residuals z = C⁻¹ y; :class:`~osscar.pruned_set.SwapTrial`), so the bordered K is only
    built when the swap is accepted. Returns (out, back (None: nothing to put back), the trial).
    """
    out = torch.argsort(state.costs())[:swap]  # pruned groups cost +inf: the first `swap` are kept ones
    trial = state.swap_trial(out)
    gains = torch.full((state.problem.n_groups,), float("-inf"), dtype=torch.float64, device=trial.z.device)
    gains[trial.base.groups] = trial.gains()
    s = state.problem.group_size
    gains[out] = quad_over_blocks(diag_blocks(trial.C_inv, s), trial.z.reshape(len(out), s, -1))
    return out, best_back(gains, out, state.problem), trial


def authors_local_search(state: SupportState, swap: int, max_iter: int,
                         rtol: float = AUTHORS_RTOL) -> tuple[SupportState, dict[str, Any]]:
    """The authors' local search: repeat :func:`authors_trial`, refit on the new support and keep it
    when Q_new < Q·(1 + rtol) (Q ≤ 0 at a least-squares optimum: a relative decrease of ``rtol``);
    stop at the first trial that fails, or after ``max_iter`` trials. ``swap`` is capped at the
    support size. ``state`` needs ``track_pruned=True``; it is updated in place and returned.

    Info: ``swaps_tried``, ``swaps_accepted``, ``local_search_objective`` (Q after each accepted
    trial, Stage A's first) and ``groups_exchanged`` (groups that changed side in each accepted trial).
    """
    if not state.track_pruned():
        raise ValueError("authors_local_search needs SupportState(problem, track_pruned=True)")
    swap = min(swap, int(state.kept.sum()))
    q = state.objective()
    history, exchanged, tried = [q], [], 0
    while swap > 0 and tried < max_iter:
        tried += 1
        out, back, trial = authors_trial(state, swap)
        if back is None:
            break
        leave = out[~torch.isin(out, back)]
        join = back[~torch.isin(back, out)]
        if len(leave) == 0:  # everything taken out goes back: the support, and Q, are unchanged
            break
        new = state.copy(with_pruned=False)
        new.remove(leave)
        new.add(join)
        q_new = new.objective()
        if not q_new < q * (1 + rtol):
            break
        state.take(new)  # in place: the old E and W go (the caller holds this state too)
        del new
        state.pruned = trial.commit(back)  # take() left none: the trial holds the old one
        del trial
        q = q_new
        history.append(q)
        exchanged.append(len(leave))
    return state, {"swaps_tried": tried, "swaps_accepted": len(exchanged), "local_search_objective": history,
                   "groups_exchanged": exchanged}


@register_method("osscar-opt")
@dataclass(frozen=True)
class OSSCAROpt(PruningMethod):
    """OSSCAR as the authors' OPT script runs it by default: Stage A only (no local search).

    Args:
        p_hat: groups removed per Stage-A iteration (None: :func:`~osscar.solver.default_p_hat`).
    """

    p_hat: int | None = None

    @classmethod
    def working_set(cls, p: int, m: int, kept_rows: int) -> tuple[int, str]:
        """ZipLM's: Stage A's support state, then the refit (no local search)."""
        return get_method("ziplm").working_set(p, m, kept_rows)

    @classmethod
    def channel_defaults(cls, channels: int) -> dict[str, Any]:
        """OSSCAR's per-layer p̂ (the vision code's rule); no swap size: there is no local search."""
        return {"p_hat": OSSCAR.channel_defaults(channels)["p_hat"]}

    def __post_init__(self) -> None:
        OSSCAR(p_hat=self.p_hat)  # the same checks

    def solve(self, problem: LayerProblem) -> tuple[Tensor, Tensor, dict[str, Any]]:
        return OSSCAR(p_hat=self.p_hat, t_hat=0).solve(problem)


@register_method("osscar-authors-ls")
@dataclass(frozen=True)
class OSSCARAuthorsLS(PruningMethod):
    """Stage A, then the authors' local search (:func:`authors_local_search`), then the refit.

    Args:
        p_hat: groups removed per Stage-A iteration (None: :func:`~osscar.solver.default_p_hat`).
        t_hat: 2 × the swap size (None: :func:`~osscar.solver.default_t_hat`, the OPT code's 10 neurons /
            5 heads on large layers; 0 disables the search).
        max_iter: at most this many trials (the OPT script's ``--local_iter`` default, 30).
    """

    p_hat: int | None = None
    t_hat: int | None = None
    max_iter: int = 30

    @classmethod
    def working_set(cls, p: int, m: int, kept_rows: int) -> tuple[int, str]:
        """OSSCAR's: the authors' trial holds the same tensors (E, a copy, K, R)."""
        return OSSCAR.working_set(p, m, kept_rows)

    @classmethod
    def channel_defaults(cls, channels: int) -> dict[str, Any]:
        """OSSCAR's per-layer p̂ and t̂ (the vision code's rule); the authors' search does not halve swaps."""
        return {k: v for k, v in OSSCAR.channel_defaults(channels).items() if k != "min_swap"}

    def __post_init__(self) -> None:
        OSSCAR(p_hat=self.p_hat, t_hat=self.t_hat, max_iter=self.max_iter)  # the same checks

    def solve(self, problem: LayerProblem) -> tuple[Tensor, Tensor, dict[str, Any]]:
        s = problem.group_size
        n, k = problem.n_groups, problem.k
        p_hat = self.p_hat if self.p_hat is not None else default_p_hat(s, n - k)
        t_hat = self.t_hat if self.t_hat is not None else default_t_hat(s, k, n)
        search = t_hat // 2 > 0 and 0 < k < n and self.max_iter > 0
        state = SupportState(problem, deferred=True, track_pruned=search)
        stages = gradual_removal(state, k, p_hat)
        info: dict[str, Any] = {"p_hat": p_hat, "t_hat": t_hat, "stages": stages, "stage_a_objective": state.objective()}
        if search:
            state, ls_info = authors_local_search(state, t_hat // 2, self.max_iter)
            info.update(ls_info)
        kept = torch.nonzero(state.kept).flatten()
        del state  # E, W_S and K go before the refit allocates its own
        return kept, refit(problem, kept), info
