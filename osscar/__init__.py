"""OSSCAR: one-shot structured pruning by combinatorial optimisation, and its baselines.

The layer-wise interface: :class:`LayerProblem` in, :class:`PruneResult` out, methods found by
name (:func:`make_method`). The names are loaded on first use, so importing a light submodule
(``osscar.options`` for the CLIs' ``--help``) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "LayerProblem": "osscar.problem",
    "PruneResult": "osscar.methods",
    "PruningMethod": "osscar.methods",
    "available_methods": "osscar.methods",
    "get_method": "osscar.methods",
    "make_method": "osscar.methods",
    "register_method": "osscar.methods",
}
__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'osscar' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
