"""Run selection for ``python -m benchmarks.run``: ``--only KEY=V1,V2`` filters over a plan's fields.

A filter keeps the runs whose field ``KEY`` (a key the sweep file sets for the run: a grid axis, a
key of a table-valued axis, a ``base`` or ``extra`` key) equals one of the values; several filters
must all hold. Values are read as the type the sweep gives the field (``speedup=2`` matches 2.0,
``evaluate_dense=true`` a TOML ``true``). A filter that names an unknown key, a value no run has,
or a combination no run has is a :class:`~benchmarks.sweep.SweepError` listing what is known.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from typing import Any

from benchmarks.sweep import RunSpec, SweepError


@dataclass(frozen=True)
class RunFilter:
    """One ``--only KEY=V1,V2``: ``values`` as written (strings), ``text`` the whole argument."""

    key: str
    values: tuple[str, ...]
    text: str


def parse_filter(text: str) -> RunFilter:
    """``KEY=V1,V2,...`` -> :class:`RunFilter`; a SweepError naming ``--only`` when malformed."""
    key, sep, rest = text.partition("=")
    values = tuple(v.strip() for v in rest.split(","))
    if not sep or not key.strip() or not all(values):
        raise SweepError(f"--only expects KEY=VALUE[,VALUE...], got {text!r}")
    return RunFilter(key.strip(), values, text)


def show(value: Any) -> str:
    """A field value as a filter would write it (strings bare, TOML true/false, lists as JSON)."""
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"))


def matches(value: Any, text: str) -> bool:
    """Whether a field's typed ``value`` equals ``text`` read as that type."""
    if isinstance(value, bool):
        return text.lower() == str(value).lower()
    if isinstance(value, (int, float)):
        try:
            return float(text) == value
        except ValueError:
            return False
    return text == show(value)


def known_values(plan: list[RunSpec]) -> dict[str, list[Any]]:
    """Every field key of the plan with its distinct values, in plan order."""
    known: dict[str, list[Any]] = {}
    for spec in plan:
        for key, value in spec.fields.items():
            seen = known.setdefault(key, [])
            if all(show(value) != show(v) for v in seen):
                seen.append(value)
    return known


def _takes(key: str, known: dict[str, list[Any]]) -> str:
    return f"{key} takes: {', '.join(show(v) for v in known[key])}"


def select(plan: list[RunSpec], filters: list[RunFilter]) -> list[RunSpec]:
    """The runs of ``plan`` that every filter keeps (all of them without filters)."""
    if not filters:
        return plan
    known = known_values(plan)
    for f in filters:
        if f.key not in known:
            close = difflib.get_close_matches(f.key, sorted(known), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise SweepError(f"--only {f.text}: unknown key {f.key!r}{hint}; known keys: {', '.join(sorted(known))}")
        missing = [v for v in f.values if not any(matches(x, v) for x in known[f.key])]
        if missing:
            raise SweepError(f"--only {f.text}: no run has {f.key}={missing[0]}; {_takes(f.key, known)}")
    chosen = [s for s in plan
              if all(f.key in s.fields and any(matches(s.fields[f.key], v) for v in f.values) for f in filters)]
    if not chosen:
        keys = list(dict.fromkeys(f.key for f in filters))
        raise SweepError(f"{' '.join('--only ' + f.text for f in filters)}: no run matches all filters together; "
                         + "; ".join(_takes(k, known) for k in keys))
    return chosen


def listing(spec: RunSpec, key: str) -> str:
    """One line of ``--list``: experiment/key and the run's fields."""
    return f"{spec.experiment}/{key}  " + " ".join(f"{k}={show(v)}" for k, v in spec.fields.items())
