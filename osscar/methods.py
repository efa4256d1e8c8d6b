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
from importlib.metadata import entry_points
from typing import Any

from osscar.method import PruneResult, PruningMethod, register_method

__all__ = ["ENTRY_POINT_GROUP", "PruneResult", "PruningMethod", "available_methods", "get_method", "make_method",
           "register_method"]

ENTRY_POINT_GROUP = "osscar.methods"


def _load_plugins() -> None:
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        importlib.import_module(ep.value.split(":")[0])


def available_methods() -> dict[str, type[PruningMethod]]:
    """Every registered method by name (built-ins, ``baselines`` and entry-point plugins)."""
    importlib.import_module("osscar.solver")
    importlib.import_module("osscar.variants")  # osscar-opt, osscar-authors-ls
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
