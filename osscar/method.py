"""The pruning-method protocol: a method is one frozen dataclass turning a
:class:`~osscar.problem.LayerProblem` into a :class:`PruneResult`, named by :func:`register_method`.

The registry that finds methods by name is :mod:`osscar.methods`; this module imports no
method, so method modules (``osscar.solver``, ``baselines``) import it without a cycle.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from osscar.devices import synchronize
from osscar.groups import block_rows
from osscar.problem import LayerProblem


@dataclass(frozen=True)
class PruneResult:
    """What a method returns for one layer.

    Attributes:
        kept: (k,) long, sorted indices of the kept groups (on the CPU).
        W: (p, m) float64 new weights on the problem's device; rows of pruned groups are exactly zero.
        objective: Q(W) computed directly (float64), comparable across methods.
        seconds: wall time of the method's ``solve`` (objective evaluation excluded).
        method: registry name of the method.
        info: method-specific diagnostics (stages, swaps accepted, ...).
    """

    kept: Tensor
    W: Tensor
    objective: float
    seconds: float
    method: str
    info: dict[str, Any] = field(default_factory=dict)

    def kept_rows(self, group_size: int) -> Tensor:
        return block_rows(self.kept, group_size)


@dataclass(frozen=True)
class PruningMethod:
    """Base class. Subclasses are frozen dataclasses whose fields are their parameters."""

    name: ClassVar[str] = ""
    needs_activations: ClassVar[bool] = False
    needs_producer_weight: ClassVar[bool] = False

    @classmethod
    def working_set(cls, p: int, m: int, kept_rows: int) -> tuple[int, str] | None:
        """(float64 numbers, what they are) the method holds at its high point on a (p, m) problem
        keeping ``kept_rows`` rows, beyond the problem's own ``H: (p, p)``, ``G, Ŵ: (p, m)``.

        The LM memory plan (:func:`osscar.lm.plan.solver_working_set`) asks each method for this.
        None (this base): not stated; the plan then refuses the method rather than guess. A method
        that selects groups and ends with :func:`osscar.obs.refit` returns :func:`osscar.obs.refit_floats`.
        """
        return None

    @classmethod
    def channel_defaults(cls, channels: int) -> dict[str, Any]:
        """Per-layer parameter defaults for a CNN layer with ``channels`` prunable channels (the vision
        pipeline applies them under any explicit parameter; :func:`osscar.vision.prune.vision_method_params`).
        This base: none (the dataclass defaults)."""
        return {}

    def solve(self, problem: LayerProblem) -> tuple[Tensor, Tensor, dict[str, Any]]:
        """Return (kept groups (k,) long, W (p, m) float64, info). Override this."""
        raise NotImplementedError

    def check(self, problem: LayerProblem) -> None:
        """Reject a problem this method cannot solve, before any work."""
        if not isinstance(problem, LayerProblem):
            raise ValueError(f"problem must be a LayerProblem, got {type(problem).__name__}")
        if self.needs_activations and problem.activations is None:
            raise ValueError(
                f"method {self.name!r} needs problem.activations (N, n_groups, L): the producer's "
                "output maps; this layer problem was built without them"
            )

    def prune(self, problem: LayerProblem) -> PruneResult:
        """Solve ``problem``; validate and time the result."""
        self.check(problem)
        start = time.perf_counter()
        kept, W, info = self.solve(problem)
        synchronize(problem.device)  # queued GPU kernels belong to the solve's wall time
        seconds = time.perf_counter() - start
        kept = self._checked_kept(problem, kept)
        W = self._pruned_weights(problem, kept, W)  # rebinding W frees the solver's copy (peak: two, briefly)
        return PruneResult(kept=kept, W=W, objective=problem.objective(W), seconds=seconds, method=self.name, info=info)

    def prune_ladder(self, problem_at: Callable[[int], LayerProblem], levels: Sequence[int]) -> dict[int, PruneResult]:
        """The method's solution at each kept count in ``levels`` (0 < k < all) of one layer, whose problem keeping
        k groups is ``problem_at(k)`` (one H, one Ŵ). This base: one :meth:`prune` per level; a method whose
        solutions at several levels come from one pass (a removal path) overrides it with identical results."""
        return {k: self.prune(problem_at(k)) for k in levels}

    def _checked_kept(self, problem: LayerProblem, kept: Tensor) -> Tensor:
        """``kept`` sorted on the CPU; RuntimeError unless it is ``problem.k`` distinct groups (per-block counts
        under a partition constraint)."""
        kept = torch.as_tensor(kept, dtype=torch.long, device="cpu").sort().values
        if kept.numel() != problem.k or torch.unique(kept).numel() != problem.k:
            raise RuntimeError(f"method {self.name!r} returned {kept.numel()} groups, expected {problem.k}")
        if problem.blocks > 1:
            counts = torch.bincount(problem.block_of(kept), minlength=problem.blocks)
            if not bool((counts == problem.block_keep).all()):
                raise RuntimeError(f"method {self.name!r} kept {counts.tolist()} groups per block, expected "
                                   f"{problem.block_keep} in each of {problem.blocks} blocks")
        return kept

    @staticmethod
    def _pruned_weights(problem: LayerProblem, kept: Tensor, W: Tensor) -> Tensor:
        """A float64 copy of ``W`` on the problem's device with the rows of every pruned group zero."""
        W = W.to(device=problem.device, dtype=torch.float64).clone()
        mask = torch.ones(problem.n_groups, dtype=torch.bool, device=problem.device)
        mask[kept.to(problem.device)] = False
        W[problem.rows_of(torch.nonzero(mask).flatten())] = 0
        return W

    def params(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def register_method(name: str):
    """Class decorator: give a :class:`PruningMethod` subclass its registry name."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"method name must be a non-empty string, got {name!r}")

    def wrap(cls: type[PruningMethod]) -> type[PruningMethod]:
        if not (isinstance(cls, type) and issubclass(cls, PruningMethod)):
            raise TypeError(f"@register_method({name!r}) must decorate a PruningMethod subclass")
        cls.name = name
        return cls

    return wrap
