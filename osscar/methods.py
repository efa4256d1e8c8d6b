"""The pruning-method protocol and its registry.

A method is one class, decorated with :func:`register_method`, that turns a
:class:`~osscar.problem.LayerProblem` into a :class:`PruneResult`::

    @register_method("mine")
    @dataclass(frozen=True)
    class Mine(PruningMethod):
        alpha: float = 1.0            # parameters are dataclass fields

        def solve(self, problem):     # -> (kept group indices, weights (p, m), info)
            ...

Methods are found by name with :func:`get_method` / :func:`make_method`. The registry holds no
module-level state: it walks :class:`PruningMethod`'s subclasses, after importing the modules
advertised under the ``osscar.methods`` entry-point group (how ``baselines`` plugs in, and how a
third-party package adds its own methods).
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import time
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, ClassVar

import torch
from torch import Tensor

from osscar.devices import synchronize
from osscar.groups import block_rows
from osscar.problem import LayerProblem

ENTRY_POINT_GROUP = "osscar.methods"


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
        kept = torch.as_tensor(kept, dtype=torch.long, device="cpu").sort().values
        if kept.numel() != problem.k or torch.unique(kept).numel() != problem.k:
            raise RuntimeError(f"method {self.name!r} returned {kept.numel()} groups, expected {problem.k}")
        if problem.blocks > 1:
            counts = torch.bincount(problem.block_of(kept), minlength=problem.blocks)
            if not bool((counts == problem.block_keep).all()):
                raise RuntimeError(f"method {self.name!r} kept {counts.tolist()} groups per block, expected "
                                   f"{problem.block_keep} in each of {problem.blocks} blocks")
        W = W.to(device=problem.device, dtype=torch.float64).clone()
        mask = torch.ones(problem.n_groups, dtype=torch.bool, device=problem.device)
        mask[kept.to(problem.device)] = False
        W[problem.rows_of(torch.nonzero(mask).flatten())] = 0
        return PruneResult(kept=kept, W=W, objective=problem.objective(W), seconds=seconds,
                           method=self.name, info=info)

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


def _load_plugins() -> None:
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        importlib.import_module(ep.value.split(":")[0])


def available_methods() -> dict[str, type[PruningMethod]]:
    """Every registered method by name (built-ins, ``baselines`` and entry-point plugins)."""
    importlib.import_module("osscar.solver")
    _load_plugins()
    found: dict[str, type[PruningMethod]] = {}
    stack = list(PruningMethod.__subclasses__())
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        if "name" in cls.__dict__ and cls.name:
            other = found.get(cls.name)
            if other is not None and other is not cls:
                raise RuntimeError(f"method name {cls.name!r} is registered twice: {other} and {cls}")
            found[cls.name] = cls
    return dict(sorted(found.items()))


def get_method(name: str) -> type[PruningMethod]:
    """The class registered as ``name``; a ValueError lists the names allowed."""
    methods = available_methods()
    if name not in methods:
        hint = difflib.get_close_matches(str(name), methods, n=1)
        extra = f" Did you mean {hint[0]!r}?" if hint else ""
        raise ValueError(f"unknown method {name!r}; allowed: {', '.join(methods)}.{extra}")
    return methods[name]


def make_method(name: str, **params: Any) -> PruningMethod:
    """Instantiate method ``name`` with ``params``; unknown parameters are a ValueError."""
    cls = get_method(name)
    allowed = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise ValueError(
            f"method {name!r} has no parameter(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed)) or 'none'}"
        )
    return cls(**params)
