"""Declarative sweeps: one TOML file per paper experiment, expanded into validated run configs.

A sweep file::

    name = "lm_perplexity"                 # experiment name (folder in the result store; a safe slug)
    pipeline = "lm"                        # lm | vision | solver
    description = "..."
    in_reproduce = true                    # optional (default true); false: too long for `nox -s reproduce`

    [profiles.cpu.base]                    # fields shared by every run of the profile
    n_samples = 16
    [profiles.cpu.grid]                    # cartesian product over these axes
    method = ["mp", "mp+", "ziplm", "osscar"]
    target = [{head_fraction = 0.3, neuron_fraction = 0.3}, {head_fraction = 0.5, neuron_fraction = 0.5}]

An axis whose values are tables (``target`` above) merges each table into the config, so coupled
fields move together. ``[[profiles.cpu.extra]]`` tables add single runs outside the product (each
merged onto ``base``), like a CI matrix's ``include``. Every key must be a field of the pipeline's config class; every run's
config is built (and so validated) before any run starts.
"""

from __future__ import annotations

import dataclasses
import itertools
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.pipelines import get_pipeline
from benchmarks.resources import RESOURCE_KEYS, Resources
from benchmarks.store import canonical_json, check_name

PROFILES = ("cpu", "paper")


class SweepError(ValueError):
    """A sweep file that cannot run; the message names the file, the key and what is allowed."""


def _suggest(word: str, allowed: set[str] | list[str]) -> str:
    import difflib

    close = difflib.get_close_matches(word, sorted(allowed), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _tupleize(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_tupleize(v) for v in value)
    return value


def _coerce(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """TOML arrays -> tuples for the config fields typed as tuples."""
    hints = typing.get_type_hints(cls)
    out = {}
    for key, value in values.items():
        hint = str(hints.get(key, ""))
        out[key] = _tupleize(value) if "tuple" in hint and isinstance(value, list) else value
    return out


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep: its pipeline, its validated config object and its key fields."""

    experiment: str
    pipeline: str
    config: Any
    key_config: dict[str, Any]
    resources: dict[str, Any] = field(default_factory=dict)  # the profile's [resources] (benchmarks.resources)
    swept: tuple[str, ...] = ()  # the config fields that differ between the runs of its sweep
    fields: dict[str, Any] = field(default_factory=dict)  # the sweep's values for this run, as typed in its file

    def label(self) -> str:
        """``field=value`` of every swept field (the seed too): tells this run from the others of its sweep."""
        return " ".join(f"{k}={getattr(self.config, k)}" for k in self.swept)


@dataclass(frozen=True)
class Sweep:
    name: str
    pipeline: str
    description: str
    base: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list[Any]] = field(default_factory=dict)
    extra: tuple[dict[str, Any], ...] = ()
    source: str = ""
    resources: dict[str, Any] = field(default_factory=dict)
    in_reproduce: bool = True  # part of `nox -s reproduce` (false: a long sweep with its own session)

    def points(self) -> list[dict[str, Any]]:
        """The raw config dicts of the grid, base merged in, in a stable order."""
        axes = list(self.grid.items())
        out = []
        for combo in itertools.product(*(values for _, values in axes)):
            point = dict(self.base)
            for (axis, _), value in zip(axes, combo):
                if isinstance(value, dict):
                    point.update(value)
                else:
                    point[axis] = value
            out.append(point)
        out.extend({**self.base, **run} for run in self.extra)
        return out

    def runs(self) -> list[RunSpec]:
        """Build every run's config; unknown keys or invalid values raise before any run."""
        pipeline = get_pipeline(self.pipeline)
        cls, check = pipeline.config_class(), pipeline.check_function()
        allowed = {f.name for f in dataclasses.fields(cls)}
        specs, seen = [], set()
        for point in self.points():
            unknown = sorted(set(point) - allowed)
            if unknown:
                raise SweepError(f"{self.source}: unknown key {unknown[0]!r}{_suggest(unknown[0], allowed)} for "
                                 f"pipeline {self.pipeline!r}; allowed: {', '.join(sorted(allowed))}")
            try:
                config = cls(**_coerce(cls, point))
                if check is not None:
                    check(config)
            except (TypeError, ValueError) as e:
                varying = {k: v for k, v in point.items() if k not in self.base or k in self.grid}
                where = ", ".join(f"{k}={v!r}" for k, v in varying.items()) or "base"
                raise SweepError(f"{self.source}: run ({where}): {e}") from e
            key_config = pipeline.key_config(dataclasses.asdict(config))
            ident = canonical_json(key_config)
            if ident not in seen:
                seen.add(ident)
                specs.append(RunSpec(self.name, self.pipeline, config, key_config, dict(self.resources),
                                     fields=dict(point)))
        swept = _swept([dataclasses.asdict(s.config) for s in specs])
        return [dataclasses.replace(s, swept=swept) for s in specs]


def _swept(configs: list[dict[str, Any]]) -> tuple[str, ...]:
    """The fields (in the config class's order) whose values are not the same in every config."""
    if not configs:
        return ()
    return tuple(k for k in configs[0] if len({canonical_json(c.get(k)) for c in configs}) > 1)


def load_sweep(path: str | Path, profile: str = "cpu") -> Sweep:
    """Read a sweep file and pick one profile (``cpu`` or ``paper``)."""
    path = Path(path)
    if not path.is_file():
        raise SweepError(f"sweep file {str(path)!r} does not exist")
    if profile not in PROFILES:
        raise SweepError(f"--profile must be one of {', '.join(PROFILES)}, got {profile!r}")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise SweepError(f"{path}: TOML syntax error: {exc}") from None
    try:
        get_pipeline(data.get("pipeline", ""))
    except ValueError as exc:
        if "pipeline" in data:
            raise SweepError(f"{path}: key 'pipeline': {exc}") from None
    top = {"name", "pipeline", "description", "profiles", "in_reproduce"}
    unknown = sorted(set(data) - top)
    if unknown:
        raise SweepError(f"{path}: unknown top-level key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(top))}")
    for key in ("name", "pipeline"):
        if key not in data:
            raise SweepError(f"{path}: missing required key {key!r}")
    why = check_name(data["name"])
    if why:
        raise SweepError(f"{path}: key 'name' {why}")
    if not isinstance(data.get("in_reproduce", True), bool):
        raise SweepError(f"{path}: key 'in_reproduce' must be true or false, got {data['in_reproduce']!r}")
    profiles = data.get("profiles", {})
    if profile not in profiles:
        raise SweepError(f"{path}: no profile {profile!r}; it has: {', '.join(profiles) or 'none'}")
    prof = profiles[profile]
    unknown = sorted(set(prof) - {"base", "grid", "extra", "resources"})
    if unknown:
        raise SweepError(f"{path}: profile {profile!r} has unknown section(s) {', '.join(unknown)}; "
                         "allowed: base, grid, extra, resources")
    resources = dict(prof.get("resources", {}))
    bad = sorted(set(resources) - set(RESOURCE_KEYS))
    if bad:
        raise SweepError(f"{path}: unknown key {bad[0]!r}{_suggest(bad[0], RESOURCE_KEYS)} in "
                         f"[profiles.{profile}.resources]; allowed: {', '.join(RESOURCE_KEYS)}")
    try:
        Resources(**resources)
    except ValueError as exc:
        raise SweepError(f"{path}: [profiles.{profile}.resources]: {exc}") from None
    extra = prof.get("extra", [])
    if not isinstance(extra, list) or not all(isinstance(e, dict) for e in extra):
        raise SweepError(f"{path}: 'extra' must be an array of tables ([[profiles.{profile}.extra]])")
    grid = prof.get("grid", {})
    for axis, values in grid.items():
        if not isinstance(values, list) or not values:
            raise SweepError(f"{path}: grid axis {axis!r} must be a non-empty array")
    return Sweep(name=data["name"], pipeline=data["pipeline"], description=data.get("description", ""),
                 base=dict(prof.get("base", {})), grid=dict(grid), extra=tuple(extra), source=str(path),
                 resources=resources, in_reproduce=data.get("in_reproduce", True))


def sweep_files(folder: str | Path | None = None) -> list[Path]:
    folder = Path(folder) if folder else Path(__file__).parent / "sweeps"
    return sorted(folder.glob("*.toml"))
