"""Checks of one configuration value, each raising a ValueError that names the value as the user wrote it.

``name`` is the config field (or parameter) name; the CLIs rewrite it to the flag the user typed
(:func:`osscar.options.as_flags`). Booleans are never numbers here. Torch-free.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Any


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def positive_int(name: str, v: Any, allow_none: bool = False) -> None:
    """An integer ≥ 1 (or None when ``allow_none``)."""
    if v is None and allow_none:
        return
    if not _is_int(v) or v < 1:
        raise ValueError(f"{name} must be a positive integer, got {v!r}")


def nonneg_int(name: str, v: Any, meaning: str = "") -> None:
    """An integer ≥ 0; ``meaning`` says what 0 means (``"0: none"``)."""
    if not _is_int(v) or v < 0:
        raise ValueError(f"{name} must be an integer ≥ 0{f' ({meaning})' if meaning else ''}, got {v!r}")


def int_at_least(name: str, v: Any, low: int) -> None:
    """An integer ≥ ``low``."""
    if not _is_int(v) or v < low:
        raise ValueError(f"{name} must be an integer ≥ {low}, got {v!r}")


def fraction(name: str, v: Any, allow_none: bool = True) -> None:
    """A number in [0, 1) (or None when ``allow_none``)."""
    if v is None and allow_none:
        return
    if not _is_number(v) or not (0 <= v < 1):
        raise ValueError(f"{name} must be a number in [0, 1), got {v!r}")


def finite_nonneg(name: str, v: Any) -> None:
    """A finite number ≥ 0."""
    if not (_is_number(v) and math.isfinite(v) and v >= 0):
        raise ValueError(f"{name} must be a finite number ≥ 0, got {v!r}")


def finite_above(name: str, v: Any, bound: float) -> None:
    """A finite number > ``bound``."""
    if not (_is_number(v) and math.isfinite(v) and v > bound):
        raise ValueError(f"{name} must be a finite number > {bound:g}, got {v!r}")


def one_of(name: str, v: Any, allowed: Iterable[Any]) -> None:
    """One of ``allowed``."""
    allowed = tuple(allowed)
    if v not in allowed:
        raise ValueError(f"{name}={v!r} is unknown; allowed: {', '.join(map(str, allowed))}")


def int_pair(name: str, v: Any, what: str = "a (batch, seqlen) pair of positive ints") -> None:
    """A tuple of two positive integers."""
    if not isinstance(v, tuple) or len(v) != 2 or not all(_is_int(x) and x >= 1 for x in v):
        raise ValueError(f"{name} must be {what}, got {v!r}")


def parse_bytes(text: str | float | int, name: str = "max_device_memory") -> int:
    """Bytes of a size: a number of GiB (``32``, ``31.5``) or with a unit (``500MiB``, ``80GB``, ``24GiB``)."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value, unit = float(text), "gib"
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]i?b)?\s*", str(text).lower())
        if m is None:
            raise ValueError(f"{name}: expected a size like 32, 24GiB or 500MiB, got {text!r}")
        value, unit = float(m.group(1)), m.group(2) or "gib"
    scale = {"kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {text!r}")
    return int(value * scale[unit])
