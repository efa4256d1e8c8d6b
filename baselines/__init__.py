"""Baseline pruning methods, each a registered :class:`osscar.methods.PruningMethod`.

Importing this package registers ``mp``, ``mp+``, ``ziplm``, ``thinet``, ``lasso``, ``fpgm`` and
``chip``; :func:`osscar.methods.available_methods` imports it through the ``osscar.methods``
entry point, so ``osscar`` itself never names a baseline.
"""

from baselines import chip, fpgm, lasso, magnitude, thinet, ziplm

__all__ = ["chip", "fpgm", "lasso", "magnitude", "thinet", "ziplm"]
