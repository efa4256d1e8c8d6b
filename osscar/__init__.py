"""OSSCAR: one-shot structured pruning by combinatorial optimisation, and its baselines.

The layer-wise interface: :class:`LayerProblem` in, :class:`PruneResult` out, methods found by
name (:func:`make_method`).
"""

from osscar.methods import PruneResult, PruningMethod, available_methods, get_method, make_method, register_method
from osscar.problem import LayerProblem

__all__ = [
    "LayerProblem",
    "PruneResult",
    "PruningMethod",
    "available_methods",
    "get_method",
    "make_method",
    "register_method",
]
__version__ = "0.1.0"
