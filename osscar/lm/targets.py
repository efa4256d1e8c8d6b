"""How a requested fraction becomes a count of groups removed (pure functions, no model)."""

from __future__ import annotations

import math


def heads_removed(fraction: float, heads_per_kv: int) -> int:
    """Query heads removed from each KV group for ``fraction``: the nearest count, ties toward
    removing more (50% of 3 heads removes 2: at a tie never less than asked), at least one kept."""
    r = math.floor(fraction * heads_per_kv + 0.5 + 1e-9)
    return max(0, min(r, heads_per_kv - 1))


def removed_count(fraction: float, n: int) -> int:
    """Groups removed for ``fraction`` of ``n``: nearest integer, ties down, keep ≥ 1."""
    r = math.ceil(fraction * n - 0.5 - 1e-9)
    return max(0, min(r, n - 1))
